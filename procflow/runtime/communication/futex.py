"""Linux futexes through ctypes: the OS primitive our rings block on.

Why futexes and not semaphores or pipes: a futex is a 32-bit word inside the shared segment itself, so a
process that attaches to a segment by name gets its wake-ups for free; there is no handle to inherit and
nothing to leak. Waiting costs no CPU, and `ctypes` releases the GIL around the system call, so other
threads of the task keep running.

Protocol (an "event count"): a waiter reads the word, re-checks its condition, then calls
`wait(word, seen)`; the kernel sleeps only if the word still equals `seen`. A waker first publishes its
data, then bumps the word and wakes. A bump that lands between the waiter's check and its sleep makes the
kernel return at once, so no wake-up is lost.
"""

from __future__ import annotations

import ctypes
import errno
import platform

_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine().lower())
_FUTEX_WAIT = 0
_FUTEX_WAKE = 1
_FUTEX_WAKE_OP = 5
# FUTEX_OP(FUTEX_OP_ADD, 1, FUTEX_OP_CMP_EQ, 0): atomically add one to the word, then wake.
_ADD_ONE = (1 << 28) | (0 << 24) | (1 << 12) | 0

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def available() -> bool:
    return _SYS_FUTEX is not None


def wait(address: int, seen: int, timeout: float | None) -> None:
    """Sleep while the 32-bit word at `address` equals `seen`, for at most `timeout` seconds.

    Returns on a wake-up, on a changed word, on a signal or on timeout; callers always re-check their
    condition, so the reason does not matter.
    """
    if timeout is None:
        ts = None
    else:
        timeout = max(timeout, 0.0)
        sec = int(timeout)
        ts = ctypes.byref(_Timespec(sec, int((timeout - sec) * 1e9)))
    res = _syscall(_SYS_FUTEX, ctypes.c_void_p(address), _FUTEX_WAIT, ctypes.c_uint32(seen), ts, None, 0)
    if res == -1:
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR):
            raise OSError(err, f"futex wait failed: {errno.errorcode.get(err, err)}")


def wake(address: int, count: int = 1) -> None:
    """Wake up to `count` waiters on the word, without changing it (single-writer words bump first)."""
    _syscall(_SYS_FUTEX, ctypes.c_void_p(address), _FUTEX_WAKE, count, None, None, 0)


def bump_and_wake(address: int, count: int = 1) -> None:
    """Atomically add one to the word and wake up to `count` waiters.

    Needed where several processes bump one word (many producers ringing one consumer's doorbell): a
    plain read-add-store could let two bumps collapse into one and a waiter sleep through new data.
    """
    _syscall(_SYS_FUTEX, ctypes.c_void_p(address), _FUTEX_WAKE_OP, count, ctypes.c_void_p(0),
             ctypes.c_void_p(address), _ADD_ONE)
