"""Calling services: the picklable ServiceDirectory and the per-process ServiceClient it connects.

Queues (shared-memory rings, see communication/ring.py; one segment = one inbox with one doorbell, plus
the asleep/blocked flags of rings.py that let each side skip wake-ups nobody needs)::

    request inbox of replica r     one ring per caller c      written by c only, read by replica r
    response inbox of caller c     one ring per replica r     written by r only, read by c only

Callers are every task, every service replica (services call services) and, last, the driver (which only
sends the stop frame). Every ring has exactly one producer and one consumer, as everywhere in procflow.

A request frame is ``(call_id, method, args, kwargs)`` pickled (protocol 5, dill for lambdas); a response
frame is ``(call_id, status, value)``. Pickle, not the record codec: a call is one small tuple, which pickle
encodes in about a microsecond, while the codec's msgpack tuple extension costs tens. The call id is unique
per caller and the response comes back on the caller's own inbox, so a reply can only reach the caller that
asked.

Who reads the response inbox (one reader at a time, the "reader role", guarded by `_lock`)::

    call()        if nobody reads, the calling thread takes the role and reads until its own answer
                  arrived (no Future, no thread hop: it polls its inbox briefly, then sleeps on the
                  doorbell, see waiting.py), answering other calls on the way; if another thread reads,
                  it registers a Future and waits on that
    call_async()  registers a Future; if nobody reads, hands the role to the client's reader thread
    leaving       a sync reader leaving with calls still pending hands the role to the reader thread
Invariant: while any call is pending, some thread holds the role. The reader thread is started on first
need and joined by close(). Whoever pops a call from `_pending` resolves it, exactly once.
"""

from __future__ import annotations

import itertools
import pickle
import threading
import time
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from procflow.core.errors import EncodeError, ServiceError, ServiceTimeoutError
from procflow.runtime.communication import ring as ringmod
from procflow.runtime.communication.shm import SharedSegment
from procflow.runtime.service.calls import (
    ERROR,
    NO_METHOD,
    OK,
    ReplicaTurns,
    ServiceInfo,
    abandoned_error,
    answer_error,
    check_call,
    timeout_error,
)
from procflow.runtime.service.rings import CallRingReader, CallRingWriter, asleep_word
from procflow.runtime.service.waiting import Waiter

__all__ = ["ERROR", "NO_METHOD", "OK", "ServiceClient", "ServiceDirectory", "ServiceInfo", "dumps", "loads"]

_TIMEOUT, _ABANDONED = -1, -2           # ...and of a call that got none
_NEVER = float("inf")


def dumps(obj: Any) -> bytes:
    try:
        return pickle.dumps(obj, protocol=5)
    except Exception:
        try:
            import dill  # multiprocess's serializer: lambdas and closures in arguments

            return dill.dumps(obj, protocol=5)
        except Exception as exc:
            raise EncodeError(f"cannot send {type(obj).__name__} to or from a service: {exc}") from exc


def loads(body: Any) -> Any:
    """Decode a frame body; copies out of the ring, so nothing keeps a reference into it."""
    return pickle.loads(body)


@dataclass(frozen=True)
class ServiceDirectory:
    """Where every service and every caller's queues are. Pickles to names and integers."""

    services: dict                 # name -> ServiceInfo
    request_inboxes: tuple         # per replica (global index): segment name
    response_inboxes: tuple        # per caller: segment name
    callers: dict                  # caller name (task or replica) -> caller index
    capacity: int
    n_callers: int                 # callers with a response inbox, plus the driver (last, stop frames only)

    @property
    def n_replicas(self) -> int:
        return len(self.request_inboxes)

    def connect(self, ctx: Any) -> ServiceClient:
        return ServiceClient(self, self.callers[ctx.name], ctx.name)


class _Call:
    """One call in flight. A sync call whose own thread reads the answers has no Future: the reader
    stores `value` and then `status`, and the calling thread sees them right away."""

    __slots__ = ("service", "method", "replica", "deadline", "timeout", "future", "status", "value")

    def __init__(self, service: str, method: str, replica: int, deadline: float, timeout: float,
                 future: Future | None) -> None:
        self.service = service
        self.method = method
        self.replica = replica
        self.deadline = deadline
        self.timeout = timeout
        self.future = future
        self.status: int | None = None
        self.value: Any = None


