"""BaseTask's loop split into steps (open / process_batch / finish), driven in one process over the
inline channel kind: no processes start here."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from procflow.backends.inline.channel import InlineInbox
from procflow.backends.inline.executor import InlineJobControl
from procflow.core.functions import CallableMap, FlatMapFunction
from procflow.core.signals import StopSignal
from procflow.runtime.communication import codec
from procflow.runtime.communication.packet import ChannelEnd, Packet, packets
from procflow.runtime.context.task_context import OutputSpec, TaskContext
from procflow.runtime.task import base_task
from procflow.runtime.task.base_task import PUBLISH_INTERVAL, BaseTask


class _Control:
    def __init__(self):
        self.sent = []

    def send(self, msg):
        self.sent.append(msg)


class _Task(BaseTask):
    def _attach(self):
        self.ctx.attach(job_control=InlineJobControl(1))


def make_task(function, n_inputs=2, n_outputs=2, options=None, kind="flatmap", strategy="broadcast"):
    inbox = InlineInbox("in", tuple(range(n_inputs)))
    outs = [InlineInbox(f"out{i}", (0,)) for i in range(n_outputs)]
    ctx = TaskContext(name="t_0", operator_name="t", kind=kind, parallel_index=0, parallelism=1,
                      job_id="j", env_dir="/nonexistent", task_slot=0, job_segment="", n_tasks=1, inbox=inbox,
                      outputs=[OutputSpec("down", strategy, [o.edge(0) for o in outs])],
                      options=options or {}, control=_Control())
    writers = [inbox.edge(slot).open_writer() for slot in range(n_inputs)]
    return _Task(ctx, function), writers, outs


def send(writer, record):
    writer.send_record(codec._packb(record), None)


class Twice(FlatMapFunction):
    def execute(self, record):
        return [record, record]

    def handle_stop_signal(self, signal):
        return [("end", signal.reason)]


def test_steps_count_stop_signals_per_input_channel_and_forward_one_per_output():
    task, (w0, w1), outs = make_task(Twice())
    task.open()
    assert (task.remaining, task.done, task.processed_count, task.ctx.task) == (2, False, 0, task)
    send(w0, 1)
    w0.send_control(StopSignal("src_0"))
    send(w1, 2)
    w1.flush()
    task.process_batch(task.ctx.gate.read(0))
    assert (task.remaining, task.done, task.processed_count, task.ctx.processed_count) == (1, False, 2, 2)
    assert task.ctx.current_keyed is False and task.ctx.get_key() is None
    w1.send_control(StopSignal("src_1", "stopped by request"))
    task.process_batch(task.ctx.gate.read(0))
    assert task.done and task.last_signal == StopSignal("src_1", "stopped by request")
    task.finish(task.last_signal)
    for out in outs:
        items = list(packets(out.open_gate().read(0)))
        assert [p.payload for p in items[:-1]] == [1, 1, 2, 2, ("end", "stopped by request")]
        assert all(type(p) is Packet for p in items[:-1])
        assert items[-1] == ChannelEnd(0, StopSignal("src_1", "stopped by request"))   # exactly one, last
    assert task.stage == "finish"
    assert task.metrics()["processed_count"] == 2 and task.metrics()["records_in"] == 2


def test_process_batch_applies_on_error_skip():
    def half(x):
        return 10 // x

    task, (w0,), outs = make_task(CallableMap(half), n_inputs=1, n_outputs=1, options={"on_error": "skip"},
                                  kind="map")
    task.open()
    for x in (1, 0, 5):
        send(w0, x)
    w0.send_control(StopSignal("s"))
    task.process_batch(task.ctx.gate.read(0))
    assert task.done and task.errors == 1 and task.processed_count == 3
    task.finish(task.last_signal)
    assert [p.payload for p in list(packets(outs[0].open_gate().read(0)))[:-1]] == [10, 2]


def test_a_task_without_inputs_is_done_at_once():
    task, _, _ = make_task(Twice(), n_inputs=0, n_outputs=1)
    task.ctx.inbox = None
    task.open()
    assert task.done and task.last_signal.reason == "no inputs"


class FakeClock:
    """Stands in for time.perf_counter in base_task: the user function moves it on, so a record "takes"
    as long as the test says without the test sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# round_robin to one channel: the chunked path (process_many); broadcast: record by record; skip: the
# guarded loop. Each must publish its counters while it works through a long batch (issue 22.10).
@pytest.mark.parametrize("strategy, options", [("round_robin", {}), ("broadcast", {}),
                                               ("round_robin", {"on_error": "skip"})],
                         ids=["chunked", "per-record", "guarded"])
def test_counters_are_published_in_the_middle_of_a_long_batch(monkeypatch, strategy, options):
    clock = FakeClock()
    monkeypatch.setattr(base_task, "time", SimpleNamespace(perf_counter=clock, time=time.time))
    record_s = 0.01
    seen = []    # records_in as the shared counters showed it when each record started

    def slow(x):
        seen.append(task.ctx.job_control.snapshot()[0]["records_in"])
        clock.now += record_s
        return x

    task, (w0,), _ = make_task(CallableMap(slow), n_inputs=1, n_outputs=1, options=options, kind="map",
                               strategy=strategy)
    task.open()
    task._start_clock()
    n = 200
    for x in range(n):
        send(w0, x)
    w0.flush()
    items = task.ctx.gate.read(0)
    assert sum(len(b.records) for b in items) == n     # one batch: two seconds of work
    task.process_batch(items)
    lag = [i - published for i, published in enumerate(seen)]
    # At most PUBLISH_INTERVAL (plus the record in hand) behind, however long the batch.
    assert max(lag) <= PUBLISH_INTERVAL / record_s + 1, lag
    snap = task.ctx.job_control.snapshot()[0]
    assert snap["busy_s"] >= (n - PUBLISH_INTERVAL / record_s - 1) * record_s * 0.99
