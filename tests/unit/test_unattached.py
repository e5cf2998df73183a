"""Code that runs only once a task's channels are attached says so when it runs before: a clear error
naming the task, instead of an AttributeError on None at the first record (or no error at all, for an
operator that routes nothing when it opens)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from procflow.core.functions import CallableMap, CallableSink
from procflow.runtime.context.task_context import TaskContext
from procflow.runtime.operators.transforms import MapOperator, SinkOperator


def unattached_context(kind: str) -> TaskContext:
    return TaskContext(name=f"{kind}_0", operator_name=kind, kind=kind, parallel_index=0, parallelism=1,
                       job_id="j", env_dir="/nonexistent", task_slot=0, job_segment="", n_tasks=1)


@pytest.mark.parametrize("kind, operator_class, function", [
    ("map", MapOperator, CallableMap(abs)),     # asks the router whether it takes lists at open()
    ("sink", SinkOperator, CallableSink(abs)),  # used to open without complaint and fail at a record
])
def test_an_operator_opened_before_attach_names_its_task_and_attach(kind, operator_class, function):
    operator = operator_class(function, unattached_context(kind))
    with pytest.raises(RuntimeError, match=rf"task {kind}_0: its channels are not attached; TaskContext\.attach"):
        operator.open()


def test_records_pushed_to_a_ray_task_without_inputs_are_refused_naming_the_task():
    actor = pytest.importorskip("procflow.backends.ray.actor")
    task = actor.TaskActor(SimpleNamespace(name="source_0", n_tasks=1, inbox=None), None)
    with pytest.raises(RuntimeError, match=r"task source_0 has no inputs, yet a producer pushed records to it"):
        task.push(0, 0, [])
