"""Operator kinds are one enum (core/enums.py) from the API through the graph to the task's operator."""

from __future__ import annotations

import pickle

import pytest

from procflow import LocalEnvironment
from procflow.core import functions as fx
from procflow.core.enums import OperatorKind
from procflow.graph.transformation import FunctionSpec, Transformation
from procflow.runtime.context.task_context import TaskContext
from procflow.runtime.task.base_task import OPERATORS


def test_every_kind_has_an_operator_and_every_operator_a_kind():
    assert set(OPERATORS) == set(OperatorKind)


def test_a_misspelt_kind_is_refused_when_the_graph_is_built():
    """Once accepted, it failed as a KeyError inside the task process when the job ran."""
    spec = FunctionSpec.of(fx.MapFunction, lambda x: x, where="test")
    with pytest.raises(ValueError, match="'mapp' is not a valid OperatorKind"):
        Transformation("mapp", "mapp", spec, 1)


def test_the_graph_carries_kinds_and_names_stay_plain_strings(env_dir):
    env = LocalEnvironment("kinds", env_dir=env_dir)
    stream = env.from_batch(range(3)).map(lambda x: x).map(lambda x: x)
    stream.keyby(lambda x: x).reduce(lambda a, b: a + b).collect()
    graph = env.compile()
    kinds = {name: node.kind for name, node in graph.nodes.items()}
    assert kinds == {"batch_0": OperatorKind.BATCH, "map_0": OperatorKind.MAP, "map2_0": OperatorKind.MAP,
                     "reduce_0": OperatorKind.REDUCE, "collect_0": OperatorKind.COLLECT}
    assert all(type(node.kind) is OperatorKind for node in graph.nodes.values())
    # Named after their kind, operators get the plain string: a repr in an error reads 'map2'.
    assert all(type(name) is str for name in env.operator_names)
    assert f"{graph.nodes['map2_0'].kind} operator {env.operator_names[2]!r}" == "map operator 'map2'"


def test_a_task_context_takes_the_kind_as_its_string_and_pickles_it_as_the_member():
    ctx = TaskContext(name="t_0", operator_name="t", kind="flatmap", parallel_index=0, parallelism=1,
                      job_id="j", env_dir="/nonexistent", task_slot=0, job_segment="", n_tasks=1)
    assert ctx.kind is OperatorKind.FLATMAP
    assert pickle.loads(pickle.dumps(ctx)).kind is OperatorKind.FLATMAP
    assert OperatorKind.BATCH.is_source and OperatorKind.SOURCE.is_source and not OperatorKind.MAP.is_source