class ServiceClient:
    """One per calling process (task or replica). Thread-safe: call() and call_async() from any thread."""

    def __init__(self, directory: ServiceDirectory, caller: int, caller_name: str) -> None:
        self._dir = directory
        self._caller = caller
        self._caller_name = caller_name
        self._cap = directory.capacity
        self._segment = SharedSegment(directory.response_inboxes[caller])
        self._doorbell = ringmod.Doorbell(self._segment)
        n = directory.n_replicas
        self._readers = [CallRingReader(self._segment, r, self._cap, n) for r in range(n)]
        self._req_segments: dict[int, SharedSegment] = {}
        self._writers: dict[int, CallRingWriter] = {}
        self._send_locks = [threading.Lock() for _ in range(directory.n_replicas)]
        self._open_lock = threading.Lock()
        self._turns = ReplicaTurns(directory.services, caller)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Call] = {}
        self._nearest = _NEVER      # no pending deadline is earlier (may be stale-early, never late)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._reading = False       # some thread holds the reader role
        self._thread_turn = False   # ...and it is the reader thread
        self._thread: threading.Thread | None = None
        # Polls and sleeps for whichever thread holds the reader role (one at a time).
        self._waiter = Waiter(self._doorbell, asleep_word(self._segment, n, self._cap))
        self._closing = False
        self._closed = False

    # -- calling ---------------------------------------------------------------------------------

    def call(self, name: str, method: str, args: tuple, kwargs: dict, timeout: float) -> Any:
        cid, call, _ = self._submit(name, method, args, kwargs, timeout, sync=True)
        fut = call.future
        if fut is None:   # this thread became the reader: it reads the answers itself, with no Future
            try:
                self._await(call)
            finally:
                self._leave()
            status = call.status
            if status == OK:
                return call.value
            if status is None:   # close() from another thread while we waited
                status = _ABANDONED
            raise self._error(call, status, call.value)
        try:
            return fut.result(timeout=max(call.deadline - time.monotonic(), 0.0))
        except FutureTimeout:
            with self._lock:
                self._pending.pop(cid, None)
            if fut.done():  # answered in the instant after the wait gave up
                return fut.result()
            raise self._timeout_error(call) from None

    def call_async(self, name: str, method: str, args: tuple, kwargs: dict, timeout: float) -> Future:
        fut = self._submit(name, method, args, kwargs, timeout, sync=False)[1].future
        assert fut is not None   # only a sync call can go without a Future (when its thread reads)
        return fut

    def _submit(self, name: str, method: str, args: tuple, kwargs: dict, timeout: float,
                sync: bool) -> tuple[int, _Call, bool]:
        info = check_call(self._dir.services, name, method, timeout, self._caller_name, self._closed)
        replica = self._turns.pick(info)
        cid = next(self._ids)
        data = dumps((cid, method, args if type(args) is tuple else tuple(args),
                      kwargs if type(kwargs) is dict else dict(kwargs)))
        deadline = time.monotonic() + timeout
        reader = False
        with self._lock:
            if sync and not self._reading:
                self._reading = reader = True
                call = _Call(name, method, replica, deadline, timeout, None)
            else:
                call = _Call(name, method, replica, deadline, timeout, Future())
            self._pending[cid] = call
            if deadline < self._nearest:
                self._nearest = deadline
            if not self._reading:
                self._reading = True
                self._hand_to_thread()
        try:
            self._send(replica, data)
        except BaseException:
            with self._lock:
                self._pending.pop(cid, None)
            if reader:
                self._leave()
            raise
        return cid, call, reader

    def _send(self, replica: int, data: bytes) -> None:
        writer = self._writers.get(replica)
        if writer is None:
            writer = self._open_writer(replica)
        with self._send_locks[replica]:
            writer.send(data)

    def _open_writer(self, replica: int) -> CallRingWriter:
        with self._open_lock:
            writer = self._writers.get(replica)
            if writer is None:
                seg = self._req_segments[replica] = SharedSegment(self._dir.request_inboxes[replica])
                writer = self._writers[replica] = CallRingWriter(seg, self._caller, self._cap,
                                                                 self._dir.n_callers)
            return writer

    # -- reading answers ---------------------------------------------------------------------------

    def _await(self, call: _Call) -> None:
        """The sync reader's loop: read answers until `call` has its own, timed out, or the client closes.

        Only the answering replica's ring is looked at while this is the only call pending: answers for
        nobody (calls that timed out) may then wait in other rings until a later read. A call that
        another thread registers meanwhile makes `_pending` longer before its request is even sent, so
        its answer cannot slip past `ready()` (rings.py: a consumer about to sleep sees every ring whose
        producer skipped the wake-up).
        """
        own = self._readers[call.replica]
        on_answer = self._on_answer

        def ready() -> bool:
            return own.has_data() or (len(self._pending) > 1 and self._any_data())

        while True:
            if own.has_data():
                own.drain(on_answer)
                if call.status is not None:
                    return
            if len(self._pending) > 1:
                for reader in self._readers:
                    if reader.has_data():
                        reader.drain(on_answer)
                if call.status is not None:
                    return
            now = time.monotonic()
            if now >= self._nearest:
                self._expire(now)
                if call.status is not None:
                    return
            if self._closing:
                return
            self._waiter.wait(ready, self._nearest - now)

    def _any_data(self) -> bool:
        for reader in self._readers:
            if reader.has_data():
                return True
        return False

    def _read(self) -> None:
        """The reader thread's loop: drain answers until nothing is pending or the client closes."""
        while True:
            for reader in self._readers:
                if reader.has_data():
                    reader.drain(self._on_answer)
            now = time.monotonic()
            wake = self._expire(now)
            if self._closing or wake is None:
                return
            self._waiter.sleep(self._any_data, wake - now)

    def _on_answer(self, flags: int, body: Any) -> None:
        cid, status, value = loads(body)
        call = self._pending.pop(cid, None)   # one atomic dict operation: no lock needed
        if call is not None:   # else the caller gave up (timeout) before the answer came
            self._resolve(call, status, value)

    def _resolve(self, call: _Call, status: int, value: Any) -> None:
        fut = call.future
        if fut is None:
            call.value = value
            call.status = status   # last: the calling thread returns as soon as it sees a status
            return
        try:
            if status == OK:
                fut.set_result(value)
            else:
                fut.set_exception(self._error(call, status, value))
        except InvalidStateError:  # the user cancelled the future
            pass

    def _expire(self, now: float) -> float | None:
        """Fail pending calls past their deadline; returns the next deadline, or None if none pending."""
        expired = []
        nearest = _NEVER
        with self._lock:
            for cid, call in list(self._pending.items()):
                if call.deadline <= now:
                    expired.append(self._pending.pop(cid))
                elif call.deadline < nearest:
                    nearest = call.deadline
            self._nearest = nearest
        for call in expired:
            self._resolve(call, _TIMEOUT, None)
        return None if nearest == _NEVER else nearest

    def _leave(self) -> None:
        with self._lock:
            if self._pending and not self._closing:
                self._hand_to_thread()
            else:
                self._reading = False

    def _hand_to_thread(self) -> None:
        """Give the reader role to the reader thread (called with `_lock` held)."""
        self._thread_turn = True
        if self._thread is None:
            self._thread = threading.Thread(target=self._thread_main, name=f"procflow-services-{self._caller_name}")
            self._thread.start()
        else:
            self._cond.notify()

    def _thread_main(self) -> None:
        while True:
            with self._cond:
                while not self._thread_turn and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
            self._read()
            with self._cond:
                if not self._pending or self._closing:
                    self._thread_turn = False
                    self._reading = False

    # -- errors ------------------------------------------------------------------------------------

    def _queue_names(self, call: _Call) -> str:
        return (f"request queue {self._dir.request_inboxes[call.replica]}#{self._caller}, response queue "
                f"{self._dir.response_inboxes[self._caller]}#{call.replica}")

    def _timeout_error(self, call: _Call) -> ServiceTimeoutError:
        return timeout_error(self._dir.services[call.service], call.method, call.replica, self._caller_name,
                             call.timeout, f"it waited on the {self._queue_names(call)}")

    def _error(self, call: _Call, status: int, value: Any) -> ServiceError:
        if status == _TIMEOUT:
            return self._timeout_error(call)
        if status == _ABANDONED:
            return abandoned_error(call.service, self._caller_name)
        return answer_error(call.service, call.method, status, value)

    # -- closing -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the reader thread, fail what is still pending, unmap the queues. Idempotent."""
        if self._closed:
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._doorbell.ring()   # wake the reader thread from its futex wait
        if self._thread is not None:
            self._thread.join()
        self._closed = True
        with self._lock:
            left, self._pending = list(self._pending.values()), {}
        for call in left:
            self._resolve(call, _ABANDONED, None)
        for writer in self._writers.values():
            writer.close()
        for reader in self._readers:
            reader.close()
        self._writers.clear()
        self._readers = []
        # Their ctypes words over the segment would keep it from closing (BufferError); never used after.
        self._doorbell = self._waiter = None  # type: ignore[assignment]  # closed
        for seg in (*self._req_segments.values(), self._segment):
            seg.close()
        self._req_segments.clear()
