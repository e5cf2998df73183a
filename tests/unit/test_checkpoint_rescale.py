"""Re-partitioning a keyed reduce's checkpointed state when a resume changes its parallelism
(runtime/checkpoint/rescale.py): each key lands where the router now sends its records, nothing is lost or
doubled, and what cannot be split by key is refused with a message that says what to do."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from procflow import LocalEnvironment, ReduceFunction
from procflow.runtime.checkpoint.coordinator import fingerprint
from procflow.runtime.checkpoint.rescale import repartition, resume_differences
from procflow.runtime.checkpoint.store import LoadedCheckpoint
from procflow.runtime.communication.placement import Hash, OutputGroup
from tests.faults import checkpoint_pipeline as pipeline

# Keys of several types, as a group-by meets them.
KEYS: list[Any] = [*range(40), *(f"k{i}" for i in range(40)), *((i, "t") for i in range(20)), 2.5, None]


def _graph(tmp_path: Any, sum_parallelism: int) -> Any:
    env = LocalEnvironment("rescale", env_dir=str(tmp_path / "env"))
    inp = pipeline.write_input(str(tmp_path / "in"))
    pipeline.build(env, inp, str(tmp_path / "out"), sum_parallelism)
    return env.compile()


def _router_channel(key: Any, n: int) -> int:
    """Where a Hash placement over n channels sends a record with this key."""
    placement = Hash(OutputGroup("sum", "hash", [object()] * n), start=0)
    (channel,) = placement.targets(key, True)
    return channel


def _checkpoint(n: int, extra: dict[str, Any] | None = None) -> LoadedCheckpoint:
    """A checkpoint of the reduce 'sum' over n instances, each holding the keys the router sent it."""
    states: dict[str, dict[str, Any]] = {f"sum_{i}": {"reduce": {}} for i in range(n)}
    for value, key in enumerate(KEYS):
        states[f"sum_{_router_channel(key, n)}"]["reduce"][key] = value
    if extra:
        states["sum_0"].update(extra)
    loaded = LoadedCheckpoint(7, {}, {task: pickle.dumps(s) for task, s in states.items()})
    loaded.states["parse_0"] = b"untouched"
    return loaded


@pytest.mark.parametrize(("old", "new"), [(2, 3), (2, 1), (3, 2), (1, 4)])
def test_keys_land_where_the_router_sends_them_and_the_union_is_exact(tmp_path, old, new):
    before, after = _graph(tmp_path, old), _graph(tmp_path, new)
    differences, rescaled = resume_differences(after, fingerprint(before), fingerprint(after))
    assert differences == []
    assert rescaled == {"sum": (old, new)}

    # Downstream of the reduce, records go by their key's hash over the next operator's own instances,
    # never chained: what its instances received, and hold, does not depend on the reduce's parallelism.
    assert {g.label for n in after.nodes.values() if n.operator == "sum" for g in n.out_groups} == {"hash"}

    restored = _checkpoint(old)
    repartition(restored, after, rescaled)

    assert sorted(t for t in restored.states if t.startswith("sum_")) == [f"sum_{i}" for i in range(new)]
    assert restored.states["parse_0"] == b"untouched"
    union: dict[Any, Any] = {}
    for i in range(new):
        part = pickle.loads(restored.states[f"sum_{i}"])["reduce"]
        assert all(_router_channel(key, new) == i for key in part), f"sum_{i} holds a key routed elsewhere"
        assert not set(union) & set(part)
        union.update(part)
    assert union == {key: value for value, key in enumerate(KEYS)}


class SnapshottingSum(ReduceFunction):
    def execute(self, a: int, b: int) -> int:
        return a + b

    def snapshot_state(self) -> int:
        return 0

    def restore_state(self, state: int) -> None:
        pass


def _with_reduce(tmp_path: Any, function: Any, parallelism: int, map_parallelism: int = 2) -> Any:
    env = LocalEnvironment("rescale", env_dir=str(tmp_path / "env"))
    env.from_batch(range(10), parallelism=1, name="numbers") \
        .map(pipeline.parse, parallelism=map_parallelism, name="text") \
        .keyby(pipeline.key_of).reduce(function, parallelism=parallelism, name="sum").collect(name="out")
    return env.compile()


def test_a_reduce_whose_function_snapshots_its_own_state_is_refused(tmp_path):
    before, after = _with_reduce(tmp_path, SnapshottingSum, 2), _with_reduce(tmp_path, SnapshottingSum, 3)
    differences, rescaled = resume_differences(after, fingerprint(before), fingerprint(after))
    assert rescaled == {}
    assert len(differences) == 1
    assert "operator 'sum' was reduce x2" in differences[0]
    assert "snapshot_state(), one value per instance that cannot be split by key" in differences[0]
    assert "parallelism=2 explicitly" in differences[0]


def test_a_non_keyed_operator_whose_parallelism_changed_is_refused(tmp_path):
    before, after = _with_reduce(tmp_path, pipeline.add, 2), _with_reduce(tmp_path, pipeline.add, 2, 3)
    differences, rescaled = resume_differences(after, fingerprint(before), fingerprint(after))
    assert rescaled == {}
    assert differences == [
        "operator 'text' was map x2 parse, now map x3 parse, but only a keyed reduce's state can be re-partitioned, "
        "and 'text' is a map. Give it its old parallelism=2 explicitly (an operator that sets none follows its "
        "neighbour's, a reduce's too)"]


def test_other_differences_are_still_named_beside_an_accepted_rescale(tmp_path):
    before, after = _graph(tmp_path, 2), _graph(tmp_path, 3)
    saved = dict(fingerprint(before))
    saved["gone"] = "map x1 f"
    differences, rescaled = resume_differences(after, saved, fingerprint(after))
    assert rescaled == {"sum": (2, 3)}
    assert differences == ["operator 'gone' is gone (in the checkpoint: map x1 f)"]


@pytest.mark.parametrize("extra", [{"function": 1}, {"finished": True}])
def test_state_beyond_the_per_key_dict_is_not_split(tmp_path, extra):
    after = _graph(tmp_path, 3)
    restored = _checkpoint(2, extra)
    with pytest.raises(ValueError, match="cannot be split by key"):
        repartition(restored, after, {"sum": (2, 3)})
