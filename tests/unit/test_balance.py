"""Balancer: credit-based placement, driven with fake channels whose consumers we move by hand."""

from __future__ import annotations

import pytest

from procflow.runtime.communication import balance
from procflow.runtime.communication.balance import CAP_START, Balancer, can_balance


class FakeChannel:
    """Records what it was sent; `taken` / `done` stand for what its consumer published."""

    def __init__(self) -> None:
        self.records: list = []
        self.taken = self.done = 0
        self.busy = 0.0     # seconds the consumer has spent on the records it finished

    @property
    def objects_sent(self) -> int:
        return len(self.records)

    def send_many(self, records):
        self.records += records

    def progress(self):
        return len(self.records), self.taken, self.done, self.busy

    def consume_all(self):
        """The consumer takes everything queued and finishes it, then asks for more."""
        self.taken = self.done = len(self.records)


@pytest.fixture(autouse=True)
def no_sleeping(monkeypatch):
    monkeypatch.setattr(balance.time, "sleep", lambda seconds: None)


def test_records_keep_their_order_and_no_ring_gets_more_than_its_cap():
    a, b = FakeChannel(), FakeChannel()
    balancer = Balancer([a, b])
    balancer.send_many(list(range(CAP_START * 2)), flush=lambda: None)
    assert sorted(a.records + b.records) == list(range(CAP_START * 2))
    assert a.records == sorted(a.records) and b.records == sorted(b.records)
    assert len(a.records) == len(b.records) == CAP_START


def test_a_consumer_that_keeps_up_gets_the_records_and_its_cap_grows():
    fast, stuck = FakeChannel(), FakeChannel()
    balancer = Balancer([fast, stuck])
    # every time the producer finds no room, only the fast consumer has taken and finished its share
    balancer.send_many(list(range(1000)), flush=fast.consume_all)
    assert len(stuck.records) == CAP_START         # its first credit, never taken
    assert len(fast.records) == 1000 - CAP_START
    assert balancer.caps[0] > 100 * CAP_START and balancer.caps[1] == CAP_START
    assert sorted(fast.records + stuck.records) == list(range(1000))
    for channel in (fast, stuck):                  # each ring keeps the source's order
        assert channel.records == sorted(channel.records)


def test_pick_waits_for_room_and_flushes_first():
    a, b = FakeChannel(), FakeChannel()
    balancer = Balancer([a, b])
    for _ in range(2 * CAP_START):
        [a, b][balancer.pick(flush=lambda: None)].send_many(["x"])
    flushes = []

    def flush():
        flushes.append(1)
        b.consume_all()

    assert balancer.pick(flush) == 1 and flushes == [1] and balancer.waited_s >= 0


def test_only_channels_that_report_progress_can_balance():
    assert can_balance([FakeChannel(), FakeChannel()])
    assert not can_balance([object()]) and not can_balance([])


