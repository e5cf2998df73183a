"""BaseTask: the loop every task runs, whatever the backend.

    attach channels ─► operator.open() ─► Ready ─► (sources: wait for start) ─► loop ─► finish ─► Stopped

Consumer loop: read a batch from the input gate (blocking only when nothing is there, after flushing our
own outputs so nothing waits on us), hand its records to the operator by the record step chosen at open
(steps.py: per record, in chunks, or whole), flush outputs at least every `flush_interval`, publish the
counters after each batch and at least every PUBLISH_INTERVAL. The task ends after exactly one
StopSignal from each input channel: no timers, no names. Then the operator finishes
(handle_stop_signal, close), outputs flush, and one StopSignal goes out on every output channel.

Checkpoints (runtime/checkpoint/, only where the job has a checkpoint folder): a source emits Barrier(n)
at the tick after the driver asked for checkpoint n; a consumer holds back each input whose Barrier(n)
arrived (the gate reads nothing more from it) until every input still open has delivered it, then
`take_barrier`: the operator's snapshot goes into this instance's state file (on Ray: into the ack), the
barrier goes out on every output (a chain's members take it in turn, by call) and a CheckpointAck goes to
the driver.

A task may run a chain (chain.py): the head is this loop; each further operator is a member BaseTask
without a gate, fed by call through its upstream's router (`take_many` / `take_one`, `end_of_link`).
"""

from __future__ import annotations

import os
import pickle
import time
import traceback
from collections.abc import Callable
from typing import Any

from procflow.core.enums import OperatorKind
from procflow.core.signals import StopSignal
from procflow.runtime.checkpoint.barrier import FINAL, Barrier, CheckpointAck
from procflow.runtime.chunking import ChunkSize
from procflow.runtime.communication.codec import EncodeError
from procflow.runtime.communication.packet import RecordBatch
from procflow.runtime.communication.queue_descriptor.driver import SEND_INTERVAL
from procflow.runtime.communication.router import BaseRouter
from procflow.runtime.communication.slabs import owned
from procflow.runtime.context.task_context import TaskContext, attached_router
from procflow.runtime.control import DeadLetter, Ready, Stopped, short_repr
from procflow.runtime.job_control import FIELDS
from procflow.runtime.operators.base import Operator
from procflow.runtime.operators.multi_input import CoMapOperator, JoinOperator
from procflow.runtime.operators.source import NO_RECORD, SourceOperator
from procflow.runtime.operators.transforms import (
    CollectOperator,
    FilterOperator,
    FlatMapOperator,
    MapOperator,
    ReduceOperator,
    SinkOperator,
)
from procflow.runtime.task.chain import ChainState, LinkWriter, bind_links
from procflow.runtime.task.steps import NO_INDEX, RecordStep, choose_steps

OPERATORS: dict[OperatorKind, type[Operator]] = {
    OperatorKind.BATCH: SourceOperator, OperatorKind.SOURCE: SourceOperator, OperatorKind.MAP: MapOperator,
    OperatorKind.FILTER: FilterOperator, OperatorKind.FLATMAP: FlatMapOperator, OperatorKind.SINK: SinkOperator,
    OperatorKind.COLLECT: CollectOperator, OperatorKind.REDUCE: ReduceOperator, OperatorKind.COMAP: CoMapOperator,
    OperatorKind.JOIN: JoinOperator,
}
_IN, _OUT, _BUSY, _WAIT, _BLOCKED, _ERRORS, _STARTED, _FINISHED, _FILL, _CPU = range(FIELDS.index("cpu_s") + 1)

# Longest a working task goes without publishing its counters. Publishing once per input batch left a
# slow operator's row at 0 in / 0 out / 0 busy for seconds (a 1 ms map reads thousands of records in one
# batch): the dashboard, the summary after Ctrl-C and a killed task's report all read these rows
# (issues 22.10, 23.2). The check rides on the flush, which the loop already times, so records pay
# nothing for it.
PUBLISH_INTERVAL = 0.05


