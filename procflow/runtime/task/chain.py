"""Chains: the operators of a forward edge run in one task and pass records by function call (issue 19).

    head BaseTask (input gate, or a source loop)
      operator ─► router ─► LinkWriter ─► member BaseTask: take_many / take_one ─► its steps ─► operator
                                             operator ─► router ─► LinkWriter ─► ... ─► the tail's router
                                                                                       ─► real channels

Every member is a full BaseTask with its own TaskContext (built by the Dispatcher as for any node), its
own counters row, Ready / Stopped messages, on_error policy and failure report: the graph still has a
node per operator instance, and only the transport between them changed (no ring, no codec, no
process). A member's input is its upstream's router: a `ChainLink` descriptor stands where a channel's
would, and opens a `LinkWriter`, which `BaseRouter` takes as its one direct channel, so `fast_route` and
`route_many` reach the member's `take_one` / `take_many` in one call, and a chunk stays a chunk.

Lifecycle, in chain order: every member opens (attach, the function's open()) head first; each sends
Ready; the head runs its loop. At end of input the head finishes (handle_stop_signal, close) and its
StopSignal reaches the next member through `send_control`, which finishes that one in turn and sends its
Stopped: close() runs in chain order, and the tail's real channels carry the one StopSignal each, as
before. Flushes cascade the same way.

Failures: an exception raised in a member passes up through every operator before it. The first link it
crosses records that member (`ChainState.failed`), so the task upstream neither blames its own record
nor applies its own on_error to it, and the failure report names the member and its record.

Busy time per operator is measured per call into the next member (once per chunk on the chunked
steps): an operator's busy time is the time spent in its calls minus the time its own calls into the
next member took, and minus the time blocked on its real outputs.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from procflow.runtime.checkpoint.barrier import Barrier
from procflow.runtime.communication import codec
from procflow.runtime.communication.queue_descriptor.base import ChannelWriter

if TYPE_CHECKING:
    from procflow.runtime.task.base_task import BaseTask


class ChainState:
    """What the tasks of one chain share: the head, and which member raised (first link crossed)."""

    def __init__(self, head: BaseTask) -> None:
        self.head = head
        self.failed: BaseTask | None = None


class ChainLink:
    """The descriptor of a chained edge: in a TaskContext's outputs where a channel's would be.

    Picklable (spawn, Ray) and tiny: it names the member it leads to; the running chain binds the
    writer it opens to that member's task (`LinkWriter.bind`).
    """

    kind = "chain"

    def __init__(self, dst: str, slot: int = 0) -> None:
        self.dst = dst
        self.slot = slot

    @property
    def inbox(self) -> str:   # for OutputSpec.queue_ids: "chain:<member>#0"
        return f"chain:{self.dst}"

    def open_writer(self) -> LinkWriter:
        return LinkWriter(self.dst)

    def __repr__(self) -> str:
        return f"ChainLink({self.dst!r})"


class LinkWriter(ChannelWriter):
    """The producer end of a chained edge: hands records to the next member's task by call."""

    sends_anything = True   # any record, arrays included, goes to send_object: no encoding at all
    runs_downstream = True  # a control message runs the next member (its barrier, its outputs) by call

    def __init__(self, dst: str) -> None:
        self.dst = dst
        self.objects_sent = 0
        self.call_s = 0.0   # seconds spent in the next member's calls (its share of the busy time)
        self._down: BaseTask | None = None
        self._state: ChainState | None = None

    def bind(self, down: BaseTask, state: ChainState) -> None:
        self._down = down
        self._state = state
        self._take_one = down.take_one
        self._take_many = down.take_many

    def _blame(self) -> None:
        """The exception passing through came from the next member (or further down), not from us."""
        state = self._state
        if state is not None and state.failed is None:
            state.failed = self._down

    def send_object(self, record: Any, key: Any, keyed: bool) -> None:
        self.objects_sent += 1
        started = time.perf_counter()
        try:
            self._take_one(record)
        except BaseException:
            self.call_s += time.perf_counter() - started
            self._blame()
            raise
        self.call_s += time.perf_counter() - started

    def send_many(self, records: list) -> None:
        self.objects_sent += len(records)
        started = time.perf_counter()
        try:
            self._take_many(records)
        except BaseException:
            self.call_s += time.perf_counter() - started
            self._blame()
            raise
        self.call_s += time.perf_counter() - started

    def send_single(self, parts: list, nbytes: int) -> None:
        """An encoded frame (an array placed by a router that hooks `route`, as the inline one does):
        decoded back into the record it was made from."""
        record, _key, _keyed = codec.decode_bytes(b"".join(bytes(p) for p in parts))
        self.send_object(record, None, False)

    def send_record(self, packed: bytes, key_packed: bytes | None) -> None:
        raise RuntimeError(f"the chained edge to {self.dst} was handed an encoded record: a chained edge "
                           "has one destination and takes records as objects; this is a procflow bug")

    def send_control(self, signal: Any) -> None:
        """End of stream: the next member finishes (and reports Stopped) now, in chain order."""
        down = self._down
        assert down is not None, "bind() first"
        try:
            if type(signal) is Barrier:   # a checkpoint: the member snapshots and passes it on, in turn
                down.take_barrier(signal)
                return
            down.end_of_link(signal)
        except BaseException:
            self._blame()
            raise

    def flush(self) -> None:
        down = self._down
        if down is None:
            return
        try:
            down.flush_from_link()
        except BaseException:
            self._blame()
            raise

    @property
    def has_pending(self) -> bool:
        down = self._down
        return down is not None and down.has_pending

    def close(self) -> None:
        pass   # the member's own context closes its channels


def bind_links(tasks: list[BaseTask], state: ChainState) -> None:
    """Connect each LinkWriter in the routers of `tasks` to the member it leads to."""
    by_name = {task.ctx.name: task for task in tasks}
    for task in tasks:
        router = task.ctx.router
        if router is None:
            continue
        for group in router.groups:
            for writer in group.writers:
                if isinstance(writer, LinkWriter):
                    down = by_name[writer.dst]
                    writer.bind(down, state)
                    task.out_links.append(writer)
                    down.in_link = writer
