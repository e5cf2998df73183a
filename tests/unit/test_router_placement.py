"""BaseRouter decides once how records leave (one placement per output group), never per record, and
never by replacing its own methods. Driven with in-memory writers: no processes, no shared memory."""

from __future__ import annotations

import enum

import numpy as np
import pytest

from procflow.runtime.communication import balance
from procflow.runtime.communication.balance import CAP_START
from procflow.runtime.communication.router import BaseRouter, OutputGroup
from tests.unit.test_router import BatchingWriter, RecordingWriter


class BalancingWriter(BatchingWriter):
    """A channel that reports what its consumer took, as the shm rings do: one a balancer can use."""

    def __init__(self) -> None:
        super().__init__()
        self.taken = 0

    def progress(self):
        return self.objects_sent, self.taken, self.taken, 0.0


def test_route_is_the_class_method_whatever_the_router_chose():
    """A router with one channel once replaced its own `route` with the channel's `send_object`: the
    call path in the source was not the one that ran. It chooses a placement instead."""
    for n, strategy in ((1, "round_robin"), (3, "hash"), (2, "broadcast")):
        router = BaseRouter([OutputGroup("down", strategy, [BatchingWriter() for _ in range(n)])])
        assert "route" not in vars(router)
        assert type(router).route is BaseRouter.route


def test_fast_route_is_the_channel_itself_only_where_there_is_nothing_to_choose():
    one = BatchingWriter()
    direct = BaseRouter([OutputGroup("down", "round_robin", [one])])
    assert direct.fast_route == one.send_object
    spread = BaseRouter([OutputGroup("down", "round_robin", [BatchingWriter(), BatchingWriter()])])
    assert spread.fast_route == spread.route
    for route in (direct.route, direct.fast_route, spread.route, spread.fast_route):
        route("r", None, False)
    assert (direct.records_out, spread.records_out) == (2, 2) and one.records == ["r", "r"]


def test_a_subclass_that_hooks_route_sees_every_record_even_with_one_channel():
    seen = []

    class Hooked(BaseRouter):
        def route(self, payload, key, keyed):
            seen.append(payload)
            super().route(payload, key, keyed)

    writer = BatchingWriter()
    router = Hooked([OutputGroup("down", "round_robin", [writer])])
    assert router.fast_route == router.route and not router.routes_many
    for x in range(3):
        router.fast_route(x, None, False)
    assert seen == writer.records == [0, 1, 2] and router.records_out == 3


def test_an_unknown_strategy_is_refused_when_the_router_is_built():
    """It once went round robin without a word, or failed at the first record of a fan-out."""
    with pytest.raises(ValueError, match="unknown partitioning strategy 'roundrobin'.*round_robin, hash"):
        BaseRouter([OutputGroup("down", "roundrobin", [RecordingWriter()])])


def test_a_router_without_outputs_counts_what_is_emitted_and_sends_nothing():
    """A sink's handle_stop_signal may return records: nothing downstream takes them, nothing encodes
    them (a lambda could not be)."""
    router = BaseRouter([])
    router.route(lambda: None, None, False)
    router.route(1, "k", True)
    assert router.records_out == 2 and router.blocked_seconds == 0


@pytest.mark.parametrize("strategy, keyed", [("round_robin", False), ("hash", True), ("balance", False)])
def test_arrays_among_records_leave_as_frames_of_their_own_in_the_same_order(strategy, keyed):
    """One group over channels that batch encoded records only: arrays skip the batch (the receiver
    gets them as views on ring memory), and keep their place among the others."""
    writers = [RecordingWriter(), RecordingWriter()]
    router = BaseRouter([OutputGroup("down", strategy, writers)])
    sent = [1, np.arange(3), "two", np.ones((2, 2), dtype=np.float32), 3]
    for i, record in enumerate(sent):
        router.route(record, "k" if keyed else None, keyed)
        assert router.records_out == i + 1
    got = [p.payload for w in writers for p in w.packets]
    assert len(got) == len(sent)
    if keyed:   # one key: one channel, in order
        assert all(isinstance(a, np.ndarray) and np.array_equal(a, b) or a == b
                   for a, b in zip(writers[0].records + writers[1].records, sent))
    else:       # round robin: alternate channels
        assert [type(r) for r in writers[0].records] == [int, str, int]
        assert all(isinstance(r, np.ndarray) for r in writers[1].records)


