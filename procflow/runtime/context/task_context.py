"""TaskContext: everything a task process needs, as small picklable values.

Built in the driver, shipped to the child (inherited under fork, pickled under spawn), then `attach()`ed
there: descriptors become ring writers and an input gate, the job segment is mapped, the logger opened.
The user function sees it as `self.ctx`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from procflow.core.config import Config
from procflow.core.enums import OperatorKind
from procflow.runtime.checkpoint.barrier import CheckpointAck
from procflow.runtime.checkpoint.store import write_state
from procflow.runtime.communication.router import BaseRouter, OutputGroup


@dataclass
class OutputSpec:
    target: str
    strategy: str
    edges: list              # queue descriptors, in downstream instance order
    key_selector: Any = None  # a KeyByFunction instance, or None
    partitioner: Any = None
    combiner: Any = None      # a ReduceFunction instance: this task pre-reduces for the target (combiner.py)

    @property
    def queue_ids(self) -> list[str]:
        return [f"{getattr(e, 'inbox', getattr(e, 'kind', '?'))}#{getattr(e, 'slot', '?')}" for e in self.edges]


def output_specs(node: Any, edge_descriptor: Callable[[Any], Any]) -> list[OutputSpec]:
    """A task's output groups, with a freshly built key selector (selectors may keep state) and combining
    reduce function per task.

    `edge_descriptor(edge)` returns the channel descriptor of one graph edge for the backend at hand.
    """
    outputs = []
    for group in node.out_groups:
        part = group.partitioning
        edges = [edge_descriptor(e) for e in group.edges]
        selector = part.key_selector.build() if part.key_selector is not None else None
        combiner = part.combiner.build() if part.combiner is not None else None
        outputs.append(OutputSpec(group.target, part.strategy, edges, selector, part.partitioner, combiner))
    return outputs


def attached_router(ctx: TaskContext) -> BaseRouter:
    """`ctx.router`, which exists only between `attach()` and `detach()`, in the task's own process.

    For the task loop and operators, which emit only once open: a router still missing there means the
    task skipped attach(), and would otherwise surface as an AttributeError on None at the first record.
    """
    router = ctx.router
    if router is None:
        raise RuntimeError(f"task {ctx.name}: its channels are not attached; TaskContext.attach() must run "
                           "in the task's own process before the operator opens")
    return router


@dataclass
class TaskContext:
    name: str
    operator_name: str
    kind: OperatorKind
    parallel_index: int
    parallelism: int
    job_id: str
    env_dir: str
    task_slot: int                 # row in the job's counters
    job_segment: str
    n_tasks: int
    inbox: Any = None              # inbox descriptor, or None for sources
    outputs: list[OutputSpec] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    config: dict = field(default_factory=lambda: Config().as_dict())   # every key: readers index it
    service_directory: Any = None  # how to reach services (see runtime/service)
    control: Any = None            # write end of the control pipe
    splits: Any = None             # a split source's SplitPlan (runtime/split_plan.py); None otherwise
    # Checkpoints (runtime/checkpoint/): the folder tasks write their snapshots into (None: off), this
    # instance's restored snapshot (pickled, from its own earlier run), and, for a split source, the
    # splits finished or part-read at that checkpoint.
    checkpoint_dir: str | None = None
    restore: bytes | None = None
    restore_splits: Any = None

    def __post_init__(self) -> None:
        self.kind = OperatorKind(self.kind)   # also from its string: tools and tests build contexts by hand
        self._runtime_reset()

    def _runtime_reset(self) -> None:
        self.logger: logging.Logger = logging.getLogger(f"procflow.task.{self.name}")
        self.router: BaseRouter | None = None
        self.gate: Any = None
        self.job_control: Any = None
        self.services: Any = None
        # The record being processed: its partition key (valid when `current_keyed`) and which logical
        # input it came on. Set by the task loop, read by operators and `get_key()`.
        self.current_key: Any = None
        self.current_keyed = False
        self.current_input = 0
        self.task: Any = None      # the BaseTask running this context (set by the task)
        self.checkpoint_number = 0   # the checkpoint being taken, while functions snapshot their state

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("logger", "router", "gate", "job_control", "services", "current_key", "current_keyed",
                    "current_input", "task", "checkpoint_number"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._runtime_reset()

    # -- public, for user functions ----------------------------------------------------------------

    def get_key(self) -> Any:
        """The partition key of the record being processed, or None on an unkeyed stream."""
        return self.current_key if self.current_keyed else None

    def get_routing_info(self) -> list[dict]:
        """Downstream connections and queue ids, for tools and visualisation."""
        return [{"target": o.target, "strategy": o.strategy, "instances": len(o.edges),
                 "queue_ids": o.queue_ids} for o in self.outputs]

    def set_aside(self, record: Any, error: Exception) -> None:
        """Report a record the function cannot process, without raising from the hook itself.

        For a function that finds bad records on its own, such as a file reader meeting a line it cannot
        parse (a source has no input record for the task to blame). The operator's `on_error` decides:
        "fail" (the default) raises `error`, which fails the job; "skip" counts and logs the record;
        "dead_letter" also sends `record` with the error to the dead-letter output. Returns normally
        when the record is set aside: the function goes on with its next record.
        """
        if self.task is None:
            raise error
        self.task.set_aside(record, error)

    @property
    def processed_count(self) -> int:
        """Records this task has processed so far (for a source: records it has produced)."""
        return self.task.processed_count if self.task is not None else 0

    @property
    def log_dir(self) -> str:
        return os.path.join(self.env_dir, self.job_id)

    # -- runtime -------------------------------------------------------------------------------------

    def attach(self, job_control: Any = None, router_class: type[BaseRouter] = BaseRouter) -> None:
        """Open channels in this process (the child). The inline executor passes its in-process
        `job_control` and router class instead of mapping the job segment."""
        if job_control is None:
            from procflow.runtime.job_control import JobControl

            job_control = JobControl.attach(self.job_segment, self.n_tasks)
        self.job_control = job_control
        if self.inbox is not None:
            self.gate = self.inbox.open_gate()
        groups = []
        for spec in self.outputs:
            writers = [edge.open_writer() for edge in spec.edges]
            for writer in writers:
                if hasattr(writer, "bind_control"):   # an edge into a collect run by the driver
                    writer.bind_control(self.control, self.name)
            selector = spec.key_selector.execute if spec.key_selector is not None else None
            if spec.combiner is not None:
                # Opened here, in the task, as an operator's function is (with this task's context);
                # the combining placement closes it at end of input, after sending its partials.
                spec.combiner.ctx = self
                spec.combiner.open()
            groups.append(OutputGroup(spec.target, spec.strategy, writers, selector, spec.partitioner,
                                      spec.queue_ids, spec.combiner))
        self.router = router_class(groups, self.parallel_index)
        if self.service_directory is not None:
            self.services = self.service_directory.connect(self)

    def checkpoint_ack(self, number: int, state: bytes, progress: dict[str, Any]) -> CheckpointAck:
        """This instance's part of checkpoint `number` taken: its pickled `state` stored where the driver
        finds it, and the ack that says so. Here the task writes its state file into the checkpoint
        folder itself, which it shares with the driver (one machine): the ack carries only its size and
        digest, and the state never crosses the control pipe. A backend whose tasks may run elsewhere
        ships the state in the ack instead (RayTaskContext)."""
        checkpoint_dir = self.checkpoint_dir
        assert checkpoint_dir is not None, "barriers flow only where the job has a checkpoint folder"
        nbytes, digest = write_state(checkpoint_dir, number, self.task_slot, self.name, state)
        return CheckpointAck(self.name, number, nbytes, digest, progress)

    def detach(self) -> None:
        for obj in (self.router, self.gate):
            if obj is not None:
                try:
                    obj.close()
                except Exception:  # closing after a failure must not mask it
                    self.logger.debug("close failed", exc_info=True)
        if self.services is not None:
            self.services.close()
        if self.job_control is not None:
            self.job_control.close()
        self.router = self.gate = self.job_control = self.services = None
