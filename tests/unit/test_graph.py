"""Graph compilation and validation: pure data, no processes."""

from __future__ import annotations

import pytest

from procflow import CoMapFunction, LocalEnvironment, MapFunction


class Twice(MapFunction):
    def execute(self, record):
        return record * 2


class OnlyMap0(CoMapFunction):
    def map0(self, record):
        return record


class BothMaps(CoMapFunction):
    def map0(self, record):
        return record

    def map1(self, record):
        return record


@pytest.fixture
def env(env_dir):
    return LocalEnvironment("graph", env_dir=env_dir)


def test_one_node_per_instance_and_one_edge_per_instance_pair(env):
    src = env.from_batch(range(10), parallelism=2)
    mapped = src.map(Twice, parallelism=3)
    mapped.keyby(lambda x: x % 2).map(lambda x: x, parallelism=4, name="last")
    graph = env.compile()
    assert sorted(graph.nodes) == sorted(
        ["batch_0", "batch_1", "map_0", "map_1", "map_2", "last_0", "last_1", "last_2", "last_3"])
    assert len(graph.edges) == 2 * 3 + 3 * 4
    for i in range(3):
        node = graph.nodes[f"map_{i}"]
        assert node.num_inputs == 2
        assert node.parallelism == 3 and node.index == i
        assert {e.src for e in node.in_edges} == {"batch_0", "batch_1"}
        assert [e.slot for e in node.in_edges] == [0, 1]
    for i in range(4):
        assert graph.nodes[f"last_{i}"].num_inputs == 3
    assert [n.name for n in graph.sources()] == ["batch_0", "batch_1"]
    # every source instance has one OutGroup towards `map`, with one edge per map instance, in order
    group, = graph.nodes["batch_1"].out_groups
    assert group.target == "map" and [e.dst for e in group.edges] == ["map_0", "map_1", "map_2"]
    # unkeyed fan-out is dynamic by default (issue 19), and not a placement the user asked for
    assert group.partitioning.strategy == "balance" and not group.partitioning.explicit
    hashed, = graph.nodes["map_2"].out_groups
    assert hashed.partitioning.strategy == "hash"


def test_connected_inputs_count_every_channel_and_keep_their_input_index(env):
    a = env.from_batch([1, 2], parallelism=2)
    b = env.from_batch([3], parallelism=3)
    a.connect(b).comap(BothMaps, parallelism=2)
    graph = env.compile()
    node = graph.nodes["comap_0"]
    assert node.num_inputs == 5
    assert sorted(e.input_index for e in node.in_edges) == [0, 0, 1, 1, 1]
    assert [e.slot for e in node.in_edges] == list(range(5))


def test_sink_fans_out_as_a_second_group(env):
    s = env.from_batch([1])
    assert s.sink(lambda r: None) is s
    s.map(Twice).collect()
    graph = env.compile()
    assert [g.target for g in graph.nodes["batch_0"].out_groups] == ["sink", "map"]


def test_a_key_stays_with_the_stream_until_the_next_keyby(env):
    keyed = env.from_batch(range(4)).keyby(lambda x: x % 2)
    assert keyed.partitioning.strategy == "hash" and keyed.partitioning.keyed
    after = keyed.map(Twice, parallelism=2)
    assert after.partitioning.strategy == "hash" and after.partitioning.key_selector is None
    rekeyed = after.keyby(lambda x: x, strategy="round_robin")
    assert not rekeyed.partitioning.keyed


def test_an_unkeyed_stream_is_balanced_unless_round_robin_is_asked_for(env):
    src = env.from_batch(range(4))
    assert (src.partitioning.strategy, src.partitioning.explicit) == ("balance", False)
    assert src.map(Twice).partitioning.strategy == "balance"
    even = src.round_robin()
    assert (even.partitioning.strategy, even.partitioning.explicit) == ("round_robin", True)
    assert (src.balance().partitioning.strategy, src.balance().partitioning.explicit) == ("balance", True)
    assert even.balance().partitioning.strategy == "balance"   # the last placement asked for wins


@pytest.mark.parametrize("method", ["balance", "round_robin"])
@pytest.mark.parametrize("strategy", ["hash", "broadcast", "round_robin"])
def test_placement_of_an_unkeyed_stream_is_refused_after_keyby(env, method, strategy):
    keyed = env.from_batch(range(4)).keyby(lambda x: x, strategy=strategy)
    with pytest.raises(ValueError, match=rf"{method}\(\) places the records of an unkeyed stream.*before keyby"):
        getattr(keyed, method)()


def test_empty_pipeline_is_rejected(env):
    with pytest.raises(ValueError, match="empty"):
        env.compile()


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-1, ValueError), ("2", TypeError), (2.0, TypeError),
                                      (True, TypeError), (None, TypeError)])
