"""Waiting for the other end of a service round trip: poll the rings briefly, then sleep on the doorbell.

    caller:   write request, commit ─► Waiter.wait(its answer ring has data) ─► read answer
    replica:  answer, commit ─► Waiter.wait(any request ring has data) ─► read next request

A synchronous call is a ping-pong, and the answer to a small call comes back within a few tens of
microseconds. A futex sleep and wake-up costs more than that here: on a VM the wake of an idle vCPU alone
measured 30-70 us, and the sleeper pays the same again to get going. So a waiter first polls `ready()`
for up to `window` seconds and only then sleeps on the doorbell futex, flagging itself `asleep` first so
that producers know to wake it (rings.py has the protocol and why no wake-up can be lost).

The poll calls sched_yield() between checks rather than spinning on the CPU. With more busy processes
than cores (4 callers and 4 replicas on 2 cores, or a core taken by other work) the process that must
answer may be waiting for this very core: a yield hands it over at once, where a pure spin holds the
core until the time slice ends (bare ring ping-pong with one core busy elsewhere: 33 us round trips
with yields, 160 us with a pure spin). On a core nobody else wants, sched_yield() returns at once
(about a microsecond), so the poll stays fine-grained.

The window adapts, as an adaptive mutex's spin count does: it grows towards twice the wait that the
poll caught, or that poll and sleep took together when that was under MAX_WINDOW, and halves whenever
the poll ran out (a slow method, an idle caller), so a process that waits on something slow soon sleeps
at once and burns almost no CPU.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable

from procflow.runtime.communication.ring import Doorbell
from procflow.runtime.service.rings import fence

MIN_WINDOW = 20e-6
MAX_WINDOW = 250e-6
# A sleeper re-checks at least this often: a lost wake-up (which the protocol rules out) would cost
# latency, never a hang. Tests raise it, so that a lost wake-up shows as a hang instead.
SAFETY_WAIT = 1.0
_perf = time.perf_counter
_yield = os.sched_yield


class Waiter:
    """Poll-then-sleep on one call inbox, with an adaptive poll window. One per consumer role."""

    __slots__ = ("window", "_bell", "_asleep")

    def __init__(self, bell: Doorbell, asleep: ctypes.c_uint32) -> None:
        self.window = 100e-6
        self._bell = bell
        self._asleep = asleep   # the inbox's `asleep` flag (rings.py), written by this consumer only

    def wait(self, ready: Callable[[], bool], timeout: float | None = None) -> None:
        """Return once `ready()` may be true, or after about `timeout` seconds; callers re-check."""
        started = _perf()
        if self.poll(ready):
            return
        self.sleep(ready, timeout)
        took = _perf() - started
        if took < MAX_WINDOW:
            # Woken soon after all: the window was too short. Without this, two sides whose windows
            # shrank (a hiccup) would each sleep, each find the other asleep, and stay in the slow
            # sleep/wake-up regime for good: a wake-up of a sleeper takes longer than MIN_WINDOW.
            self.window = min(max(self.window, took * 2), MAX_WINDOW)

    def poll(self, ready: Callable[[], bool]) -> bool:
        """Yield-poll `ready()` for at most the window; True if it became true."""
        started = _perf()
        end = started + self.window
        while not ready():
            _yield()
            if ready():
                break
            if _perf() >= end:
                self.window = max(self.window * 0.5, MIN_WINDOW)
                return False
        took = _perf() - started
        if took * 2 > self.window:
            self.window = min(took * 2, MAX_WINDOW)
        return True

    def sleep(self, ready: Callable[[], bool], timeout: float | None = None) -> None:
        """Sleep on the doorbell until a producer that saw the `asleep` flag rings it (or the timeout)."""
        asleep = self._asleep
        asleep.value = 1
        fence()
        seen = self._bell.seen()
        if not ready():
            self._bell.wait(seen, SAFETY_WAIT if timeout is None else min(timeout, SAFETY_WAIT))
        asleep.value = 0
