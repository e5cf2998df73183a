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

    @property
    def objects_sent(self) -> int:
        return len(self.records)

    def send_many(self, records):
        self.records += records

    def progress(self):
        return len(self.records), self.taken, self.done

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