def test_bad_parallelism_is_rejected_at_the_operator_call(env, bad, exc):
    src = env.from_batch([1])
    with pytest.raises(exc, match="parallelism"):
        src.map(Twice, parallelism=bad)
    with pytest.raises(exc, match="parallelism"):
        env.from_batch([1], parallelism=bad)


def test_non_callable_function_is_rejected(env):
    src = env.from_batch([1])
    with pytest.raises(TypeError, match="callable"):
        src.map(42)
    with pytest.raises(TypeError, match="MapFunction"):
        src.map(OnlyMap0)   # a class of the wrong kind
    with pytest.raises(TypeError):
        src.filter("not a function")
    with pytest.raises(TypeError):
        src.keyby(3.5)
    with pytest.raises(TypeError, match="iterable"):
        env.from_batch(7)


def test_unknown_keyby_strategy_is_rejected(env):
    with pytest.raises(ValueError, match="strategy"):
        env.from_batch([1]).keyby(lambda x: x, strategy="random")


def test_join_needs_exactly_two_inputs(env):
    a, b, c = (env.from_batch([i]) for i in range(3))
    with pytest.raises(ValueError):
        a.connect()                       # a join of one input cannot even be built
    a.connect(b, c).keyby(lambda x: x).join(lambda p, k, t: [p])
    with pytest.raises(ValueError, match="two inputs"):
        env.compile()


def test_join_of_a_single_stream_is_rejected(env):
    from procflow.api.datastream import ConnectedStreams

    a = env.from_batch([1]).keyby(lambda x: x)
    ConnectedStreams(env, [a]).join(lambda p, k, t: [p])
    with pytest.raises(ValueError, match="two inputs"):
        env.compile()


def test_join_needs_keyed_inputs(env):
    a, b = env.from_batch([1]), env.from_batch([2])
    a.connect(b).join(lambda p, k, t: [p])
    with pytest.raises(ValueError, match="keyed"):
        env.compile()


def test_join_with_one_input_keyed_is_rejected(env):
    a, b = env.from_batch([1]), env.from_batch([2])
    a.keyby(lambda x: x).connect(b).join(lambda p, k, t: [p])
    with pytest.raises(ValueError, match="keyed"):
        env.compile()


def test_comap_missing_map1_is_rejected(env):
    a, b = env.from_batch([1]), env.from_batch([2])
    a.connect(b).comap(OnlyMap0)
    with pytest.raises(ValueError, match="map1"):
        env.compile()


def test_comap_needs_a_comap_function(env):
    class NotCoMap:
        def map0(self, r):
            return r

        def map1(self, r):
            return r

    a, b = env.from_batch([1]), env.from_batch([2])
    with pytest.raises(TypeError):
        a.connect(b).comap(NotCoMap)


def test_operator_names_are_unique(env):
    src = env.from_batch([1])
    src.map(Twice, name="m")
    with pytest.raises(ValueError, match="already exists"):
        src.map(Twice, name="m")
    assert src.map(Twice).name == "map"
    assert src.map(Twice).name == "map2"


def test_constructor_arguments_for_plain_callables_are_rejected(env):
    with pytest.raises(TypeError, match="plain callable"):
        env.from_batch([1]).map(lambda x: x, 5)


def test_bad_config_and_start_method_are_rejected(env_dir):
    with pytest.raises(ValueError, match="unknown config"):
        LocalEnvironment("x", config={"ring_size": 1}, env_dir=env_dir)
    with pytest.raises(ValueError, match="queue"):
        LocalEnvironment("x", config={"queue": "tcp"}, env_dir=env_dir)
    with pytest.raises(ValueError, match="start_method"):
        LocalEnvironment("x", start_method="thread", env_dir=env_dir)


def test_compile_starts_no_process(env):
    from procflow.testing import child_pids

    before = child_pids()
    env.from_batch(range(3)).map(Twice, parallelism=4).collect()
    env.compile()
    assert child_pids() == before


# -- chains (issue 19) ---------------------------------------------------------------------------------

from procflow.core.splits import Split, SplitSource  # noqa: E402


class Indexes(SplitSource):
    def plan_splits(self, parallelism):
        return [Split(i, (i, i + 1), 1) for i in range(4)]

    def read_split(self, split):
        return range(*split.descriptor)


