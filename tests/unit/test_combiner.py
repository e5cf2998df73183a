"""Combiners (issue 19): a keyed reduce's partial aggregation in the sending task's router, driven with
in-memory writers (no processes)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procflow import LocalEnvironment
from procflow.core.errors import UnstableKeyError
from procflow.core.functions import CallableReduce, ReduceFunction
from procflow.core.signals import StopSignal
from procflow.runtime.communication.combiner import MAX_KEYS, Combining
from procflow.runtime.communication.router import BaseRouter, OutputGroup, stable_hash
from tests.unit.test_router import BatchingWriter, RecordingWriter


class Add(ReduceFunction):
    """Counts its lifecycle calls, so a test can see the combiner's copy opened and closed."""

    def __init__(self) -> None:
        self.opened = self.closed = 0

    def open(self) -> None:
        self.opened += 1

    def execute(self, accumulated, record):
        return accumulated + record

    def close(self) -> None:
        self.closed += 1


def combining_router(n=3, *, fn=None, selector=None, writer=RecordingWriter, groups=None, max_keys=None):
    writers = [writer() for _ in range(n)]
    group = OutputGroup("reduce", "hash", writers, selector, None, (), fn if fn is not None else Add())
    router = BaseRouter([group, *(groups or [])])
    if max_keys is not None:
        placement = router._placements[0]
        assert isinstance(placement, Combining)
        placement.max_keys = max_keys
    return router, writers


def fold_like_the_reduce(writers, fn):
    """What ReduceOperator computes from what reached its instances: first record per key is the state."""
    out = {}
    for i, w in enumerate(writers):
        for p in w.packets:
            assert p.keyed and stable_hash(p.partition_key) % len(writers) == i   # each partial at its key's instance
            out[p.partition_key] = fn(out[p.partition_key], p.payload) if p.partition_key in out else p.payload
    return out


def pairs(n, keys=7):
    return [(f"k{(i * 5) % keys}", i) for i in range(n)]


@pytest.mark.parametrize("max_keys", [None, 1, 2, 5])
def test_partials_fold_to_the_same_result_as_every_record(max_keys):
    records = pairs(500)
    combined, cw = combining_router(max_keys=max_keys)
    pw = [RecordingWriter() for _ in range(3)]
    plain = BaseRouter([OutputGroup("reduce", "hash", pw)])   # the same group without a combiner
    for key, value in records:
        combined.route(value, key, True)
        plain.route(value, key, True)
    combined.send_stop(StopSignal("up"))
    plain.send_stop(StopSignal("up"))
    add = Add().execute
    expected = {}
    for key, value in records:
        expected[key] = expected.get(key, 0) + value
    assert fold_like_the_reduce(cw, add) == fold_like_the_reduce(pw, add) == expected
    sent = sum(len(w.packets) for w in cw)
    assert sum(len(w.packets) for w in pw) == 500
    assert sent == 7 if max_keys is None else 7 <= sent <= 500   # bounded: keys cycle, little to fold
    assert combined.records_out == plain.records_out == 500   # records emitted, whatever crossed


@settings(max_examples=60, deadline=None, derandomize=True)
@given(records=st.lists(st.tuples(st.sampled_from([0, 1, 2.0, "a", "b", (1, "x"), None, False]),
                                  st.integers(-50, 50)), max_size=80),
       n=st.integers(1, 4), max_keys=st.integers(1, 6), upstream=st.integers(1, 3))
def test_any_split_into_partials_folds_to_the_python_answer(records, n, max_keys, upstream):
    # several sending tasks, each with its own bounded combiner, into the same n reduce instances
    writers = [RecordingWriter() for _ in range(n)]
    for u in range(upstream):
        router = BaseRouter([OutputGroup("reduce", "hash", writers, None, None, (), Add())], u)
        router._placements[0].max_keys = max_keys
        for key, value in records[u::upstream]:
            router.route(value, key, True)
        router.send_stop(StopSignal(f"up{u}"))
    expected: dict = {}
    for key, value in records:
        expected[key] = expected.get(key, 0) + value
    assert fold_like_the_reduce(writers, lambda a, b: a + b) == expected


def test_nothing_leaves_before_the_end_of_input_and_partials_precede_the_stop():
    router, writers = combining_router()
    fn = router.groups[0].combiner
    for key, value in pairs(100):
        router.route(value, key, True)
    router.flush()   # the task's flush timer: partials stay (they would leave nearly one per record)
    assert all(not w.items for w in writers) and fn.closed == 0
    router.send_stop(StopSignal("up"))
    assert sum(len(w.packets) for w in writers) == 7
    assert all(len(w.controls) == 1 for w in writers) and fn.closed == 1


def test_the_dict_is_bounded_and_sends_all_partials_when_full():
    router, writers = combining_router(max_keys=3)
    placement = router._placements[0]
    for i in range(10):   # ten distinct keys, three held at most
        router.route(1, f"key{i}", True)
        assert len(placement.partials) < 3
    assert sum(len(w.packets) for w in writers) == 9   # three full dicts went out; key9 is held
    router.send_stop(StopSignal("up"))
    assert sorted(p.partition_key for w in writers for p in w.packets) == [f"key{i}" for i in range(10)]
    assert MAX_KEYS >= 1024   # the default holds the keys of an ordinary group-by until the end


def test_a_key_selector_runs_on_each_record_and_unkeyed_records_pass_through():
    router, writers = combining_router(selector=lambda r: r % 4, writer=BatchingWriter)
    for r in range(40):
        router.route(r, None, False)   # the selector gives the key
    router.send_stop(StopSignal("up"))
    got = fold_like_the_reduce(writers, lambda a, b: a + b)
    assert got == {k: sum(r for r in range(40) if r % 4 == k) for k in range(4)}


