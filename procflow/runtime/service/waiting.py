"""Waiting for the other end of a service round trip: poll a futex word briefly, then sleep on it.

    caller:   write request, commit ─► Waiter.wait(response doorbell) ─► read answer
    replica:  answer, commit ─► Waiter.wait(request doorbell) ─► read next request

A synchronous call is a ping-pong, and the answer to a small call comes back within a few tens of
microseconds. A futex sleep and wake-up costs more than that here: on a VM the wake of an idle vCPU alone
measured 30-70 us, and the sleeper pays the same again to get going. So a waiter first polls the word for
up to `window` seconds and only then sleeps on the futex, with the usual event-count protocol (futex.py):
the caller read `seen`, re-checked its rings, and sleeps only if the word still equals `seen`, so no
wake-up is lost whether the other side commits during the poll or during the sleep.

The poll calls sched_yield() between checks rather than spinning on the CPU. With more busy processes
than cores (4 callers and 4 replicas on 2 cores, or a core taken by other work) the process that must
answer may be waiting for this very core: a yield hands it over at once, where a pure spin holds the
core until the time slice ends (bare ring ping-pong with one core busy elsewhere: 33 us round trips
with yields, 160 us with a pure spin). On a core nobody else wants, sched_yield() returns at once
(about a microsecond), so the poll stays fine-grained.

The window adapts, as an adaptive mutex's spin count does: it grows towards twice the wait that the
poll caught, and halves whenever the poll ran out (a slow method, an idle caller), so a process that
waits on something slow soon sleeps at once and burns almost no CPU. It never drops below MIN_WINDOW, so
it recovers when answers become quick again.
"""

from __future__ import annotations

import os
import time

MIN_WINDOW = 20e-6
MAX_WINDOW = 250e-6
_perf = time.perf_counter
_yield = os.sched_yield


class Waiter:
    """Poll-then-sleep on a futex word, with an adaptive poll window. One per waiting thread role."""

    __slots__ = ("window",)

    def __init__(self, window: float = 100e-6) -> None:
        self.window = window

    def poll(self, word, seen: int) -> bool:
        """Yield-poll the ctypes word until it differs from `seen`, for at most the window.

        True if it changed (the caller re-checks its rings); False if the window ran out and the caller
        should sleep on the futex with the same `seen`.
        """
        started = _perf()
        end = started + self.window
        while word.value == seen:
            _yield()
            if word.value != seen:
                break
            if _perf() >= end:
                self.window = max(self.window * 0.5, MIN_WINDOW)
                return False
        took = _perf() - started
        if took * 2 > self.window:
            self.window = min(took * 2, MAX_WINDOW)
        return True
