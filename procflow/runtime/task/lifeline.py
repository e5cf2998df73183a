"""The driver's lifeline: a task or service process never outlives the driver that started it.

    driver (Dispatcher.start)                 child (become_child -> hold)
    ─────────────────────────                 ────────────────────────────
    DriverLifeline.of_this_process() ─args─►  the driver's main thread forked me (the kernel's
      pid + start time of the driver            /proc/<driver>/task/<driver>/children says so)?
                                                yes: PR_SET_PDEATHSIG = SIGKILL, then getppid() check
                                                no:  pidfd_open(driver), check its start time, and a
                                                     watcher thread blocks in poll() on the pidfd and
                                                     os._exit()s when the driver ends

Why two ways. PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process: a
job submitted from a thread was SIGKILLed as soon as that thread finished (issue 22.8). Under
forkserver the child's parent is the fork server, so "getppid() is not the driver" made every job fail
at once (issue 22.7). A pidfd of the driver is right for every start method and every forking thread,
but the watcher is a Python thread, which needs the GIL to act: a task stuck in native code that holds
the GIL would outlive its driver until that call returns. The kernel's death signal needs nothing from
the child, so it stays where it is exact: the child's parent thread is the driver's main thread, which
lives as long as the driver does.

The start time (field 22 of /proc/<pid>/stat, in clock ticks since boot) rules out pid reuse: a driver
that died before the child looked, and whose pid went to another process, is not mistaken for alive.
"""

from __future__ import annotations

import ctypes
import functools
import os
import select
import signal
import threading
from dataclasses import dataclass

_PR_SET_PDEATHSIG = 1
# The exit status of a child that noticed its driver had gone (nobody is left to read it: it only shows
# in the logs of a process supervisor, if any).
DRIVER_GONE_EXIT = 70


@dataclass(frozen=True)
class DriverLifeline:
    """Who the driver is, as a child must check it: its pid and when that process started."""

    pid: int
    start_ticks: int | None   # None where /proc cannot tell (then pid reuse cannot be ruled out)

    @classmethod
    def of_this_process(cls) -> DriverLifeline:
        return cls(os.getpid(), _own_start_ticks(os.getpid()))


@functools.lru_cache(maxsize=4)
def _own_start_ticks(pid: int) -> int | None:
    """Cached per pid: a driver asks once per job, and a forked child that becomes a driver has its own."""
    return process_start_ticks(pid)


def process_start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot; None if it does not exist (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
    fields = stat.rsplit(b")", 1)[-1].split()
    try:
        return int(fields[19])    # field 22 overall; fields[0] is field 3 (the state)
    except (IndexError, ValueError):
        return None


def hold(driver: DriverLifeline) -> None:
    """In a freshly started child: arrange to end when the driver ends; end now if it already has."""
    if _forked_by_main_thread_of(driver.pid) and _set_death_signal(signal.SIGKILL):
        if os.getppid() != driver.pid:    # the driver died before the death signal was armed
            os._exit(DRIVER_GONE_EXIT)
        return
    _watch(driver)


def _forked_by_main_thread_of(pid: int) -> bool:
    """True when the kernel lists this process among the children of `pid`'s main thread.

    The children file may miss entries while processes come and go (proc(5)), never invent them: a miss
    only costs the fast path, the watcher then does the job.
    """
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            return str(os.getpid()).encode() in f.read().split()
    except OSError:
        return False


def _set_death_signal(signum: int) -> bool:
    try:
        return ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signum) == 0
    except (OSError, AttributeError):   # not Linux
        return False


def _watch(driver: DriverLifeline) -> None:
    try:
        pidfd = os.pidfd_open(driver.pid)
    except ProcessLookupError:
        os._exit(DRIVER_GONE_EXIT)
    except (AttributeError, OSError):
        # No pidfd (Linux before 5.3, or not Linux): nothing watches the driver; its cleanup still
        # reaps this process whenever the driver ends normally.
        return
    if driver.start_ticks is not None and process_start_ticks(driver.pid) != driver.start_ticks:
        os._exit(DRIVER_GONE_EXIT)    # the pid now belongs to another process: the driver is gone
    # A daemon thread, never joined: it must live exactly as long as this process, which always ends by
    # os._exit (end_child), so no interpreter shutdown ever waits for it.
    threading.Thread(target=_exit_when_readable, args=(pidfd,), name="procflow-lifeline", daemon=True).start()


def _exit_when_readable(pidfd: int) -> None:
    """Blocks (no CPU, GIL released) until the driver process has ended, then ends this one."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.poll()    # no timeout: returns only once the pidfd is readable
    os._exit(DRIVER_GONE_EXIT)
