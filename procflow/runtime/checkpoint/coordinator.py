"""The driver's side of checkpoints: when to take one, the acks, and completing it.

    Dispatcher.prepare ─► Checkpoints.open(): the store; on resume the latest intact checkpoint, checked
                          against this graph's fingerprint; what each task and source restores from it
    monitor loop       ─► due() / poll(): every `checkpoint_interval` s (and on job.checkpoint()), when none
                          is in flight: store.begin(n), then the job control's checkpoint word = n
                       ─► on_ack(CheckpointAck) from every task instance ─► complete(n): the split
                          progress merged, the manifest renamed into place, older checkpoints pruned
    a FINAL ack        ─► a task finished: its last state stands in for its ack of this and every later
                          checkpoint (the driver writes it there)
    an ack with state  ─► (Ray: RayTaskContext) the task wrote no file: the driver writes its state into
                          the checkpoint folder before completing it
    a task Stopped     ─► without a FINAL ack before it (an operator that takes no final snapshot): no
    without FINAL         more checkpoints, since it can ack none; the one in flight is abandoned (its
                          folder, without manifest, is never restored)
                          ─► on_complete: the Dispatcher publishes the file sinks' parts it lists and
                          commits the two-phase sinks' tokens (commits.pickle in the checkpoint)
    job finished       ─► every checkpoint removed (the job they would resume is done)

Split progress is merged here rather than in a task: at barrier n each source instance reports the splits
it finished in this run and the one it is reading, with its offset; the checkpoint's view of the source is
the restored view updated by every instance's report. A split no instance reported stays as restored.

collect(): the driver receives each task's results (Results.sender) over that task's control channel, in
order with its ack, so the records a sender shipped before its ack are exactly those before its barrier.
Each checkpoint stores every collect's records up to it (collected.pickle, cumulative: the older
checkpoints are pruned), and a resumed job's collect() starts from them. Dead letters likewise (a task
ships those it holds before its ack): a resumed job's `dead_letters` start with those of the restored
checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import logging
import pickle
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from procflow.core.enums import OperatorKind
from procflow.core.functions import IterableBatch
from procflow.runtime.checkpoint.barrier import FINAL, CheckpointAck
from procflow.runtime.checkpoint.store import CheckpointStore, LoadedCheckpoint, state_file_name, write_state
from procflow.runtime.control import DeadLetter, Results
from procflow.runtime.split_plan import is_split_source

# The manifest's entry for the driver's own file: the records of every collect() up to the checkpoint.
COLLECTED = "<collected>"
COLLECTED_FILE = "collected.pickle"
# Two-phase sinks' tokens prepared at this checkpoint (operator, task, checkpoint or FINAL, token): the
# driver commits them once it completes, and a resumed job commits those of the restored one again.
COMMITS = "<commits>"
COMMITS_FILE = "commits.pickle"
# Kept with the collects' records (collected.pickle), as if one collect: the dead letters of records
# before the checkpoint. Those records are not processed again on resume, so their letters come back
# from here, and those of records after it come again from the resumed run: each once.
DEAD_LETTERS = "<dead letters>"


def fingerprint(graph: Any) -> dict[str, str]:
    """What a checkpoint must match to be restored: per operator, its kind, parallelism and function."""
    out: dict[str, str] = {}
    for t in graph.transformations.values():
        instances = sum(1 for n in graph.nodes.values() if n.transformation_id == t.id)
        out[t.name] = f"{t.kind.value} x{instances} {t.function.label}"
    return out


def graph_differences(saved: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """Human-readable differences between a checkpoint's fingerprint and this graph's."""
    diffs = [f"operator {name!r} is new (not in the checkpoint)" for name in now if name not in saved]
    diffs += [f"operator {name!r} is gone (in the checkpoint: {saved[name]})" for name in saved if name not in now]
    diffs += [f"operator {name!r} was {saved[name]}, now {now[name]}" for name in now
              if name in saved and saved[name] != now[name]]
    return diffs


def check_checkpointable(graph: Any) -> None:
    """Every source must be able to say where it is: a split source, an iterable, or a function that
    defines snapshot_state()/restore_state(). Raises ValueError before any process starts."""
    for t in graph.transformations.values():
        if not t.kind.is_source:
            continue
        target = t.function.target
        cls = target if isinstance(target, type) else type(target)
        if is_split_source(t.function) or isinstance(target, IterableBatch):
            continue
        if t.kind in (OperatorKind.BATCH, OperatorKind.SOURCE) and callable(getattr(cls, "snapshot_state", None)) \
                and callable(getattr(cls, "restore_state", None)):
            continue
        raise ValueError(
            f"checkpoint_dir is set, but source {t.name!r} ({t.function.label}) cannot tell where it is in its "
            "input, so a resumed job could not continue it exactly. Use a split source (env.read_text / "
            "read_jsonl / ..., or a SplitSource subclass), pass an iterable to from_batch, or give the "
            "function snapshot_state() and restore_state(state) methods")


class Checkpoints:
    """One job's checkpoints, driven by the Dispatcher's monitor thread (module docstring)."""

    def __init__(self, store: CheckpointStore, interval: float, job_id: str, graph: Any,
                 log: logging.Logger, restored: LoadedCheckpoint | None) -> None:
        self.store = store
        self.interval = interval
        self.job_id = job_id
        self.log = log
        self.fingerprint = fingerprint(graph)
        self.restored = restored
        self.next_number = restored.number + 1 if restored is not None else 1
        manifest = restored.manifest if restored is not None else {}
        self.splits: dict[str, dict[str, Any]] = {op: {"done": list(s["done"]), "partial": dict(s["partial"])}
                                                  for op, s in manifest.get("splits", {}).items()}
        self.outputs: dict[str, list[str]] = {op: list(p) for op, p in manifest.get("outputs", {}).items()}
        # collect(): records as of the last complete checkpoint, per collect operator; those received
        # since, per (collect, sender); and how many of those each sender had shipped when it acked.
        self.collected: dict[str, list[Any]] = {}
        if restored is not None and COLLECTED in restored.states:
            self.collected = pickle.loads(restored.states[COLLECTED])
        self.restored_commits: list[tuple[str, str, int, Any]] = []
        if restored is not None and COMMITS in restored.states:
            self.restored_commits = pickle.loads(restored.states[COMMITS])
        self._received: dict[tuple[str, str], list[Any]] = {}
        self._marks: dict[tuple[str, str], int] = {}
        self.tasks: dict[str, tuple[int, str]] = {}   # task -> (slot, operator): who must ack
        self.split_operators: set[str] = set()
        self.sink_operators: set[str] = set()
        self.in_flight: int | None = None
        self.started = 0.0
        self.acks: dict[str, CheckpointAck] = {}
        self.final: dict[str, CheckpointAck] = {}   # finished tasks' last state (FINAL acks)
        self.due_at: float | None = None
        self.disabled = ""
        self.taken: list[dict[str, Any]] = []   # completed checkpoints: number, duration_s, bytes
        self._asked: list[concurrent.futures.Future[int]] = []     # job.checkpoint(), not picked up yet
        self._waiting: list[concurrent.futures.Future[int]] = []   # ... for the checkpoint in flight
        # Called once checkpoint n is complete (its manifest in place) with n, per sink operator the parts it
        # lists, and the two-phase sinks' tokens it holds (COMMITS): the Dispatcher publishes the parts and
        # commits the tokens.
        self.on_complete: Callable[[int, dict[str, list[str]], list[tuple[str, str, int, Any]]], None] | None = None
        self._lock = threading.Lock()   # `ask` runs in the caller's thread, the rest in the monitor's

    # -- setup -------------------------------------------------------------------------------------

    def expect(self, task: str, slot: int, operator: str, *, split_source: bool, sink: bool) -> None:
        """`task` is one of the instances that must ack every checkpoint."""
        self.tasks[task] = (slot, operator)
        if split_source:
            self.split_operators.add(operator)
            self.splits.setdefault(operator, {"done": [], "partial": {}})
        if sink:
            self.sink_operators.add(operator)

    def restored_state(self, task: str) -> bytes | None:
        return self.restored.states.get(task) if self.restored is not None else None

    def released(self) -> None:
        """The sources run from now: the first checkpoint is due one interval later."""
        self.due_at = time.monotonic() + self.interval

    # -- requests ----------------------------------------------------------------------------------

    def ask(self) -> concurrent.futures.Future[int]:
        """job.checkpoint() from any thread: a future that gets the number of the next checkpoint to
        complete, or an exception if the job ends first. The monitor picks it up in `poll`."""
        future: concurrent.futures.Future[int] = concurrent.futures.Future()
        with self._lock:
            if self.disabled:
                future.set_exception(RuntimeError(f"no checkpoint was taken: {self.disabled}"))
            else:
                self._asked.append(future)
        return future

    def _take_asked(self) -> list[concurrent.futures.Future[int]]:
        with self._lock:
            asked, self._asked = self._asked, []
        return asked

    def wait_s(self) -> float | None:
        """How long the monitor may sleep before the next checkpoint is due (None: none is due)."""
        if self.disabled or self.in_flight is not None or self.due_at is None:
            return None
        if self._asked:
            return 0.0
        return max(self.due_at - time.monotonic(), 0.0)

    def poll(self, job_control: Any) -> None:
        """Start the next checkpoint when it is due (or asked for) and none is in flight."""
        if self.disabled or self.in_flight is not None or self.due_at is None:
            return
        if not self._asked and time.monotonic() < self.due_at:
            return
        self._waiting += self._take_asked()
        number = self.next_number
        self.next_number += 1
        self.store.begin(number)
        self.in_flight, self.started, self.acks = number, time.monotonic(), {}
        job_control.request_checkpoint(number)
        self.log.info("checkpoint %d requested", number)

    # -- acks --------------------------------------------------------------------------------------

    def on_results(self, msg: Results) -> None:
        """Records for a collect(), delivered: kept per sender until a checkpoint takes them."""
        if not self.disabled:
            self._received.setdefault((msg.task, msg.sender), []).extend(msg.records)

    def on_dead_letters(self, msg: DeadLetter) -> None:
        """Dead letters from a task, delivered: as a collect's records, up to its ack."""
        if not self.disabled:
            self._received.setdefault((DEAD_LETTERS, msg.task), []).extend(msg.entries)

    def on_ack(self, ack: CheckpointAck) -> None:
        if ack.task not in self.tasks:
            return
        if ack.checkpoint == FINAL:
            self.final[ack.task] = ack
        elif ack.checkpoint != self.in_flight:
            return   # of a checkpoint abandoned meanwhile
        else:
            for key, records in self._received.items():
                if key[1] == ack.task:
                    self._marks[key] = len(records)   # what it shipped before its barrier
            self.acks[ack.task] = ack
        if self.in_flight is not None and all(t in self.acks or t in self.final for t in self.tasks):
            self._complete()

    def _complete(self) -> None:
        number = self.in_flight
        assert number is not None
        done: dict[str, set[int]] = {op: set(s["done"]) for op, s in self.splits.items()}
        partial: dict[str, dict[str, int]] = {op: dict(s["partial"]) for op, s in self.splits.items()}
        outputs: dict[str, list[str]] = {op: [] for op in self.sink_operators}
        files: dict[str, dict[str, Any]] = {}
        tokens: list[tuple[str, str, int, Any]] = []
        finished = sorted(t for t in self.tasks if t not in self.acks)
        for task in sorted(self.tasks):
            ack = self.acks.get(task) or self.final[task]
            slot, operator = self.tasks[task]
            if ack.state is not None:
                # Written here for the task: a finished one's last state (FINAL), or a task of a backend
                # whose tasks may run on another machine than this folder (Ray: state rides the ack).
                write_state(self.store.path, number, slot, task, ack.state)
            files[task] = {"file": state_file_name(slot, task), "bytes": ack.nbytes, "sha256": ack.sha256}
            progress = ack.progress.get("splits")
            if progress is not None and operator in done:
                done[operator].update(progress["done"])
                if progress["current"] is not None:
                    index, offset = progress["current"]
                    partial[operator][str(index)] = offset
            if "parts" in ack.progress:
                outputs.setdefault(operator, []).extend(ack.progress["parts"])
            if "commit" in ack.progress:   # a finished task's (FINAL) token rides every later checkpoint
                tokens.append((operator, task, ack.checkpoint, ack.progress["commit"]))
        merged: dict[str, dict[str, Any]] = {op: {"done": sorted(done[op]),
                       "partial": {k: v for k, v in partial[op].items() if int(k) not in done[op]}}
                  for op in done}
        if self._received or self.collected:
            for key, records in self._received.items():
                # A finished sender shipped everything before its FINAL ack; others, what came before theirs.
                mark = len(records) if key[1] in self.final and key[1] not in self.acks else \
                    self._marks.get(key, 0)
                self.collected.setdefault(key[0], []).extend(records[:mark])
                del records[:mark]
            self._marks = {}
            data = pickle.dumps(self.collected, protocol=5)
            size, digest = write_state(self.store.path, number, 0, COLLECTED, data, name=COLLECTED_FILE)
            files[COLLECTED] = {"file": COLLECTED_FILE, "bytes": size, "sha256": digest}
        if tokens:
            data = pickle.dumps(tokens, protocol=5)
            size, digest = write_state(self.store.path, number, 0, COMMITS, data, name=COMMITS_FILE)
            files[COMMITS] = {"file": COMMITS_FILE, "bytes": size, "sha256": digest}
        duration = time.monotonic() - self.started
        nbytes = sum(a.nbytes for a in self.acks.values())
        manifest = {"checkpoint": number, "job_id": self.job_id, "created": time.time(),
                    "duration_s": duration, "fingerprint": self.fingerprint, "tasks": files, "finished": finished,
                    "splits": merged, "outputs": {op: sorted(p) for op, p in outputs.items()}}
        self.store.complete(number, manifest)
        if self.on_complete is not None:
            self.on_complete(number, outputs, tokens)
        self.splits = {op: {"done": list(v["done"]), "partial": dict(v["partial"])} for op, v in merged.items()}
        self.outputs = outputs
        self.store.prune(number)
        self.taken.append({"checkpoint": number, "duration_s": duration, "bytes": nbytes})
        self.log.info("checkpoint %d complete: %d task(s), %d bytes of state, %.3fs", number, len(files),
                      nbytes, duration)
        self.in_flight = None
        self.due_at = time.monotonic() + self.interval
        waiting, self._waiting = self._waiting, []
        for future in waiting:
            if not future.done():
                future.set_result(number)

    # -- the end -----------------------------------------------------------------------------------

    def task_stopped(self, task: str) -> None:
        """A task finished. With a FINAL ack (a source's chain) its last state stands in for its acks;
        without, it can ack no more barriers, so checkpoints end here (the job is draining)."""
        if self.disabled or task in self.final:
            return
        with self._lock:
            self.disabled = f"task {task} finished without a final snapshot, so the job takes no more checkpoints"
        if self.in_flight is not None:
            self.log.info("checkpoint %d abandoned: %s", self.in_flight, self.disabled)
            self.in_flight = None
        self._fail_waiters(self._waiting + self._take_asked())
        self._waiting = []

    def finish(self, succeeded: bool) -> None:
        """The job ended. Finished: its checkpoints are removed. Else kept, for resume=True."""
        with self._lock:
            self.disabled = self.disabled or "the job ended"
        self._fail_waiters(self._waiting + self._take_asked())
        self._waiting = []
        if succeeded:
            self.store.clear()

    def _fail_waiters(self, futures: list[concurrent.futures.Future[int]]) -> None:
        for future in futures:
            if not future.done():
                future.set_exception(RuntimeError(f"no checkpoint was taken: {self.disabled}"))
        futures.clear()
