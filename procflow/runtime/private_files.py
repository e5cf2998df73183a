"""Folders and files that only this user can read or change: where procflow keeps logs and state.

Issue 22 showed what a shared, predictable log folder costs. The default was `$TMPDIR/procflow-logs/<env>`,
made with `makedirs(exist_ok=True)`, and tasks opened `<task>_crash.log` with mode "w": another local user
who pre-created that folder (mode 777) and filled each new job folder with symlinks made a root-run job
truncate a root-only file; and once one user owned the shared folder, every other user's job failed. So:

    default_log_dir(env)     <state>/logs/<env>, where <state> is $XDG_STATE_HOME/procflow, else
                             ~/.local/state/procflow (home owned by this user), else $TMPDIR/procflow-<uid>;
                             each folder made 0700 and checked (a directory, not a symlink, owned by this
                             user, no group or other bits), else UnsafePathError saying what to fix
    make_job_dir(env_dir)    the job folder: mkdir 0700, failing if it exists (never adopt a folder someone
                             else made), then `prune_job_dirs` keeps the newest `keep_logs` job folders
    PrivateDir(path)         a checked directory fd; files are opened relative to it with O_NOFOLLOW and
                             mode 0600, so neither a swapped folder nor a planted symlink redirects a write
    PrivateFileHandler       a logging handler writing to such a file (Dispatcher.log, <task>_*.log)

A user-given env_dir is honoured as it is (it may be shared on purpose); the job folder inside it is still
private. Error.log holds records, so it is private like every other file here.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import tempfile
from typing import Any

from procflow.core.errors import UnsafePathError
from procflow.io.safe_paths import DIR_FLAGS as _DIR_FLAGS
from procflow.io.safe_paths import DIR_MODE, FILE_MODE
from procflow.io.safe_paths import FILE_FLAGS as _FILE_FLAGS
from procflow.io.safe_paths import rmtree_at as _rmtree_at

# procflow's job ids (runtime.dispatcher.new_job_id): only folders named so are ever pruned.
JOB_DIR_NAME = re.compile(r"[0-9a-f]{8}")


# -- where ------------------------------------------------------------------------------------------


def default_state_dir() -> str:
    """procflow's per-user state folder (not created here).

    $XDG_STATE_HOME when set; else ~/.local/state, but only when the home folder belongs to this user
    (a root job under `sudo` keeps the caller's HOME, and must not write root-owned files there); else a
    `procflow-<uid>` folder in the temporary directory, which `private_dir` then insists is ours and 0700.
    """
    xdg = os.environ.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg):
        return os.path.join(xdg, "procflow")
    home = os.path.expanduser("~")
    try:
        home_is_ours = os.path.isabs(home) and os.stat(home).st_uid == os.geteuid()
    except OSError:
        home_is_ours = False
    if home_is_ours:
        return os.path.join(home, ".local", "state", "procflow")
    return os.path.join(tempfile.gettempdir(), f"procflow-{os.geteuid()}")


def default_log_dir(env_name: str) -> str:
    """Create (0700) and check `<state>/logs/<env_name>`; returns its path."""
    if os.sep in env_name or env_name in (".", "..") or "\0" in env_name:
        raise ValueError(f"environment name {env_name!r} cannot name a log folder (it holds {os.sep!r} or "
                         "is '.' or '..'); pick a plain name, or pass env_dir=... to choose the folder")
    path = default_state_dir()
    for part in ("logs", env_name):
        private_dir(path)
        path = os.path.join(path, part)
    private_dir(path)
    return path


# -- checked folders ---------------------------------------------------------------------------------


def _check_dir(fd: int, path: str) -> None:
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        raise UnsafePathError(
            f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}): procflow will not "
            "write logs into a folder another user controls. Remove it (if it is stale), or pass "
            "env_dir=... to use another folder")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise UnsafePathError(
            f"{path} has mode {oct(stat.S_IMODE(st.st_mode))}: other users can reach what procflow writes "
            f"there. Run `chmod 700 {path}`, or pass env_dir=... to use another folder")


def open_dir(path: str) -> int:
    """An fd on `path`, which must be a real directory (not a symlink) of ours with mode 0700 or less."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as exc:
        if os.path.islink(path):
            raise UnsafePathError(f"{path} is a symlink; procflow writes only into real folders. Remove "
                                  "it, or pass env_dir=... to use another folder") from exc
        raise
    try:
        _check_dir(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_dir(path: str) -> None:
    """Make `path` a folder of ours with mode 0700 (parents made as needed, also 0700), and check it."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, DIR_MODE, exist_ok=True)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass  # checked below like a new one: ours, real, 0700
    os.close(open_dir(path))


def make_job_dir(env_dir: str, job_id: str, keep_logs: int | None) -> str:
    """Create the job's log folder `<env_dir>/<job_id>` (0700), then prune old job folders.

    The job folder must be new: an existing one may have been planted, with symlinks inside, by whoever
    can write to env_dir (issue 22).
    """
    os.makedirs(env_dir, DIR_MODE, exist_ok=True)
    job_dir = os.path.join(env_dir, job_id)
    try:
        os.mkdir(job_dir, DIR_MODE)
    except FileExistsError:
        raise UnsafePathError(
            f"the job folder {job_dir} already exists; procflow makes a fresh folder for every job and will "
            "not write into one it did not make (someone else may have created it). Remove it, or pass "
            "env_dir=... to use a folder only you can write to") from None
    os.close(open_dir(job_dir))
    if keep_logs is not None:
        prune_job_dirs(env_dir, keep_logs, current=job_id)
    return job_dir


def prune_job_dirs(env_dir: str, keep: int, *, current: str | None = None) -> list[str]:
    """Remove all but the newest `keep` job folders of env_dir (issue 22: 600 jobs left 600 folders).

    Only real folders of ours named like a job id count; symlinks, files and other folders are left
    alone, and removal never follows a symlink (`shutil.rmtree` relative to env_dir's fd). The newest is
    judged by modification time (ties by name); `current` is always kept. Returns the names removed.
    """
    try:
        dir_fd = os.open(env_dir, _DIR_FLAGS)
    except OSError:
        return []
    removed = []
    try:
        jobs = []
        for name in os.listdir(dir_fd):
            if not JOB_DIR_NAME.fullmatch(name) or name == current:
                continue
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
                jobs.append((st.st_mtime_ns, name))
        jobs.sort()
        excess = len(jobs) + (current is not None) - max(keep, 1)
        for _, name in jobs[:max(excess, 0)]:
            try:
                _rmtree_at(dir_fd, name)
                removed.append(name)
            except OSError:  # vanished, or removed by a concurrent job of the same environment
                continue
    finally:
        os.close(dir_fd)
    return removed


# -- private files -----------------------------------------------------------------------------------


class PrivateDir:
    """A checked folder (see `open_dir`) and the files made in it, relative to its fd.

    Opening relative to the fd means a rename or swap of the folder's path after the check cannot send a
    write elsewhere. Use as a context manager, or call `close()`.
    """

    def __init__(self, path: str, *, create: bool = False) -> None:
        if create:   # a Ray actor on another node may be the first to use the job folder there
            private_dir(path)
        self.path = path
        self.fd = open_dir(path)

    def open_file(self, name: str, *, exclusive: bool) -> int:
        """An fd for writing `name` (mode 0600): a new file (`exclusive`), or one appended to.

        O_NOFOLLOW refuses a symlink planted under that name; an appended file must be a regular file of
        ours with one link, so a hard link to someone else's file is refused too.
        """
        flags = _FILE_FLAGS | (os.O_EXCL if exclusive else os.O_APPEND)
        where = os.path.join(self.path, name)
        try:
            fd = os.open(name, flags, FILE_MODE, dir_fd=self.fd)
        except FileExistsError:
            raise UnsafePathError(f"{where} already exists; procflow writes a new file there and will not "
                                  "reuse one it did not make") from None
        except OSError as exc:
            if os.path.islink(where):
                raise UnsafePathError(f"{where} is a symlink; procflow will not write through it") from exc
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
            os.close(fd)
            raise UnsafePathError(f"{where} is not a regular file of this user with a single link; procflow "
                                  "will not append to it")
        return fd

    def open_text(self, name: str, *, exclusive: bool) -> Any:
        """`open_file` as a text file object."""
        return os.fdopen(self.open_file(name, exclusive=exclusive), "a", encoding="utf-8")

    def read_text(self, name: str) -> str:
        """The text of `name`, not following a symlink (what the driver reads back, e.g. a crash log)."""
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        with os.fdopen(fd, encoding="utf-8", errors="replace") as f:
            return f.read()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PrivateDir:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_private_text(dir_path: str, name: str, *, exclusive: bool, create_dir: bool = False) -> Any:
    """A text file `name` (0600) in the checked folder `dir_path`, opened for writing (see PrivateDir)."""
    with PrivateDir(dir_path, create=create_dir) as d:
        return d.open_text(name, exclusive=exclusive)


class PrivateFileHandler(logging.StreamHandler):
    """A log file made private (0600, no symlink followed, in a checked folder).

    Unlike logging.FileHandler it never reopens its file by path: a record logged after close() is
    dropped (a late record from another thread once reopened a closed handler's file, which then leaked).
    """

    def __init__(self, dir_path: str, name: str, *, exclusive: bool = False, create_dir: bool = False) -> None:
        super().__init__(open_private_text(dir_path, name, exclusive=exclusive, create_dir=create_dir))
        self.path = os.path.join(dir_path, name)

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None:
            return
        super().emit(record)

    def close(self) -> None:
        self.acquire()
        try:
            stream, self.stream = self.stream, None
            if stream is not None:
                try:
                    stream.flush()
                finally:
                    stream.close()
        finally:
            self.release()
            super().close()
