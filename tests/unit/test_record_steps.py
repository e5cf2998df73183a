"""The task loop's record steps (runtime/task/steps.py): every way records reach an operator (chunks, one
by one, keyed, whole batches) shares one bookkeeping: the in-count, the failing record, on_error. Driven
in one process with in-memory writers: no processes start here."""

from __future__ import annotations

import pytest

from procflow.backends.inline.executor import InlineJobControl
from procflow.core.functions import BaseFunction, CallableMap, CallableSink, FlatMapFunction
from procflow.core.signals import StopSignal
from procflow.runtime.communication.packet import RecordBatch
from procflow.runtime.communication.router import BaseRouter, OutputGroup
from procflow.runtime.context.task_context import TaskContext
from procflow.runtime.control import DeadLetter
from procflow.runtime.task.base_task import BaseTask
from tests.unit.test_router import BatchingWriter

N, BAD = 40, 17   # records per batch, and the one that fails


class _Control:
    def __init__(self) -> None:
        self.sent: list = []

    def send(self, msg: object) -> None:
        self.sent.append(msg)


def make_task(kind: str, function, *, strategy: str = "round_robin", n_out: int = 1, on_error: str = "fail"):
    writers = [BatchingWriter() for _ in range(n_out)]

    class Task(BaseTask):
        cpu_clock = None

        def _attach(self) -> None:
            self.ctx.attach(job_control=InlineJobControl(1))
            self.ctx.router = BaseRouter([OutputGroup("down", strategy, writers)])

    ctx = TaskContext(name="t_0", operator_name="t", kind=kind, parallel_index=0, parallelism=1, job_id="j",
                      env_dir="/nonexistent", task_slot=0, job_segment="", n_tasks=1,
                      options={"on_error": on_error}, control=_Control())
    task = Task(ctx, function)
    task.open()
    return task, writers


def times_ten_failing_on_bad(x: int) -> int:
    if x == BAD:
        raise ValueError(f"record {x} is bad")
    return x * 10


# (kind, strategy, outputs, keyed): how the records reach the operator.
PATHS = {
    "map in chunks": ("map", "round_robin", 1, False),     # one channel that takes lists: process_many
    "map one by one": ("map", "broadcast", 2, False),      # two channels get each record: process
    "map keyed": ("map", "round_robin", 1, True),          # keys set per record: process
    "sink in chunks": ("sink", "round_robin", 1, False),
    "sink keyed": ("sink", "round_robin", 1, True),
}


def run_batch(path: str, on_error: str):
    kind, strategy, n_out, keyed = PATHS[path]
    seen: list = []   # (record, key the function saw): what a sink "writes"

    def sink(x: int) -> None:
        times_ten_failing_on_bad(x)
        seen.append((x, task.ctx.get_key()))

    function = CallableMap(times_ten_failing_on_bad) if kind == "map" else CallableSink(sink)
    task, writers = make_task(kind, function, strategy=strategy, n_out=n_out, on_error=on_error)
    records = list(range(N))
    keys = [f"k{x % 3}" for x in records] if keyed else None
    error = None
    try:
        task.process_batch([RecordBatch(records, keys, 0)])
    except ValueError as exc:
        error = exc
    outputs = [w.records for w in writers] if kind == "map" else [[x * 10 for x, _ in seen]]
    return task, error, outputs, seen


@pytest.mark.parametrize("path", list(PATHS))
def test_a_failing_record_stops_the_task_counted_and_named_whatever_the_path(path):
    task, error, outputs, _ = run_batch(path, "fail")
    assert error is not None
    # The records before it were processed and sent on; it counts as received; it is the one reported.
    assert task.records_in == BAD + 1 and task.errors == 0
    assert task.current_record(error) == (True, BAD)
    assert all(out == [x * 10 for x in range(BAD)] for out in outputs), outputs


@pytest.mark.parametrize("on_error", ["skip", "dead_letter"])
@pytest.mark.parametrize("path", list(PATHS))
def test_a_failing_record_is_set_aside_and_the_batch_goes_on_whatever_the_path(path, on_error):
    task, error, outputs, seen = run_batch(path, on_error)
    assert error is None
    assert task.records_in == N and task.errors == 1 and task.current_record() == (False, None)
    assert all(out == [x * 10 for x in range(N) if x != BAD] for out in outputs), outputs
    if PATHS[path][3]:   # keyed: each record was processed under its own key
        assert all(key == f"k{x % 3}" for x, key in seen)
    task.finish(StopSignal("src_0"))
    letters = [m for m in task.ctx.control.sent if isinstance(m, DeadLetter)]
    if on_error == "dead_letter":
        assert [e["record"] for m in letters for e in m.entries] == [BAD]
        assert "record 17 is bad" in letters[0].entries[0]["error"]
    else:
        assert letters == []


def test_a_skipping_map_still_takes_its_records_in_chunks():
    """on_error="skip" once sent every record through its own loop, one call each; the chunks that a
    failing map takes (and their lists handed to the channel) now serve a skipping one too."""
    task, error, outputs, _ = run_batch("map in chunks", "skip")
    writer = task.ctx.router.groups[0].writers[0]
    assert error is None and outputs[0] == [x * 10 for x in range(N) if x != BAD]
    assert writer.many_calls >= 2     # lists, before and after the failing record (one by one: none)


def test_a_bulk_operator_failure_names_no_record():
    """The collect takes whole batches (process_all); what fails there is its channel, not a record."""

    class Broken(Exception):
        pass

    task, _ = make_task("collect", CallableSink(print))

    def broken_send_many(records: list) -> None:
        raise Broken("driver channel gone")

    task.operator._to_driver.send_many = broken_send_many
    with pytest.raises(Broken):
        task.process_batch([RecordBatch(list(range(5)), None, 0)])
    assert task.records_in == 0 and task.current_record() == (False, None)


# -- end of input: handle_stop_signal, declared on BaseFunction ----------------------------------------

class CountPerKey(FlatMapFunction):
    """Emits nothing per record; at end of input, one (key, count) per key, then closes."""

    def __init__(self) -> None:
        self.counts: dict = {}
        self.calls: list = []

    def execute(self, record):
        key = self.ctx.get_key()
        self.counts[key] = self.counts.get(key, 0) + 1
        return None

    def handle_stop_signal(self, signal):
        self.calls.append(("handle_stop_signal", signal.reason))
        return sorted(self.counts.items())

    def close(self):
        self.calls.append(("close",))


def test_every_function_has_handle_stop_signal_and_by_default_it_emits_nothing():
    assert BaseFunction().handle_stop_signal(StopSignal("src_0")) is None
    task, writers = make_task("map", CallableMap(times_ten_failing_on_bad))
    task.process_batch([RecordBatch([1, 2], None, 0)])
    task.finish(StopSignal("src_0"))
    assert writers[0].records == [10, 20]


def test_handle_stop_signal_runs_once_before_close_and_its_records_leave_unkeyed():
    function = CountPerKey()
    task, writers = make_task("flatmap", function)
    task.process_batch([RecordBatch(list(range(7)), [x % 2 for x in range(7)], 0)])
    task.finish(StopSignal("src_0", "stopped by request"))
    assert function.calls == [("handle_stop_signal", "stopped by request"), ("close",)]
    assert [(p.payload, p.keyed) for p in writers[0].packets] == [((0, 4), False), ((1, 3), False)]


def test_a_sink_does_not_replace_its_own_process_and_the_task_still_calls_the_function_itself():
    function = CallableSink(print)
    task, _ = make_task("sink", function)
    assert "process" not in vars(task.operator)       # once `self.process = self.function.execute`
    assert task.operator.per_record() == function.execute