class BaseTask:
    # The task's CPU seconds so far (cpu_s): its thread's, since a Ray actor runs it beside threads of
    # its own. A forked task's thread was born with its process, so that is the process's CPU too.
    cpu_clock: Callable[[], float] | None = time.thread_time

    def __init__(self, ctx: TaskContext, function: Any) -> None:
        self.ctx = ctx
        self.operator = OPERATORS[ctx.kind](function, ctx)
        self.records_in = 0
        self.errors = 0
        self.wait_s = 0.0
        self._started = 0.0
        self._interval = float(ctx.config["flush_interval"])
        self._last_flush = 0.0
        self._last_publish = 0.0
        self._dead_letters: list = []
        self.stage = "starting"
        self.remaining = 0
        self.last_signal = StopSignal(ctx.name)
        self._on_error = ctx.options.get("on_error", "fail")
        self._sets_aside = self._on_error != "fail"   # skip / dead_letter: a failing record, not the task
        self._failed: tuple = ()       # (record,) when a record's processing raised
        self._chunk = ChunkSize(self._interval)   # records per `process_many` call
        # How records reach the operator (steps.py): chosen at open(), once the operator knows its flags.
        self._unkeyed_step: RecordStep
        self._keyed_step: RecordStep
        # The context's router, from attach() on: the loop's flushes, counters and end read it.
        self._router: BaseRouter
        # Chains (chain.py): the members after this head, the state they share, and the links between.
        self.members: list[BaseTask] = []
        self.chain: ChainState | None = None
        self.out_links: list[LinkWriter] = []
        self.in_link: LinkWriter | None = None
        self._linked_inputs = 0   # 1 for a member: its upstream's router is its one input
        # Checkpoints: on when the job has a checkpoint folder. A source remembers the last barrier it
        # emitted; a consumer, the barrier being aligned and the input slots that delivered it.
        self._checkpoints = ctx.checkpoint_dir is not None
        self._last_barrier = 0
        self._aligning: Barrier | None = None
        self._aligned_slots: set[int] = set()

    def chain_with(self, members: list[BaseTask]) -> None:
        """Run `members` (in record order) after this task's operator, in this task (before open())."""
        if not members:
            return
        state = ChainState(self)
        self.members = list(members)
        for task in self.chain_tasks():
            task.chain = state
        for member in members:
            member._linked_inputs = 1

    def chain_tasks(self) -> list[BaseTask]:
        """This task and the members it runs, in chain order."""
        return [self, *self.members]

    def failing_task(self) -> BaseTask:
        """The task of the chain whose operator raised the exception being handled (self if alone)."""
        state = self.chain
        return state.failed if state is not None and state.failed is not None else self

    # -- lifecycle ---------------------------------------------------------------------------------

    def run(self) -> None:
        ctx = self.ctx
        self.open()
        for task in self.chain_tasks():
            task.ctx.control.send(Ready(task.ctx.name, os.getpid()))
            task.ctx.logger.info("ready (pid %d, %d input channel(s)%s)", os.getpid(), task.num_inputs,
                                 f", in the task of {ctx.name}" if task is not self else "")
        self.begin()
        if isinstance(self.operator, SourceOperator):
            ctx.job_control.wait_for_start()
            self._started = self._last_flush = time.perf_counter()
            reason = self.operator.run(self._tick, self._waited)
            signal = StopSignal(ctx.name, reason)
        else:
            signal = self._consume()
        self.finish(signal)
        ctx.control.send(Stopped(ctx.name, self.metrics(), self.operator.end_commit))
        ctx.logger.info("stopped: %d in, %d out (%s)", self.records_in, self._router.records_out, signal.reason)

    # -- the steps of the loop, also driven one at a time by the inline executor --------------------

    def open(self) -> None:
        """Attach the channels and open the function (its `open()` hook)."""
        ctx = self.ctx
        self._attach()
        self._router = attached_router(ctx)
        ctx.task = self
        self._counters = ctx.job_control.counters[ctx.task_slot]
        self.remaining = self.num_inputs
        self.last_signal = StopSignal(ctx.name, "no inputs") if self.remaining == 0 else StopSignal(ctx.name)
        self.stage = "open"
        self.operator.open()
        if ctx.restore is not None:   # resumed: this instance's own snapshot, from our private folder
            self.operator.restore(pickle.loads(ctx.restore))
        self._unkeyed_step, self._keyed_step = choose_steps(self.operator, ctx, self._chunk, time.perf_counter)
        if self.members:
            chain = self.chain
            assert chain is not None
            for member in self.members:   # open() in chain order, before any record moves
                try:
                    member.open()
                except BaseException:
                    chain.failed = member   # the report names the operator whose open() raised
                    raise
            bind_links(self.chain_tasks(), chain)
        if self._checkpoints:
            # A task may end before the job does (a shorter input): its last state stands in for its acks
            # of every later checkpoint (barrier.py).
            self.operator.before_close = self._final_snapshot

    def begin(self) -> None:
        """Start the clocks of every task of the chain: the loop is about to run."""
        for task in self.chain_tasks():
            task._start_clock()
            task.stage = "run"

    def _attach(self) -> None:
        self.ctx.attach()

    def _start_clock(self) -> None:
        self._started = time.perf_counter()
        self._counters[_STARTED] = time.time()
        self._last_flush = self._started

    # -- a member of a chain: fed by its upstream's router, by call (chain.py) ------------------------

    def take_many(self, records: list) -> None:
        """Unkeyed records from the upstream operator of the chain, as a batch from a channel would be.
        For the length of the call its input counts as full (input_fill 1): the operator before it
        waits on it, and the stall watch sees records taken and not finished (stall_watch.ChainProbe)."""
        counters = self._counters
        counters[_FILL] = 1.0
        self._process_records(records, None)
        counters[_FILL] = 0.0

    def take_one(self, record: Any) -> None:
        counters = self._counters
        counters[_FILL] = 1.0
        self._process_records([record], None)
        counters[_FILL] = 0.0

    def end_of_link(self, signal: StopSignal) -> None:
        """The upstream operator of the chain has finished: this task's one input ends, so it finishes
        too (close() in chain order) and reports Stopped."""
        self.remaining -= 1
        self.last_signal = signal
        if self.remaining == 0:
            self.finish(signal)
            ctx = self.ctx
            ctx.control.send(Stopped(ctx.name, self.metrics(), self.operator.end_commit))
            ctx.logger.info("stopped: %d in, %d out (%s)", self.records_in, self._router.records_out,
                            signal.reason)

    def flush_from_link(self) -> None:
        self._flush_outputs()

    @property
    def has_pending(self) -> bool:
        return self._router.has_pending

    @property
    def done(self) -> bool:
        """True once one StopSignal has arrived from each input channel."""
        return self.remaining == 0

    def process_batch(self, items: list) -> None:
        """Process what one `gate.read()` returned: RecordBatches go through the operator, ChannelEnds
        count down `remaining`. Flushes outputs every `flush_interval` on the way."""
        ctx = self.ctx
        for item in items:
            if type(item) is RecordBatch:
                ctx.current_input = item.input_index
                keys = item.keys
                ctx.current_key, ctx.current_keyed = None, keys is not None
                self._process_records(item.records, keys)
            elif type(item.signal) is Barrier:
                self._barrier_arrived(item.slot, item.signal)
            else:
                self.remaining -= 1
                self.last_signal = item.signal
                ctx.logger.debug("end of input channel %d (%d left)", item.slot, self.remaining)
                if self._aligning is not None:   # the inputs still open may all have delivered it now
                    self._align()
        ctx.current_key, ctx.current_keyed = None, False

    # -- checkpoints ---------------------------------------------------------------------------------

    def _barrier_arrived(self, slot: int, barrier: Barrier) -> None:
        """Input `slot` delivered `barrier`: hold it back until every open input has (alignment)."""
        self._aligning = barrier
        self._aligned_slots.add(slot)
        self.ctx.gate.hold(slot)
        self._align()

    def _align(self) -> None:
        barrier = self._aligning
        if barrier is None or len(self._aligned_slots) < self.remaining:
            return
        self._aligning = None
        self._aligned_slots.clear()
        ctx = self.ctx
        ctx.current_key, ctx.current_keyed = None, False
        self.take_barrier(barrier)
        ctx.gate.release_all()

    def take_barrier(self, barrier: Barrier) -> None:
        """Every input is aligned on `barrier` (or this is a source at its tick, or a chain member fed
        by its upstream): snapshot the operator (into this instance's state file, or into the ack where the
        backend ships state: TaskContext.checkpoint_ack), forward the barrier on every output after
        everything routed before it, and ack the driver."""
        ctx = self.ctx
        ctx.checkpoint_number = barrier.checkpoint
        self.operator.flush()
        state, progress = self.operator.snapshot()
        # Where the state goes is the context's (backend's) business: a state file written here, or the
        # state itself in the ack (TaskContext.checkpoint_ack).
        ack = ctx.checkpoint_ack(barrier.checkpoint, self._pickled_state(state), progress)
        self._router.send_barrier(barrier)
        self._flush_dead_letters()   # the driver keeps those before the ack with the checkpoint
        ctx.control.send(ack)
        ctx.logger.debug("checkpoint %d taken (%d bytes of state)", barrier.checkpoint, ack.nbytes)

    def _pickled_state(self, state: dict[str, Any]) -> bytes:
        try:
            return pickle.dumps(state, protocol=5)
        except Exception as exc:
            name = type(self.operator.function).__name__
            what = f"what {name}.snapshot_state() returns" if "attributes" not in state else \
                f"the attributes of {name} (a join or comap keeps them as its buffers)"
            raise TypeError(
                f"checkpoint {self.ctx.checkpoint_number}: the state of {self.operator.label} cannot be pickled "
                f"({type(exc).__name__}: {exc}). Make {what} picklable, or give {name} snapshot_state() returning "
                "the picklable part of its state and restore_state(state)") from exc

    def _final_snapshot(self) -> None:
        """End of input, after handle_stop_signal (and what the operator emits at the end), before
        close(): this task's last state goes to the driver (a FINAL ack carrying it), marked finished. Every
        task upstream has finished too, so a resumed job sends it nothing new, and it emits nothing again."""
        ctx = self.ctx
        ctx.checkpoint_number = FINAL
        self._router.ship_to_driver()   # the driver counts a finished sender's results up to this ack
        self._flush_dead_letters()
        state, progress = self.operator.snapshot()
        state["finished"] = True
        data = self._pickled_state(state)
        ctx.control.send(CheckpointAck.carrying(ctx.name, FINAL, data, progress))

    def _process_records(self, records: list, keys: list | None) -> None:
        """The records of one batch, step by step (steps.py), with the bookkeeping every step shares:
        the in-count, the flush when due, and a failing record reported (on_error="fail") or set aside."""
        step = self._unkeyed_step if keys is None else self._keyed_step
        clock = time.perf_counter
        interval = self._interval
        pos, total = 0, len(records)
        while pos < total:
            try:
                end = step.run(records, keys, pos, self._last_flush + interval)
            except BaseException as exc:
                failed = step.failed_at
                chain = self.chain
                # Raised further down the chain: that member names its record and applied its policy.
                if failed == NO_INDEX or (chain is not None and chain.failed is not None):
                    raise
                self.records_in += failed + 1 - pos
                # KeyboardInterrupt and the like end the task whatever the policy.
                if not (self._sets_aside and isinstance(exc, Exception)):
                    self._failed = (records[failed],)
                    raise
                self._record_failed(exc, records[failed], self._on_error)
                end = failed + 1
            else:
                self.records_in += end - pos
            pos = end
            if clock() - self._last_flush >= interval:
                self._flush_outputs()

    def _flush_outputs(self) -> None:
        """Flush outputs; publish the counters too when PUBLISH_INTERVAL has passed since the last time,
        so that they stay current in the middle of a long batch."""
        self.operator.flush()
        self._router.flush()
        self._last_flush = now = time.perf_counter()
        if now - self._last_publish >= PUBLISH_INTERVAL:
            self._publish()
        else:
            # Within a batch too (one store, at most every flush_interval): the driver's stall watch
            # judges a task by its published counters, and a batch of slow records can take far longer
            # than stall_timeout while every record moves.
            self._counters[_IN] = self.records_in

    def finish(self, signal: StopSignal) -> None:
        """End of input: the operator finishes (handle_stop_signal, close), outputs flush, and one
        StopSignal goes out on every output channel."""
        ctx = self.ctx
        self.stage = "finish"
        self.operator.finish(signal)
        self.operator.flush()
        self._router.flush()
        self._router.send_stop(StopSignal(signal.source or ctx.name, signal.reason))
        self._flush_dead_letters()
        self._publish()
        self._counters[_FINISHED] = time.time()

    @property
    def num_inputs(self) -> int:
        channels = len(self.ctx.inbox.input_indices) if self.ctx.inbox is not None else 0
        return channels + self._linked_inputs

    @property
    def processed_count(self) -> int:
        """Records this task has processed: taken off its inputs, or produced, for a source."""
        if isinstance(self.operator, SourceOperator):
            router = self.ctx.router
            return router.records_out if router is not None else 0
        return self.records_in

    def _consume(self) -> StopSignal:
        ctx = self.ctx
        gate = ctx.gate
        perf = time.perf_counter
        if self.remaining == 0:
            return self.last_signal
        gate.poll_period = self.operator.poll_period
        router = self._router
        while self.remaining:
            t0 = perf()
            items = gate.read(0)
            if not items:
                self._flush_outputs()
                self._publish()
                # A channel that ships on a timer (results for the driver) may still hold records: wake
                # up in time to send them, even if no more input comes.
                items = gate.read(SEND_INTERVAL if router.has_pending else None)
            self.wait_s += perf() - t0
            self.process_batch(items)
            # Processed: drop them before the next read, which frees the slabs of received arrays
            # that no one kept (slabs.py); held through the read, they would all look kept.
            del items
            self._publish()
        return self.last_signal

    def _waited(self, seconds: float) -> None:
        self.wait_s += seconds

    def _tick(self, waited: float = 0.0) -> bool:
        """Called by sources every flush interval (and after a back-off); True when a stop was requested."""
        self.wait_s += waited
        self._barrier_if_requested()
        self._router.flush()
        self._publish()
        return self.ctx.job_control.stop_requested

    def _barrier_if_requested(self) -> None:
        """A source, between two chunks: the barrier of a checkpoint the driver asked for since the last one."""
        if self._checkpoints:
            number = self.ctx.job_control.checkpoint_requested
            if number > self._last_barrier:
                self._last_barrier = number
                self.take_barrier(Barrier(number))

    # -- errors and counters -------------------------------------------------------------------

    def set_aside(self, record: Any, error: Exception) -> None:
        """A function reports a record it cannot process (TaskContext.set_aside): raise `error` under
        on_error="fail", else count it and log it (and dead-letter it) like a record whose call raised."""
        if not self._sets_aside:
            raise error
        self._record_failed(error, record, self._on_error)

    def _record_failed(self, exc: Exception, record: Any, policy: str) -> None:
        self.errors += 1
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.ctx.logger.warning("record %s failed (%s: %s); on_error=%s", short_repr(record),
                                type(exc).__name__, exc, policy)
        self.ctx.logger.debug("%s", tb)
        if policy == "dead_letter":
            self._dead_letters.append({"task": self.ctx.name, "record": owned(record),
                                       "error": f"{type(exc).__name__}: {exc}", "traceback": tb})
            if len(self._dead_letters) >= 256:
                self._flush_dead_letters()

    def _flush_dead_letters(self) -> None:
        if self._dead_letters:
            entries, self._dead_letters = self._dead_letters, []
            try:
                self.ctx.control.send(DeadLetter(self.ctx.name, entries))
            except Exception:
                # A record that cannot be pickled travels as its repr instead.
                for e in entries:
                    e["record"] = short_repr(e["record"])
                self.ctx.control.send(DeadLetter(self.ctx.name, entries))

    def current_record(self, error: BaseException | None = None) -> tuple[bool, Any]:
        """(has_record, record) for error reports; an encoding error knows its own record."""
        if isinstance(error, EncodeError):
            return True, error.record
        if isinstance(self.operator, SourceOperator):
            rec = self.operator.last_record
            return (rec is not NO_RECORD, None if rec is NO_RECORD else rec)
        if self._failed:
            return True, self._failed[0]
        return False, None

    def progress(self) -> str:
        """Where this task is in its stream, for error messages."""
        router = self.ctx.router
        out = router.records_out if router is not None else 0
        if isinstance(self.operator, SourceOperator):
            return f"after emitting {out} record(s)"
        return f"after receiving {self.records_in} record(s) and emitting {out}"

    def _publish(self) -> None:
        c = self._counters
        router = self._router
        self._last_publish = now = time.perf_counter()
        elapsed = now - self._started if self._started else 0.0
        blocked = router.blocked_seconds
        # In a chain the time inside this task's operator is the time in its calls (the head: all but
        # its waits) less the time its calls into the next member took.
        link = self.in_link
        inside = link.call_s if link is not None else elapsed - self.wait_s
        busy = max(inside - sum(out.call_s for out in self.out_links) - blocked, 0.0)
        c[_IN] = self.records_in
        c[_OUT] = router.records_out
        c[_WAIT] = self.wait_s
        c[_BLOCKED] = blocked
        c[_BUSY] = busy
        c[_ERRORS] = self.errors
        if self.cpu_clock is not None:
            cpu = self.cpu_clock()
            chain = self.chain
            if chain is not None:
                # One thread's CPU for the whole chain: each operator gets its share of the chain's time.
                head = chain.head
                total = (now - head._started - head.wait_s) if head._started else 0.0
                cpu = cpu * min(busy / total, 1.0) if total > 0 else 0.0
            c[_CPU] = cpu
        if self.ctx.gate is not None:
            c[_FILL] = self.ctx.gate.fill()

    def metrics(self) -> dict:
        row = {name: float(self._counters[i]) for i, name in enumerate(FIELDS)}
        row["processed_count"] = self.processed_count
        return row
