"""The file-system moves that keep procflow's own folders and files private, below the runtime.

Shared by the log folders (runtime/private_files.py) and the file sinks (io/sinks/): a folder is opened
once as an fd that refuses a symlink, and everything inside it is made, opened, renamed and removed
relative to that fd. Issue 22 showed the failure this guards against: a path checked, then swapped or
planted with a symlink by someone else before the write, sends the write elsewhere.

    DIR_MODE / FILE_MODE   0700 folders, 0600 files: only this user reads what procflow writes
    open_dir_fd(path)      an fd on a real directory (a symlink at `path` is refused)
    make_dir_at(fd, name)  a new 0700 folder inside an open folder (never one that exists already)
    create_file_at(fd, n)  a new 0600 file (O_EXCL, O_NOFOLLOW): a planted name or link is refused
    rmtree_at(fd, name)    remove a tree without following a symlink in it
"""

from __future__ import annotations

import os
import shutil
import sys

DIR_MODE = 0o700
FILE_MODE = 0o600
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir_fd(path: str, *, dir_fd: int | None = None) -> int:
    """An fd on the directory `path` (relative to `dir_fd` if given); raises NotADirectoryError or
    OSError(ELOOP) where `path` is a file or a symlink, FileNotFoundError where it is missing."""
    return os.open(path, DIR_FLAGS, dir_fd=dir_fd)


def make_dir_at(dir_fd: int, name: str) -> None:
    """mkdir `name` (mode 0700) inside the folder `dir_fd`; FileExistsError if anything has that name.

    The mode is set again after mkdir (through an fd that refuses a symlink) because a umask may have
    taken owner bits off: the result is exactly 0700.
    """
    os.mkdir(name, DIR_MODE, dir_fd=dir_fd)
    fd = open_dir_fd(name, dir_fd=dir_fd)
    try:
        os.fchmod(fd, DIR_MODE)
    finally:
        os.close(fd)


def create_file_at(dir_fd: int, name: str, *, read: bool = False) -> int:
    """A new file `name` (mode 0600) inside the folder `dir_fd`, open for writing (and reading with
    `read`); FileExistsError if the name exists, a symlink included (O_EXCL never follows one)."""
    flags = (FILE_FLAGS & ~os.O_WRONLY) | (os.O_RDWR if read else os.O_WRONLY) | os.O_EXCL
    return os.open(name, flags, FILE_MODE, dir_fd=dir_fd)


def rmtree_at(dir_fd: int, name: str) -> None:
    """`shutil.rmtree(name, dir_fd=dir_fd)`, also on Python 3.10, whose rmtree has no `dir_fd` (it came in
    3.11: on 3.10 the call raised TypeError, which no caller caught, so pruning ended the job's start).

    There the folder is named through /proc/self/fd/<dir_fd>, which resolves to the directory this fd
    holds open, not to whatever the folder's path leads to now; rmtree itself refuses a symlink at the
    top (OSError) and removes the rest relative to fds, as it does with dir_fd.
    """
    if sys.version_info >= (3, 11):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        shutil.rmtree(f"/proc/self/fd/{dir_fd}/{name}")
