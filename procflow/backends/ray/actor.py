"""TaskActor: one Ray actor per task, running the same BaseTask loop as a local task process.

    driver (RayBackend)                         TaskActor (threaded: several methods run at once)
    TaskActor.remote(ctx, function) ─────────►  __init__: input gate registered (push may come early)
    run.remote(peers) ───────────────────────►  run(): BaseTask.run() in this call's thread, like
                                                 task_main(): Ready ... Stopped, or Failed on any error
    poll.remote(t)  ◄── (messages, closed) ────  poll(): long-poll of the control outbox
    release.remote() / request_stop.remote() ►  the start / stop words (threading.Events)
    request_checkpoint.remote(n) (sources) ──►  the checkpoint word: the source emits Barrier(n) at its
                                                 next tick; its ack carries its state (RayTaskContext)
    (a split source's run())  ─ claim_split ──►  the job's split cursors, held by one of its task actors
    claim_split.remote / split_owners.remote ─►  (that one: TaskActor.cursors; RayBackend.start)
    counters.remote() ◄──────────────────────── this task's live counters row
    producers: push.remote(slot, seq, frames) ► push(): into the gate, never blocks

The job-control segment of the local backend is shared memory on one machine; here the same object
interface (`ActorJobControl`) is kept inside the actor and driven by actor calls.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import Any

import numpy as np
import ray
from ray import cloudpickle

from procflow.backends.ray import channel
from procflow.runtime.checkpoint.barrier import CheckpointAck
from procflow.runtime.communication.router import BaseRouter
from procflow.runtime.context.task_context import TaskContext
from procflow.runtime.job_control import FIELDS
from procflow.runtime.split_plan import SplitCursors
from procflow.runtime.task.entry import close_logger, open_task_logger, report_chain_failure


class ActorJobControl:
    """The JobControl interface (start/stop/checkpoint words, counters, split claims) for one task inside
    its actor.

    Split claims go to the task actor that holds the job's split cursors (RayBackend.start), one remote
    call per split, or straight to the cursors where this actor holds them.
    """

    def __init__(self, n_tasks: int, enumerator: Any = None, cursors: SplitCursors | None = None) -> None:
        self.counters = np.zeros((max(n_tasks, 1), len(FIELDS)), dtype=np.float64)
        self._start = threading.Event()
        self._stop = threading.Event()
        # The latest checkpoint the driver asked for (0: none). A plain int, stored by the actor's call
        # thread and read by the source at every tick: one attribute load, as cheap as the local job
        # segment's word (a rebinding is atomic under the GIL).
        self._checkpoint = 0
        self._enumerator = enumerator
        self._cursors = cursors
        self._claimed: dict[int, int] = {}   # per slot: splits handed out, as far as this actor saw

    def claim_split(self, slot: int, instance: int) -> int | None:
        if self._cursors is not None:
            index = self._cursors.claim_split(slot, instance)
        elif self._enumerator is None:
            raise RuntimeError("a split source's task actor was started without the job's split enumerator; "
                               "this is a procflow bug, please report it")
        else:
            index = ray.get(self._enumerator.claim_split.remote(slot, instance))
        if index is not None:
            self._claimed[slot] = index + 1
        return index

    def splits_claimed(self, slot: int) -> int:
        """A lower bound (the cursor after this actor's last claim): asking the enumerator at every chunk
        would cost a remote call per chunk, for an estimate that only balanced output uses."""
        return self._claimed.get(slot, 0)

    def release_sources(self) -> None:
        self._start.set()

    def wait_for_start(self) -> None:
        self._start.wait()

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def request_checkpoint(self, number: int) -> None:
        """Ask this actor's source to emit Barrier(number) at its next tick (never a lower number: the
        driver's requests are actor calls, which a threaded actor may run out of order)."""
        if number > self._checkpoint:
            self._checkpoint = number

    @property
    def checkpoint_requested(self) -> int:
        return self._checkpoint

    def sleep_unless_stopped(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def close(self) -> None:
        pass  # the counters stay readable for the driver's last look


class RayTaskContext(TaskContext):
    """A TaskContext whose attach() uses the actor's ActorJobControl instead of the local job segment,
    and whose checkpoint acks carry the task's state (the driver writes it into the checkpoint folder)."""

    actor_job_control: Any = None   # set by the TaskActor after the context arrives; never pickled

    def attach(self, job_control: Any = None, router_class: type[BaseRouter] = BaseRouter) -> None:
        super().attach(job_control if job_control is not None else self.actor_job_control, router_class)

    def checkpoint_ack(self, number: int, state: bytes, progress: dict[str, Any]) -> CheckpointAck:
        """The state travels in the ack, over the actor's control outbox: a task actor may run on
        another node than the checkpoint folder, which only the driver is sure to reach. The driver writes
        it there before the checkpoint completes (Checkpoints._complete)."""
        return CheckpointAck.carrying(self.name, number, state, progress)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("actor_job_control", None)
        return state


class Outbox:
    """The task's control channel: send() from the task thread, poll() long-polled by the driver.

    Messages are pickled in send(), in the task's thread, as a local task's control pipe does: a record
    that cannot travel (a generator in a collect()'s input) then fails in the task that holds it, whose
    failure report names the task and the record. Pickled later, by Ray when poll() returns, it failed
    the driver's ray.get with a RayTaskError that named neither (found by the conformance tests).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._messages: deque[bytes] = deque()
        self._closed = False

    def send(self, message: Any) -> None:
        packed = cloudpickle.dumps(message)
        with self._cond:
            self._messages.append(packed)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def poll(self, timeout: float) -> tuple[list[bytes], bool]:
        """(pickled messages, closed): closed means no message will ever follow these; `unpack` them."""
        with self._cond:
            self._cond.wait_for(lambda: self._messages or self._closed, timeout)
            out = list(self._messages)
            self._messages.clear()
            return out, self._closed


def unpack(messages: list[bytes]) -> list[Any]:
    """The driver's side of Outbox.poll(): the control messages themselves."""
    return [cloudpickle.loads(m) for m in messages]


class TaskActor:
    def __init__(self, ctx: RayTaskContext, function: Any, enumerator: Any = None, chained: tuple = (),
                 split_counts: tuple[int, ...] | None = None) -> None:
        self.ctx = ctx
        self.function = function
        self.chained = chained   # the operators chained behind this task's (runtime/task/chain.py)
        # The job's split cursors, where this actor holds them (one per job with split sources): the
        # other sources claim from here, so that no actor of its own (another worker process to start,
        # seconds on a small machine) serves the claims.
        self.cursors = SplitCursors(split_counts) if split_counts else None
        self.job_control = ctx.actor_job_control = ActorJobControl(ctx.n_tasks, enumerator, self.cursors)
        for member in chained:
            member.ctx.actor_job_control = self.job_control
        self.outbox = Outbox()
        self.gate = ctx.inbox.create_gate() if ctx.inbox is not None else None

    # -- called by producers and the driver while run() is running ---------------------------------

    def push(self, slot: int, seq: int, frames: list) -> None:
        if self.gate is None:   # a source: no edge leads here, so a push means the wiring is wrong
            raise RuntimeError(f"task {self.ctx.name} has no inputs, yet a producer pushed records to it "
                               f"(input slot {slot}); this is a procflow bug, please report it")
        self.gate.push(slot, seq, frames)

    def poll(self, timeout: float) -> tuple[list, bool]:
        return self.outbox.poll(timeout)

    def release(self) -> None:
        self.job_control.release_sources()

    def request_stop(self) -> None:
        self.job_control.request_stop()

    def request_checkpoint(self, number: int) -> None:
        self.job_control.request_checkpoint(number)

    def counters(self) -> dict[int, list[float]]:
        """The live counters row of every operator this task runs, by slot."""
        slots = [self.ctx.task_slot, *(member.ctx.task_slot for member in self.chained)]
        return {slot: self.job_control.counters[slot].tolist() for slot in slots}

    def claim_split(self, slot: int, instance: int) -> int | None:
        """The next split of source `slot` for `instance` (called by the job's other source actors)."""
        return self._held_cursors().claim_split(slot, instance)

    def split_owners(self, slot: int) -> list[int | None] | None:
        return self._held_cursors().split_owners(slot)

    def _held_cursors(self) -> SplitCursors:
        if self.cursors is None:
            raise RuntimeError(f"task {self.ctx.name} does not hold the job's split cursors, yet a split was "
                               "claimed from it; this is a procflow bug, please report it")
        return self.cursors

    def where(self) -> tuple[str, int]:
        """(node id, pid) this task runs on."""
        return ray.get_runtime_context().get_node_id(), os.getpid()

    # -- the task ------------------------------------------------------------------------------------

    def run(self, peers: dict[str, Any]) -> None:
        """What task_main() does in a local child, minus the process plumbing: the actor is the process."""
        from procflow.runtime.task.entry import build_task

        ctx, function = self.ctx, self.function
        channel.register_peers(peers)
        ctx.control = self.outbox
        ctx.logger = logger = open_task_logger(ctx.name, ctx.log_dir, ctx.config["log_level"])
        for member in self.chained:
            member.ctx.control = self.outbox
            member.ctx.logger = open_task_logger(member.ctx.name, ctx.log_dir, ctx.config["log_level"])
        task = build_task(ctx, function, self.chained)
        try:
            task.run()
        except BaseException as exc:  # report everything, SystemExit from user code included
            # The same report as a local task's (entry.py): counters, dead letters, and the record, which
            # for an unshippable one is on the exception rather than the task's current position.
            report_chain_failure(ctx, function, task, task.stage, exc, logger)
        finally:
            for member in self.chained:
                member.ctx.detach()
                close_logger(member.ctx.logger)
            ctx.detach()
            if ctx.inbox is not None:
                ctx.inbox.release()
            close_logger(logger)
            self.outbox.close()
