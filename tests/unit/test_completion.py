"""Completion: source records the whole pipeline has finished with, from per-task counter rows."""

from __future__ import annotations

from procflow import CoMapFunction, LocalEnvironment
from procflow.runtime.completion import Completion, Stage
from procflow.runtime.progress import known_total


def rows(**ops: tuple[int, int]) -> dict[str, dict]:
    """One task row per operator: name=(records_in, records_out)."""
    return {f"{op}_0": {"operator": op, "records_in": i, "records_out": o} for op, (i, o) in ops.items()}


def chain(*ops: str) -> Completion:
    return Completion([Stage(ops[0], ())] + [Stage(op, ((up, 1),)) for up, op in zip(ops, ops[1:])])


def test_a_one_to_one_chain_is_done_as_far_as_its_slowest_point():
    c = chain("src", "fast", "slow", "sink")
    # The source filled the rings at once; only what the slow map and then the sink took in is done.
    assert c.records(rows(src=(0, 1000), fast=(1000, 1000), slow=(300, 300), sink=(290, 0))) == 290
    assert c.records(rows(src=(0, 1000), fast=(400, 400), slow=(400, 400), sink=(400, 0))) == 400
    assert c.records(rows(src=(0, 0), fast=(0, 0), slow=(0, 0), sink=(0, 0))) == 0


def test_flatmap_and_filter_ratios_scale_what_each_operator_should_receive():
    c = chain("src", "flatmap", "filter", "sink")
    # 100 emitted; flatmap makes 3 per record (so 300 due at the filter), the filter keeps 1 in 3.
    done = c.records(rows(src=(0, 100), flatmap=(100, 300), filter=(150, 50), sink=(50, 0)))
    assert done == 50                       # half the filter's due input went through, and all it kept
    done = c.records(rows(src=(0, 100), flatmap=(100, 300), filter=(300, 100), sink=(20, 0)))
    assert done == 20


def test_broadcast_copies_and_an_operator_that_emits_only_at_the_end():
    c = Completion([Stage("src", ()), Stage("bcast", (("src", 2),)), Stage("reduce", (("bcast", 1),)),
                    Stage("sink", (("reduce", 1),))])
    metrics = rows(src=(0, 100), reduce=(100, 0), sink=(0, 0))
    metrics["bcast_0"] = {"operator": "bcast", "records_in": 100, "records_out": 100}
    metrics["bcast_1"] = {"operator": "bcast", "records_in": 60, "records_out": 60}
    # 200 copies due at bcast, 160 taken in; the reduce emits nothing yet, so the sink is not judged.
    assert c.records(metrics) == 50         # the reduce has 100 of the 200 records due to it
    assert c.records(rows(src=(0, 100), bcast=(200, 200), reduce=(200, 5), sink=(5, 0))) == 100


def test_completion_and_total_of_a_compiled_pipeline():
    with LocalEnvironment("completion") as env:
        env.from_batch(range(10)).flatmap(lambda x: [x, x]).filter(lambda x: x % 2).collect()
        graph = env.compile()
        assert known_total(graph) == 10
        stages = Completion.of(graph).stages
        assert [(s.operator, s.feeds) for s in stages] == [
            ("batch", ()), ("flatmap", (("batch", 1),)), ("filter", (("flatmap", 1),)),
            ("collect", (("filter", 1),))]
    with LocalEnvironment("unsized") as env:
        sized = env.from_batch(range(3))
        sized.connect(env.from_batch(x for x in range(3))).comap(Both).collect()
        assert known_total(env.compile()) is None   # one source of unknown size: no honest total


class Both(CoMapFunction):
    def map0(self, x):
        return x

    def map1(self, x):
        return x