class FakeClock:
    """Time that passes only when the balancer sleeps, so waits can be summed exactly."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(balance.time, "perf_counter", fake.perf_counter)
    monkeypatch.setattr(balance.time, "sleep", fake.sleep)
    return fake


def test_caps_ramp_up_with_short_waits_while_consumers_keep_up(clock):
    # Consumers that finish whatever they are given at once: each wait finds room again, so the
    # producer must not sleep long between doublings (at WAIT_MAX_S a step, a ramp of ten doublings
    # cost cheap records 40 ms at the start of every job).
    a, b = FakeChannel(), FakeChannel()

    def consume():
        a.consume_all()
        b.consume_all()

    balancer = Balancer([a, b])
    clock.now += 0.005           # the consumers' processes take a while to start: no rate to learn here
    balancer.send_many(list(range(4000)), flush=consume)
    assert min(balancer.caps) >= 512
    assert all(s == balance.WAIT_MIN_S for s in clock.sleeps)
    assert sum(clock.sleeps) < 20 * balance.WAIT_MIN_S


def test_a_producer_facing_busy_consumers_backs_off_to_the_longest_wait(clock):
    a, b = FakeChannel(), FakeChannel()
    balancer = Balancer([a, b])
    waits = 0

    def consume_after_a_while():
        nonlocal waits
        waits += 1
        if waits == 12:          # the consumers were busy with their first records all this time
            consume_all()

    def consume_all():
        a.consume_all()
        b.consume_all()

    balancer.send_many(list(range(2 * CAP_START + 1)), flush=consume_after_a_while)
    expected = [min(balance.WAIT_MIN_S * 2 ** k, balance.WAIT_MAX_S) for k in range(12)]
    assert clock.sleeps == pytest.approx(expected)


def test_caps_follow_how_fast_a_consumer_works_not_how_long_it_sat_starved(clock):
    # At 25 us a record a consumer finishes 40,000 a second; a cap holds TARGET_S of that.
    want = int(40_000 * balance.TARGET_S)
    a = FakeChannel()
    balancer = Balancer([a])
    balancer.send_many(list(range(CAP_START)), flush=lambda: None)
    clock.now += 0.020                       # its two records took 50 us; it then waited, starved
    a.taken = a.done = CAP_START
    a.busy += CAP_START * 25e-6
    balancer.send_many(list(range(want)), flush=lambda: None)
    assert balancer.caps == [want] and len(a.records) == CAP_START + want
    # a whole cap's worth, finished in TARGET_S of work but reported 0.1 s later: the rate holds
    clock.now += 0.1
    a.taken = a.done = len(a.records)
    a.busy += want * 25e-6
    balancer.pick(flush=lambda: None)
    assert balancer.rates[0] == pytest.approx(40_000) and balancer.caps == [want]


def test_a_rate_from_one_short_batch_sets_caps_but_not_long_sleeps(clock):
    # A task's first records carry its first-call costs, so their rate can be several times low: the
    # producer may trust it to size caps, but sleeping cap/rate/2 on it starved consumers for 13 ms.
    a = FakeChannel()
    balancer = Balancer([a])
    balancer.send_many(list(range(CAP_START)), flush=lambda: None)
    a.taken = a.done = CAP_START
    a.busy = CAP_START * 25e-6                   # 50 us of work: less than a rate window
    waits = 0

    def consume_on_third_wait():
        nonlocal waits
        waits += 1
        if waits == 3:
            a.busy += (len(a.records) - a.done) * 25e-6
            a.taken = a.done = len(a.records)

    want = int(40_000 * balance.TARGET_S)
    balancer.send_many(list(range(want + 1)), flush=consume_on_third_wait)
    assert balancer.caps[0] == want
    assert clock.sleeps[:3] == pytest.approx([balance.WAIT_MIN_S * 2 ** k for k in range(3)])


class SteadyConsumer(FakeChannel):
    """A consumer that works through its ring at a fixed rate as the fake clock runs."""

    def __init__(self, clock: FakeClock, rate: float) -> None:
        super().__init__()
        self.clock, self.rate, self._done = clock, rate, 0.0
        self._last = clock.now

    def progress(self):
        self._done = min(float(len(self.records)), self._done + (self.clock.now - self._last) * self.rate)
        self._last = self.clock.now
        self.taken = self.done = int(self._done)
        return len(self.records), self.taken, self.done, self.done / self.rate


def test_a_producer_feeding_slow_records_wakes_a_few_dozen_times_a_second(clock):
    # Two consumers of 1 ms records: each wake-up of the producer takes CPU from them (at 8 ms of
    # queued work per consumer, 250 wake-ups a second cost the source 3.5% of a core).
    consumers = [SteadyConsumer(clock, 1000.0), SteadyConsumer(clock, 1000.0)]
    balancer = Balancer(consumers)
    balancer.send_many(list(range(4000)), flush=lambda: None)
    assert clock.now > 1.5                            # the records went out at the consumers' pace
    assert len(clock.sleeps) / clock.now < 100, (len(clock.sleeps), clock.now)


def _finish_spread(clock: FakeClock, upcoming: int | None) -> float:
    """Seconds between two consumers (one three times the other's speed) running out of 6000 records."""
    consumers = [SteadyConsumer(clock, 1000.0), SteadyConsumer(clock, 3000.0)]
    balancer = Balancer(consumers)
    balancer.upcoming = upcoming
    balancer.send_many(list(range(6000)), flush=lambda: None)
    for c in consumers:
        c.progress()
    finish = [clock.now + (len(c.records) - c.done) / c.rate for c in consumers]
    return abs(finish[0] - finish[1])


def test_consumers_of_a_sized_input_finish_together(clock):
    # Told that nothing follows these records, the producer hands the last ones out in shrinking
    # pieces, so both consumers run out of work at about the same moment; not told, the end is as
    # uneven as a queue of TARGET_S allows.
    unsized = _finish_spread(clock, None)
    sized = _finish_spread(clock, 0)
    assert sized < 0.004 and sized < unsized / 3, (sized, unsized)