class SleepClock:
    """Time that passes only when the balancer sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_balanced_group_places_by_room_one_record_or_a_list_at_a_time(monkeypatch):
    clock = SleepClock()
    monkeypatch.setattr(balance, "time", clock)
    busy, idle = BalancingWriter(), BalancingWriter()
    router = BaseRouter([OutputGroup("down", "balance", [busy, idle])])
    assert router.routes_many
    router.route_many(list(range(2 * CAP_START)))    # both rings at their cap
    busy.flush = lambda: None
    idle.flush = lambda: setattr(idle, "taken", idle.objects_sent)   # only this consumer takes any
    router.route("one", None, False)                 # no room: wait (and flush), then the idle ring
    router.route_many(["a", "b"])
    assert sorted(busy.records + idle.records[:-3]) == list(range(2 * CAP_START))
    assert len(busy.records) == CAP_START and idle.records[-3:] == ["one", "a", "b"]
    assert router.records_out == 2 * CAP_START + 3
    assert router.blocked_seconds == clock.now > 0   # the balancer's waits count as blocked time


def test_hash_remembers_str_and_int_keys_channels_and_places_them_as_the_stable_hash_does(monkeypatch):
    # Issue 19: a group-by hashed every record's key (encode + crc32); the channel of a str or int key is
    # now remembered, and must be the one the stable hash gives, in every process.
    from procflow.runtime.communication import placement
    from procflow.runtime.communication.keys import stable_hash

    writers = [BatchingWriter() for _ in range(3)]
    router = BaseRouter([OutputGroup("down", "hash", writers)])
    keys = [f"user{i}" for i in range(40)] + list(range(40))
    for _ in range(3):
        for k in keys:
            router.route(("record", k), k, True)
    for i, w in enumerate(writers):
        assert all(stable_hash(r[1]) % 3 == i for r in w.records)
    assert sum(len(w.records) for w in writers) == 3 * len(keys)
    hashed = []
    monkeypatch.setattr(placement, "stable_hash", lambda key: hashed.append(key) or stable_hash(key))
    fresh = BaseRouter([OutputGroup("down", "hash", [BatchingWriter() for _ in range(3)])])
    for _ in range(5):
        for k in keys:
            fresh.route(("record", k), k, True)
    assert sorted(hashed, key=repr) == sorted(keys, key=repr)   # each key hashed once, not per record


class _Level(enum.IntEnum):
    ONE = 1


def test_hash_keys_equal_in_python_but_of_other_types_take_the_full_hash_and_land_together(monkeypatch):
    from procflow.runtime.communication import placement

    writers = [BatchingWriter() for _ in range(5)]
    router = BaseRouter([OutputGroup("down", "hash", writers)])
    for key in (1, True, 1.0, np.int64(1), _Level.ONE, 1):
        router.route(("r", repr(key)), key, True)
    homes = [i for i, w in enumerate(writers) for _ in w.records]
    assert len(set(homes)) == 1   # every key equal to 1 lands with 1, remembered or not
    monkeypatch.setattr(placement, "KNOWN_KEYS_MAX", 8)
    bounded = BaseRouter([OutputGroup("down", "hash", [BatchingWriter() for _ in range(2)])])
    for k in range(100):
        bounded.route(k, k, True)
    assert len(bounded._placements[0]._known) <= 8


def test_a_keyby_list_is_placed_as_record_by_record_and_a_failing_selector_says_where():
    # Issue 19: BaseRouter.route_selected_many, a map's chunk through a keyby's selector in one call.
    def selector(r):
        if r == "bad":
            raise ValueError("no key")
        return r[0]

    records = [f"{c}{i}" for i in range(30) for c in "abcde"]
    one_by_one = [BatchingWriter() for _ in range(3)]
    listed = [BatchingWriter() for _ in range(3)]
    a = BaseRouter([OutputGroup("down", "hash", one_by_one, selector)])
    b = BaseRouter([OutputGroup("down", "hash", listed, selector)])
    assert b.routes_selected_many and not b.routes_many
    for r in records:
        a.route(r, None, False)
    b.route_selected_many(records)
    assert [w.records for w in listed] == [w.records for w in one_by_one] and b.records_out == len(records)
    with pytest.raises(ValueError, match="no key"):
        b.route_selected_many(["a1", "b2", "bad", "c3"])
    assert b.failed_at == 2 and b.records_out == len(records) + 2
    assert not BaseRouter([OutputGroup("down", "round_robin", [BatchingWriter()])]).routes_selected_many
