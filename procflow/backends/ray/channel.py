"""The `ray` channel kind: batches of records per actor call, with a bound on in-flight batches per edge.

    producer actor (task thread)                         consumer actor
    RayChannelWriter                                     TaskActor.push(slot, seq, frames)  (any thread)
      send_record: msgpack bytes appended to a batch        └─► RayInputGate: per-slot reorder buffer
      send_single / send_control: frames of their own            ─► a frame queue per slot
      flush(): ONE actor call push.remote(slot, seq, frames) BaseTask thread: gate.read(timeout)
      > credits calls in flight: ray.wait on the oldest        └─► BatchDecoder ─► [RecordBatch | ChannelEnd]

- Backpressure: each edge keeps at most `credits` push calls in flight; the writer blocks in `ray.wait` on
  the oldest one (counted as `blocked_seconds`), so a slow consumer slows its producers and memory stays
  bounded (credits x batch size per edge). There is no global queue actor: every edge is a direct
  producer -> consumer actor call.
- Order: task actors are threaded (push runs while the task loop runs), and Ray does not promise that a
  threaded actor executes one caller's calls in order, so each batch carries a per-edge sequence number
  and the gate puts batches back in order. The end-of-stream StopSignal therefore never overtakes data.
- Checkpoints: a read stops decoding a slot right after a control frame, and a slot the task holds
  (`hold`, a Barrier's alignment) is not read until `release_all`, as on the shm gate; the barrier
  itself travels as a control frame, in order with the records (runtime/checkpoint/barrier.py).
- Large frames (numpy arrays, pickled objects) are ordinary call arguments: Ray moves arguments above its
  inline limit through the object store.
- Descriptors name the consumer actor and the slot; the actor handles themselves reach the producer with
  its `run()` call (`register_peers`). Nothing is ever looked up by name (`ray.get_actor`): that is a
  synchronous GCS request, and under a mixed load of Ray jobs it failed with `GetTimeoutError: ...
  getting the actor handle ... GCS server is dead or under high load` (issue 24).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from procflow.core.errors import BrokenChannelError
from procflow.runtime.communication.queue_descriptor.base import BatchDecoder, ChannelWriter, InputGate

_RECORDS, _KEYED_RECORDS, _SINGLE, _CONTROL = 0, 1, 2, 3

# Per worker process (one task actor or service replica per process): the actor handles it may call (its
# consumers, the job's service replicas), by actor name, and the gate each task actor feeds from push().
_peers: dict[str, Any] = {}
_peers_changed = threading.Condition()
_gates: dict[str, RayInputGate] = {}
PEER_WAIT_S = 60.0   # how long a caller waits for the driver to hand over the handles (a replica's connect())


def register_peers(peers: dict[str, Any]) -> None:
    """The handles the driver handed over (a task's run(), a replica's connect())."""
    with _peers_changed:
        _peers.update(peers)
        _peers_changed.notify_all()


def peer(name: str, timeout: float = PEER_WAIT_S) -> Any:
    """The handle of actor `name`, as the driver handed it over: never a by-name lookup in the GCS.

    A task actor has its handles before its task starts; a service replica gets them in connect(), which
    a call from a task may overtake, so the caller waits for them (bounded)."""
    with _peers_changed:
        if not _peers_changed.wait_for(lambda: name in _peers, timeout):
            raise RuntimeError(f"no actor handle for {name!r} reached this worker within {timeout:.0f} s; "
                               "the driver hands every handle over before the job starts, so this is a "
                               "procflow bug, please report it")
        return _peers[name]


@dataclass(frozen=True)
class RayEdge:
    """Descriptor of one edge: the consumer actor's name and the input slot it feeds."""

    inbox: str          # the consumer actor's name
    namespace: str
    slot: int
    batch_bytes: int = 256 * 1024
    credits: int = 8
    kind: str = "ray"

    def open_writer(self) -> RayChannelWriter:
        return RayChannelWriter(peer(self.inbox), self.inbox, self.slot, self.batch_bytes,
                                self.credits)


@dataclass(frozen=True)
class RayInbox:
    """Descriptor of a task actor's inputs. `input_indices[slot]` is the logical input each slot feeds."""

    name: str
    input_indices: tuple[int, ...]
    kind: str = field(default="ray")

    def edge(self, slot: int, namespace: str, batch_bytes: int, credits: int) -> RayEdge:
        return RayEdge(self.name, namespace, slot, batch_bytes, credits)

    def create_gate(self) -> RayInputGate:
        """In the consumer actor, before any push can arrive."""
        gate = _gates[self.name] = RayInputGate(self.input_indices)
        return gate

    def open_gate(self) -> RayInputGate:
        return _gates[self.name]

    def release(self) -> None:
        _gates.pop(self.name, None)


