"""A job's log files, listed and read without ever leaving its log folder.

Names come from clients (the socket, the web API), so every one is treated as hostile: it must be a
relative path of plain parts (no '', '.', '..', no NUL), and it is opened one part at a time relative
to the log folder's fd with O_NOFOLLOW, so neither `../..` nor a symlink planted inside the folder
leads out of it. Anything else raises ValueError.

    list_log_files(log_dir)              relative names of the regular files, sorted, symlinks skipped
    read_log_file(log_dir, name, off, n) (text, next offset): up to n bytes from byte offset `off`
"""

from __future__ import annotations

import os
import stat

from procflow.io.safe_paths import DIR_FLAGS

MAX_DEPTH = 4
MAX_READ = 1 << 20


def list_log_files(log_dir: str) -> list[str]:
    try:
        root = os.open(log_dir, DIR_FLAGS)
    except OSError:
        return []
    try:
        return sorted(_walk(root, "", 0))
    finally:
        os.close(root)


def _walk(dir_fd: int, prefix: str, depth: int) -> list[str]:
    found = []
    for name in os.listdir(dir_fd):
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            found.append(prefix + name)
        elif stat.S_ISDIR(st.st_mode) and depth < MAX_DEPTH:
            try:
                sub = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                found.extend(_walk(sub, f"{prefix}{name}/", depth + 1))
            finally:
                os.close(sub)
    return found


def check_log_name(name: str) -> list[str]:
    """The parts of a log name that stays inside its folder; ValueError for any other."""
    if not isinstance(name, str) or not name or "\0" in name or name.startswith("/") or "\\" in name:
        raise ValueError(f"log name {name!r} is not a file in the job's log folder; "
                         "use one of the names `procflow logs ID` lists")
    parts = name.split("/")
    if len(parts) > MAX_DEPTH + 1 or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"log name {name!r} is not a file in the job's log folder; "
                         "use one of the names `procflow logs ID` lists")
    return parts


def read_log_file(log_dir: str, name: str, offset: int = 0, limit: int = 65536) -> tuple[str, int]:
    """Up to `limit` bytes of `name` from byte `offset`, decoded (invalid UTF-8 replaced), and the offset
    to ask for next. A read stops before a partial UTF-8 character at its end, so that following a log
    never splits one."""
    parts = check_log_name(name)
    if offset < 0 or limit < 0:
        raise ValueError("offset and limit must be >= 0")
    limit = min(limit, MAX_READ)
    fds = []
    try:
        fds.append(os.open(log_dir, DIR_FLAGS))
        for part in parts[:-1]:
            fds.append(_open_inside(part, fds[-1], DIR_FLAGS, name))
        fd = _open_inside(parts[-1], fds[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, name)
        fds.append(fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"log name {name!r} is not a regular file")
        data = os.pread(fd, limit, offset)
    finally:
        for fd in fds:
            os.close(fd)
    cut = _complete_utf8(data)
    return data[:cut].decode("utf-8", errors="replace"), offset + cut


def _open_inside(part: str, dir_fd: int, flags: int, name: str) -> int:
    try:
        return os.open(part, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise FileNotFoundError(f"no log named {name!r} for this job; `procflow logs ID` lists them") from None
    except OSError as exc:   # ELOOP: a symlink; ENOTDIR: a file where a folder was named
        raise ValueError(f"log name {name!r} is not a file in the job's log folder ({exc.strerror})") from None


def _complete_utf8(data: bytes) -> int:
    """The length of `data` without a UTF-8 character cut off at its end."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:    # a continuation byte: look further back for the lead byte
            continue
        if byte & 0x80 == 0:       # ASCII: complete
            return len(data)
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4
        return len(data) if back >= need else len(data) - back
    return len(data)