def test_records_without_a_key_are_not_grouped():
    # A hash group places unkeyed records round robin (one emitted at end of input has no key): they go
    # on at once, as they did, and the reduce sees each of them.
    router, writers = combining_router(n=2)
    router.route("x", None, False)
    router.route("y", None, False)
    assert sorted(p.payload for w in writers for p in w.packets) == ["x", "y"]
    assert not any(p.keyed for w in writers for p in w.packets)


def test_a_fold_that_raises_leaves_the_partial_as_it_was():
    # on_error="skip" sets the failing record aside: it must not be half-counted in the partial.
    def picky(acc, value):
        if value == 13:
            raise ValueError("unlucky")
        return acc + value

    router, writers = combining_router(fn=CallableReduce(picky))
    router.route(1, "k", True)
    with pytest.raises(ValueError, match="unlucky"):
        router.route(13, "k", True)
    router.route(2, "k", True)
    router.send_stop(StopSignal("up"))
    assert fold_like_the_reduce(writers, picky) == {"k": 3}


def test_a_failing_key_selector_raises_at_its_record():
    router, _ = combining_router(selector=lambda r: r["user"])
    router.route({"user": "a"}, None, False)
    with pytest.raises(KeyError, match="user"):
        router.route({"name": "b"}, None, False)


def test_a_key_without_a_stable_hash_fails_at_its_first_record_not_at_the_end():
    router, _ = combining_router()
    router.route(1, "fine", True)
    with pytest.raises(UnstableKeyError, match="partitioning records for operator 'reduce' by key"):
        router.route(1, object(), True)


def test_a_key_a_dict_cannot_hold_fails_naming_the_reduce_and_the_fix():
    router, _ = combining_router()
    with pytest.raises(UnstableKeyError, match=r"reduce 'reduce' .* key \[1\] is a list.*a tuple instead"):
        router.route(1, [1], True)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("combine", [True, False])
def test_a_job_keyed_by_lists_fails_with_the_same_clear_error_with_or_without_a_combiner(env, combine):
    from procflow.core.errors import JobFailedError

    (env.from_batch([[i % 3, 1] for i in range(30)]).map(lambda r: r, parallelism=2)
     .keyby(lambda r: [r[0]]).reduce(lambda a, b: [a[0], a[1] + b[1]], combine=combine).collect())
    with pytest.raises(JobFailedError, match="cannot be a dict key; return a hashable key"):
        env.submit()


def test_held_read_only_arrays_are_copies():
    # A received array may be a read-only view on ring memory that the ring reuses after the call.
    router, writers = combining_router(n=1, fn=CallableReduce(lambda a, b: b))   # keeps the last one
    ring = np.zeros(4)
    view = ring.view()
    view.flags.writeable = False
    router.route(view, "k", True)
    ring[:] = 7.0   # the ring is reused
    router.send_stop(StopSignal("up"))
    (packet,) = writers[0].packets
    assert packet.payload.tolist() == [0.0] * 4


def test_a_fan_out_router_holds_the_reduce_group_and_sends_the_other_at_once():
    other = OutputGroup("sink", "round_robin", [RecordingWriter()])
    router, writers = combining_router(n=2, groups=[other])
    for key, value in pairs(20, keys=3):
        router.route(value, key, True)
    assert len(other.writers[0].packets) == 20 and not any(w.items for w in writers)
    router.send_stop(StopSignal("up"))
    assert sum(len(w.packets) for w in writers) == 3


def test_one_channel_still_goes_through_the_combiner():
    # One reduce instance and no selector: a plain router would hand records to the channel directly.
    router, (writer,) = combining_router(n=1, writer=BatchingWriter)
    assert router.fast_route == router.route
    for key, value in pairs(50):
        router.fast_route(value, key, True)
    router.send_stop(StopSignal("up"))
    assert len(writer.packets) == 7


# -- the graph: where reduce() asks its senders to combine --------------------------------------------

@pytest.fixture
def env(tmp_path):
    with LocalEnvironment("combine", env_dir=str(tmp_path)) as e:
        yield e


def _combiner_of(stream):
    (inp,) = stream.transformation.inputs
    return inp.partitioning.combiner


def test_reduce_on_a_hash_keyed_stream_combines_unless_asked_not_to(env):
    keyed = env.from_batch(range(10)).keyby(lambda x: x % 3)
    combined = keyed.reduce(Add)
    assert _combiner_of(combined) is combined.transformation.function
    assert _combiner_of(keyed.reduce(Add, combine=False)) is None
    assert _combiner_of(keyed.reduce(Add, emit="running")) is None   # every update is output
    assert _combiner_of(keyed.map(abs).reduce(Add)) is not None       # a key carried from upstream
    custom = env.from_batch(range(10)).keyby(lambda x: x, strategy=lambda k, n: 0)
    assert _combiner_of(custom.reduce(Add)) is None
    with pytest.raises(TypeError, match="combine must be True or False, got 'no'"):
        keyed.reduce(Add, combine="no")


def test_each_sending_task_gets_its_own_copy_of_the_reduce_function(env):
    from procflow.runtime.context.task_context import output_specs

    env.from_batch(range(10), parallelism=2).keyby(lambda x: x % 3).reduce(Add, parallelism=2).collect()
    graph = env.compile()
    copies = [output_specs(graph.nodes[f"batch_{i}"], lambda e: e)[0].combiner for i in range(2)]
    assert all(isinstance(c, Add) for c in copies) and copies[0] is not copies[1]