def test_forward_edges_fuse_into_chains_of_one_edge_per_instance(env):
    (env.from_batch(Indexes).map(Twice, parallelism=3).filter(lambda x: x > 0, parallelism=3)
     .keyby(lambda x: x).reduce(lambda a, b: a + b, parallelism=3).map(lambda kv: kv, parallelism=3, name="show"))
    graph = env.compile()
    for i in range(3):
        assert graph.chain(f"filter_{i}") == (f"batch_{i}", f"map_{i}", f"filter_{i}")
        assert graph.chain(f"reduce_{i}") == (f"reduce_{i}",)   # keyed: a shuffle, never chained...
        assert graph.chain(f"show_{i}") == (f"show_{i}",)
        group, = graph.nodes[f"map_{i}"].out_groups
        assert group.chained and [e.dst for e in group.edges] == [f"filter_{i}"]   # instance i to i only
        assert graph.nodes[f"filter_{i}"].num_inputs == 1
    # ...and a keyed stream stays keyed after the reduce, so reduce -> show is not forward either
    assert [h.name for h in graph.heads()] == [f"{op}_{i}" for op in ("batch", "reduce", "show") for i in range(3)]
    assert len(graph.channel_edges) == 9 + 9


@pytest.mark.parametrize("build, chained", [
    (lambda env: env.from_batch([1]).map(Twice).map(Twice, name="m2"), True),
    (lambda env: env.from_batch([1]).map(Twice, parallelism=2).map(Twice, name="m2"), False),   # 2 -> 1
    (lambda env: env.from_batch([1]).map(Twice).balance().map(Twice, name="m2"), False),        # placed
    (lambda env: env.from_batch([1]).map(Twice).keyby(lambda x: x).map(Twice, name="m2"), False),
    (lambda env: env.from_batch([1]).map(Twice).keyby(lambda x: x, "broadcast").map(Twice, name="m2"), False),
    (lambda env: env.from_batch([1]).map(Twice).map(Twice, name="m2").start_new_chain(), False),
    (lambda env: env.from_batch([1]).map(Twice).disable_chaining().map(Twice, name="m2"), False),
    (lambda env: env.from_batch([1]).map(Twice).sink(print).map(Twice, name="m2"), False),       # fan-out
])
def test_what_makes_an_edge_forward(env, build, chained):
    build(env)
    graph = env.compile()
    assert ("m2_0" in graph.chain("map_0")) is chained


def test_a_two_input_operator_is_never_chained(env):
    a = env.from_batch([1]).map(Twice)
    b = env.from_batch([2]).map(Twice, name="other")
    a.connect(b).comap(BothMaps)
    graph = env.compile()
    assert graph.head_of("comap_0") == "comap_0" and graph.nodes["comap_0"].num_inputs == 2


def test_a_one_instance_collect_stays_with_the_driver_and_a_wider_one_chains(env):
    env.from_batch([1]).map(Twice).collect()
    env.from_batch([1], name="wide").map(Twice, parallelism=2, name="w").collect(parallelism=2)
    graph = env.compile()
    assert graph.chain("batch_0") == ("batch_0", "map_0")
    assert graph.chain("wide_1") == ("wide_1", "w_1", "collect2_1")


@pytest.mark.parametrize("source, given, config, follows", [
    ("splits", False, {}, True),
    ("splits", True, {}, False),                     # the user set the source's parallelism
    ("splits", False, {"chaining": False}, False),
    ("list", False, {}, True),                       # from_batch(list) is a SplitSource too
    ("generator", False, {}, False),                 # one reader: it cannot be split
])
def test_a_splittable_source_follows_the_parallelism_of_the_operator_it_feeds(env_dir, source, given, config,
                                                                              follows):
    env = LocalEnvironment("graph", config=config, env_dir=env_dir)
    options = {"parallelism": 1} if given else {}
    stream = {"splits": lambda: env.from_batch(Indexes, **options), "list": lambda: env.from_batch([1, 2, 3]),
              "generator": lambda: env.from_batch(x for x in range(3))}[source]()
    stream.map(Twice, parallelism=4).collect()
    graph = env.compile()
    sources = [n.name for n in graph.sources()]
    assert len(sources) == (4 if follows else 1)
    assert all(graph.chain(s) == (s, f"map_{s[-1]}") for s in sources) is follows


def test_set_parallelism_counts_as_given(env):
    env.from_batch(Indexes).map(Twice, parallelism=3)
    env.set_parallelism("batch", 1)
    assert [n.name for n in env.compile().sources()] == ["batch_0"]


def test_a_source_does_not_follow_across_a_keyed_or_placed_edge(env):
    env.from_batch(Indexes).keyby(lambda x: x).map(Twice, parallelism=3)
    env.from_batch(Indexes, name="b2").balance().map(Twice, parallelism=3, name="m2")
    graph = env.compile()
    assert [n.name for n in graph.sources()] == ["batch_0", "b2_0"]


def test_text_rendering_lists_the_chains(env):
    from procflow.graph.render import render_graph

    env.from_batch(Indexes).map(Twice, parallelism=2).collect()
    text = render_graph(env.compile(), "text")
    assert text.startswith("3 operators, 3 tasks, 2 channels")
    assert "chains (one task each, records passed by call):\n  batch_0 -> map_0\n  batch_1 -> map_1\n" in text
    assert "from batch[chained]" in text and "map_1                    inputs=1   -> collect[balance]" in text