class RayChannelWriter(ChannelWriter):
    def __init__(self, actor: Any, consumer: str, slot: int, batch_bytes: int, credits: int) -> None:
        self._actor = actor
        self._consumer = consumer
        self._slot = slot
        self._batch_bytes = batch_bytes
        self._credits = max(int(credits), 1)
        self._frames: list = []
        self._buf = bytearray()
        self._buf_keyed = False
        self._pending = 0
        self._seq = 0
        self._in_flight: deque = deque()
        self.blocked_seconds = 0.0

    # -- batching ------------------------------------------------------------------------------------

    def _close_records(self) -> None:
        if self._buf:
            self._frames.append((_KEYED_RECORDS if self._buf_keyed else _RECORDS, bytes(self._buf)))
            self._buf.clear()

    def send_record(self, packed: bytes, key_packed: bytes | None) -> None:
        keyed = key_packed is not None
        buf = self._buf
        if keyed is not self._buf_keyed:
            self._close_records()
            self._buf_keyed = keyed
        if key_packed is not None:
            buf += key_packed
            self._pending += len(key_packed)
        buf += packed
        self._pending += len(packed)
        if self._pending >= self._batch_bytes:
            self.flush()

    def send_single(self, parts: list, nbytes: int) -> None:
        self._close_records()
        self._frames.append((_SINGLE, b"".join(bytes(p) for p in parts)))
        self._pending += nbytes
        if self._pending >= self._batch_bytes:
            self.flush()

    def send_control(self, signal: Any) -> None:
        self._close_records()
        self._frames.append((_CONTROL, signal))
        self.flush()

    def flush(self) -> None:
        self._close_records()
        if not self._frames:
            return
        frames, self._frames, self._pending = self._frames, [], 0
        self._in_flight.append(self._actor.push.remote(self._slot, self._seq, frames))
        self._seq += 1
        while len(self._in_flight) > self._credits:
            self._settle_oldest(None)

    # -- credits ---------------------------------------------------------------------------------------

    def _settle_oldest(self, timeout: float | None) -> bool:
        oldest = self._in_flight[0]
        started = time.perf_counter()
        done, _ = ray.wait([oldest], timeout=timeout)
        self.blocked_seconds += time.perf_counter() - started
        if not done:
            return False
        self._in_flight.popleft()
        try:
            ray.get(oldest)
        except RayActorError as exc:
            raise BrokenChannelError(
                f"the consumer task actor {self._consumer!r} died, so input slot {self._slot} of it is "
                f"broken: {exc}") from exc
        except RayError as exc:
            raise BrokenChannelError(f"pushing a batch to {self._consumer!r} failed: {exc}") from exc
        return True

    @property
    def has_pending(self) -> bool:
        return bool(self._frames) or bool(self._buf)

    def close(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until every batch sent is accepted, so errors surface here and not never."""
        deadline = time.monotonic() + timeout
        while self._in_flight:
            if not self._settle_oldest(max(deadline - time.monotonic(), 0.0)):
                break
        self._in_flight.clear()


class RayInputGate(InputGate):
    """Fed by the actor's push() (any thread), read by the task thread; batches reordered per slot.

    Each input slot queues its frames, in send order, until the task reads them. A read decodes every
    slot that is not held, up to and including the slot's first control frame: what follows a Barrier
    stays queued until the task has seen the barrier, and so has held that slot for the checkpoint's
    alignment (BaseTask) before anything behind it is decoded, as the shm gate does. A held slot is not
    read until `release_all()`; its producers are not slowed meanwhile (push never blocks), so its frames
    wait here, in this actor's memory, for the length of the alignment.
    """

    def __init__(self, input_indices: tuple[int, ...]) -> None:
        self._decoders = [BatchDecoder(slot, idx) for slot, idx in enumerate(input_indices)]
        self._cond = threading.Condition()
        self._queued: list[deque] = [deque() for _ in input_indices]   # per slot: frames not yet decoded
        self._next = [0] * len(input_indices)                          # per slot: the next batch in order
        self._early: list[dict[int, list]] = [{} for _ in input_indices]   # batches ahead of their turn
        self._held: set[int] = set()                                   # slots held for alignment
        self._closed = False

    def push(self, slot: int, seq: int, frames: list) -> None:
        with self._cond:
            if seq != self._next[slot]:
                self._early[slot][seq] = frames
                return
            queue = self._queued[slot]
            queue.extend(frames)
            seq += 1
            early = self._early[slot]
            while seq in early:
                queue.extend(early.pop(seq))
                seq += 1
            self._next[slot] = seq
            self._cond.notify()

    def _readable(self) -> bool:
        held = self._held
        return any(queue and slot not in held for slot, queue in enumerate(self._queued))

    def read(self, timeout: float | None) -> list:
        with self._cond:
            if timeout != 0 and not self._readable():
                self._cond.wait_for(lambda: self._closed or self._readable(), timeout)
            taken: list[tuple[int, list]] = []
            for slot, queue in enumerate(self._queued):
                if not queue or slot in self._held:
                    continue
                frames = []
                while queue:
                    frame = queue.popleft()
                    frames.append(frame)
                    if frame[0] == _CONTROL:
                        break   # what follows a barrier waits until the task has seen it (and held the slot)
                taken.append((slot, frames))
        out: list = []
        for slot, frames in taken:   # decoded outside the lock: pushes go on meanwhile
            decoder = self._decoders[slot]
            for tag, data in frames:
                if tag == _RECORDS:
                    decoder.batch(data, False, out)
                elif tag == _KEYED_RECORDS:
                    decoder.batch(data, True, out)
                elif tag == _SINGLE:
                    decoder.single(memoryview(data), out)
                else:
                    decoder.control(data, out)
        return out

    def hold(self, slot: int) -> None:
        """Read nothing more from input `slot` until `release_all()` (checkpoint alignment)."""
        with self._cond:
            self._held.add(slot)

    def release_all(self) -> None:
        with self._cond:
            self._held.clear()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
