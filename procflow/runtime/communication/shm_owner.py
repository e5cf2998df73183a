"""Who owns a shared-memory segment, and whether that driver still lives: the orphan sweep's evidence.

Every driver process holds, for its whole life, an flock on a lock file of its own in /dev/shm:

    /dev/shm/procflow_<pid>_<token>.lock          mode 0600, flock(LOCK_EX) held by the driver
    /dev/shm/procflow_<pid>_<token>_<job>_<role>_<secret>     its segments carry the same owner key

`<token>` is 64 random bits, so an owner key never collides, not even between drivers in different PID
namespaces that share /dev/shm (issue 22: judged by pid, a sweep in another namespace saw a live driver's
pid as dead and deleted its running job's segments, 1163 jobs of 1170 failed). The pid stays in the name
only so that tools can tell which process made a segment (`procflow.testing.own_segments`).

    driver_key()     the calling process's owner key; the first call creates and locks its lock file
    release_driver_key()   removes it (at exit, by atexit)
    sweep_orphans()  removes the segments (and lock) of every owner key whose lock it can take, among the
                     files of this user only; anything it cannot remove, or may not judge, is skipped

The lock file appears already locked: it is created and flocked as `<key>.new`, then renamed. A sweep
that takes a `.new` lock (a driver killed in that instant) removes it; the driver whose file it removed
sees its rename fail and starts over with a new token. A forked task shares its driver's lock (flock
belongs to the open file, which fork shares), so segments also survive while a task of a killed driver
is still exiting. At a normal exit the driver removes its lock file (atexit); after SIGKILL the next
sweep does.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
import re
import secrets
import stat
import threading

PREFIX = "procflow_"
SHM_DIR = "/dev/shm"
LOCK_SUFFIX = ".lock"
_NEW_SUFFIX = ".new"
# procflow_<pid>_<16 hex token>, then "_..." for a segment, or the lock suffixes.
_OWNER = re.compile(r"(procflow_\d+_[0-9a-f]{16})(_.+|\.lock|\.new)")

_lock = threading.Lock()
_owner: tuple[int, str, int] | None = None   # (pid, key, fd of the locked lock file)


def _after_fork_in_child() -> None:
    # A fork while another thread held _lock would leave the child's copy held for ever.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def driver_key() -> str:
    """`procflow_<pid>_<token>`: the owner key of this process's segments, locked for its lifetime."""
    global _owner
    with _lock:
        # After a fork, the child is a driver of its own (if it makes segments): new key, new lock.
        if _owner is None or _owner[0] != os.getpid():
            _owner = (os.getpid(), *_create_lock())
            atexit.register(release_driver_key)
        return _owner[1]


def _create_lock() -> tuple[str, int]:
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        key = f"{PREFIX}{os.getpid()}_{secrets.token_hex(8)}"
        new = os.path.join(SHM_DIR, key + _NEW_SUFFIX)
        fd = os.open(new, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(new, os.path.join(SHM_DIR, key + LOCK_SUFFIX))
            return key, fd
        except (BlockingIOError, FileNotFoundError):
            # A sweep took our fresh `.new` for a dead driver's and removed it: start over.
            os.close(fd)
            _unlink(new)


def release_driver_key() -> None:
    """Remove this process's lock file; any segment of ours still there is then an orphan.

    Runs at interpreter exit; a driver that leaves by os._exit (skipping atexit) calls it itself, or the
    lock file waits for the next sweep. A later `driver_key()` starts a new key.
    """
    global _owner
    with _lock:
        if _owner is None or _owner[0] != os.getpid():
            return  # a forked child exiting normally must not remove its parent's lock
        _, key, fd = _owner
        _owner = None
    _unlink(os.path.join(SHM_DIR, key + LOCK_SUFFIX))
    os.close(fd)


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


def owner_key(name: str) -> str | None:
    """The owner key of a segment or lock file name, or None for a name not in this format."""
    match = _OWNER.fullmatch(name)
    return match.group(1) if match else None


def is_segment(name: str) -> bool:
    match = _OWNER.fullmatch(name)
    return match is not None and match.group(2).startswith("_")


def _owner_is_dead(key: str, lock_name: str) -> int | None:
    """Take `lock_name`'s lock if its driver is gone: returns the fd holding it (-1 when the lock file
    is already gone, which also means the driver ended), or None when it lives or is not ours to judge."""
    try:
        fd = os.open(os.path.join(SHM_DIR, lock_name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        # Every driver locks its file before it makes a segment and removes it only at exit: a segment
        # whose lock file is gone is an orphan.
        return -1 if lock_name.endswith(LOCK_SUFFIX) else None
    except OSError:
        return None
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            raise PermissionError(errno.EPERM, "another user's lock file")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:   # BlockingIOError: its driver (or a task it forked) still holds it
        os.close(fd)
        return None
    return fd


def sweep_orphans() -> list[str]:
    """Unlink the segments of drivers that no longer exist, among this user's own files. Returns the
    names removed.

    Another user's file is never touched (issue 22: one stale segment of another user made every job of
    every non-root user fail with PermissionError), and a file that cannot be removed is skipped.
    """
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    uid = os.geteuid()
    by_owner: dict[str, list[str]] = {}
    locks: dict[str, str] = {}
    for name in names:
        key = owner_key(name)
        if key is None:
            continue
        try:
            st = os.lstat(os.path.join(SHM_DIR, name))
        except OSError:
            continue
        if st.st_uid != uid or not stat.S_ISREG(st.st_mode):
            continue
        if is_segment(name):
            by_owner.setdefault(key, []).append(name)
        else:
            locks[key] = name
    removed: list[str] = []
    for key in by_owner.keys() | locks.keys():
        lock_name = locks.get(key, key + LOCK_SUFFIX)
        fd = _owner_is_dead(key, lock_name)
        if fd is None:
            continue
        try:
            for name in by_owner.get(key, []):
                if _unlink(os.path.join(SHM_DIR, name)):
                    removed.append(name)
            if fd >= 0:
                _unlink(os.path.join(SHM_DIR, lock_name))
        finally:
            if fd >= 0:
                os.close(fd)
    return removed
