"""Balance: spread an unkeyed stream over the next operator's instances by how fast each one works.

Round robin gives every instance the same number of records, so a job lasts as long as its slowest
instance. Instances are rarely equal: records differ in cost, and on a shared machine the cores do too
(on the 2-vCPU bench VM the two map processes burned 1.14 s and 1.49 s of CPU for the same 50,000
records, and round robin left one core idle for the last 0.3 s). Pools and Ray hand work to whichever
worker is free; balance does the same over single-producer rings, with credits:

- a consumer publishes how many records it has taken out of each ring, and, each time it asks for
  more, that it has finished them and how long it worked on them (RingReader.publish_taken /
  publish_done);
- the producer keeps at most `cap` untaken records in each ring, gives each chunk to the ring with the
  most room left, and waits when every ring is at its cap;
- a ring's cap is about TARGET_S of work at its consumer's rate: records finished per second of the
  consumer's busy time, so time it sat starved does not count. A consumer found idle (all it took is
  done, its ring empty) was starved: its cap doubles, which is how caps grow from CAP_START to the
  thousands that cheap records need while no rate is known yet;
- a producer with no room anywhere sleeps about half the time its quickest consumer needs for a cap's
  worth; while some consumer's rate is unknown it backs off from WAIT_MIN_S instead, so a ramp from
  CAP_START costs microseconds a step (waiting WAIT_MAX_S a step, 2000 cheap records took 40 ms).

So a consumer finds its next batch queued while it works through the one in hand, and at the end no
instance holds more than about two TARGET_S of work that another could have done. A consumer of 1 s
records holds two or three of them, not the tens that a fixed cap would give it.

A producer that knows how many records are still to come (a source over a list or a range tells it,
`upcoming`) does better at the end, as guided scheduling does: no consumer may queue more than its
share of half the work not yet handed out, so the last records leave in ever smaller pieces, each to
whichever consumer is ready first, and the consumers finish within a few records of each other instead
of one working on alone through its last TARGET_S while the others sit idle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

# Work to keep queued for each consumer, in seconds of that consumer's time. It sets how often the
# producer wakes (twice per TARGET_S when every ring is full) and how uneven the end of a job can be
# (about two TARGET_S). At 8 ms the source of a 1 ms-per-record job burned 3.5% of a core on wake-ups
# and smaller batches cost the consumers more; at 32 ms jobs of 1 ms and of 20 us records both ran
# faster on 2 cores (2.70 -> 2.63 s and 0.94 -> 0.88 s, medians of 4-5 interleaved runs).
TARGET_S = 0.032
# A rate is measured over at least this much of the consumer's busy time (the first one over whatever
# its first batch took, so that caps leave CAP_START after one batch).
RATE_WINDOW_S = 0.004
CAP_START, CAP_MIN, CAP_MAX = 2, 2, 1 << 20
# Bounds of a producer's sleep when every ring is full: longer only starves the consumers, shorter takes
# CPU from all of them (at a fixed 1 ms, the source of a 1.5 s job burned 0.1 s on wake-ups).
WAIT_MIN_S, WAIT_MAX_S = 100e-6, TARGET_S / 2


def can_balance(writers: Sequence[Any]) -> bool:
    """Balancing needs channels that report what their consumer has taken and done (the shm rings)."""
    return bool(writers) and all(hasattr(w, "progress") and hasattr(w, "send_many") for w in writers)


class Balancer:
    """Credit-based placement over the channels of one output group (see the module docstring)."""

    def __init__(self, writers: Sequence[Any]) -> None:
        self.writers = list(writers)
        n = len(self.writers)
        self.caps = [CAP_START] * n
        self.rates = [0.0] * n    # records per second of the consumer's busy time; 0 while unknown
        # Whether a rate comes from a full window: a first batch's rate sets caps (so the ramp from
        # CAP_START is one step), but it includes the task's first-call costs and can be 3-4x low, so
        # the producer does not yet sleep as long as that rate would allow.
        self._settled = [False] * n
        progress = [w.progress() for w in self.writers]
        # (records done, busy seconds) when each rate window opened
        self._windows = [(done, busy) for _, _, done, busy in progress]
        self._seen_done = [done for _, _, done, _ in progress]
        self._limits = self.caps   # caps, or the smaller guided ones near the end of the input
        # Records the producer will send after the ones in hand, when it knows (None: it does not).
        self.upcoming: int | None = None
        self._next = 0
        self._backoff = WAIT_MIN_S
        self.waited_s = 0.0

    def send_many(self, records: list, flush: Callable[[], None]) -> None:
        """Hand `records` (in order) to the rings with room, waiting for room when there is none."""
        pos, total = 0, len(records)
        while pos < total:
            i, room = self._roomiest(total - pos)
            if room <= 0:
                self._wait(flush)
                continue
            self._backoff = WAIT_MIN_S
            take = min(room, total - pos)
            self.writers[i].send_many(records if take == total else records[pos:pos + take])
            pos += take

    def pick(self, flush: Callable[[], None]) -> int:
        """The channel for one record."""
        while True:
            i, room = self._roomiest(1)
            if room > 0:
                self._backoff = WAIT_MIN_S
                return i
            self._wait(flush)

    def _roomiest(self, in_hand: int) -> tuple[int, int]:
        """(channel, room) for the channel with the most room under its cap; ties go round robin.
        `in_hand`: records the producer holds, still to place."""
        caps, rates = self.caps, self.rates
        n = len(self.writers)
        progress = [w.progress() for w in self.writers]
        for i, (sent, taken, done, busy) in enumerate(progress):
            if done != self._seen_done[i]:
                self._seen_done[i] = done
                if done == taken and sent <= taken:    # finished all it had, nothing waiting: starved
                    caps[i] = min(caps[i] * 2, CAP_MAX)
                old_done, old_busy = self._windows[i]
                worked = busy - old_busy
                if worked >= RATE_WINDOW_S or (worked > 0 and not rates[i]):
                    self._settled[i] = worked >= RATE_WINDOW_S
                    rates[i] = (done - old_done) / worked
                    caps[i] = min(max(CAP_MIN, int(rates[i] * TARGET_S)), CAP_MAX)
                    self._windows[i] = (done, busy)
        upcoming = self.upcoming
        limits = self._limits = caps if upcoming is None else self._guided(upcoming, in_hand)
        best, best_room = self._next, -1 << 62
        for k in range(n):
            i = (self._next + k) % n
            sent, taken = progress[i][0], progress[i][1]
            room = limits[i] - (sent - taken)
            if room > best_room:
                best, best_room = i, room
        self._next = (best + 1) % n
        return best, best_room

    def _guided(self, upcoming: int, in_hand: int) -> list[int]:
        """Caps limited to each consumer's share, by rate, of half the records not yet handed out."""
        rates = self.rates
        if not all(rates):
            return self.caps
        half_time_left = (upcoming + in_hand) / sum(rates) / 2
        return [min(cap, max(CAP_MIN, int(rate * half_time_left))) for cap, rate in zip(self.caps, rates)]

    def _wait(self, flush: Callable[[], None]) -> None:
        # Every ring is at its cap: publish what is pending (a consumer may be waiting for exactly
        # that), then give the consumers time to take some.
        flush()
        known = [cap / rate for cap, rate, settled in zip(self._limits, self.rates, self._settled) if settled]
        wait = min(known) / 2 if known else WAIT_MAX_S
        if len(known) < len(self.rates):
            wait = min(wait, self._backoff)
            self._backoff = min(self._backoff * 2, WAIT_MAX_S)
        wait = min(max(wait, WAIT_MIN_S), WAIT_MAX_S)
        started = time.perf_counter()
        time.sleep(wait)
        self.waited_s += time.perf_counter() - started
