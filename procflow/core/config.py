"""Config: every job option in one frozen, typed place, each default stated once, checked at construction.

    LocalEnvironment(name, config={...}) ─► Config.from_mapping({...}) ─► env.config = cfg.as_dict()
                                              │ unknown key    -> ValueError naming the closest known key
                                              └ bad value      -> ValueError naming key, value, valid range

Why at construction: an unchecked `ring_bytes: 0` used to surface as a ZeroDivisionError inside a task
process, sometimes after the job had started, and sometimes past the task's failure handler ("exited with
code 1 without reporting an error"). A mistake in a config is the user's, and is reported before any
process or segment exists, like a bad graph.

The runtime still reads the plain dict of `as_dict()` (it travels to every task inside its TaskContext);
that dict always holds every key, so readers index it (`config["flush_interval"]`) and never restate a
default with `.get(key, default)`.

This module sits at the bottom layer: it imports nothing from procflow, so graph, runtime and backends
may all use it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

QUEUE_KINDS = ("shm", "mp", "ray")
# The channel kinds whose input gates can hold an input back while the others catch up: a checkpoint
# barrier's alignment needs it (runtime/checkpoint/). An 'mp' queue's gate cannot.
ALIGNING_QUEUE_KINDS = ("shm", "ray")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# A ring must hold at least a few frames (8-byte headers, bodies up to half the ring): below this the
# producer fragments every batch into pieces of a few bytes.
MIN_RING_BYTES = 1024


def _option(default: Any, doc: str, **rules: Any) -> Any:
    """A Config field: its default, what it means (`doc`), and how it is checked (`rules`)."""
    return field(default=default, metadata={"doc": doc, **rules})


@dataclass(frozen=True)
class Config:
    """The options of a job. Build it with `Config.from_mapping(user_dict)`; read it with `as_dict()`."""

    queue: str = _option("shm", "channel kind: 'shm' (shared-memory rings), 'mp' (multiprocessing "
                         "queues) or 'ray' (set by RayEnvironment)", choices=QUEUE_KINDS)
    ring_bytes: int = _option(4 << 20, "payload bytes of each shared-memory ring, one per edge; queue='mp' "
                              "and 'ray' ignore it (their queues are bounded by item count and credits)",
                              kind=int, minimum=MIN_RING_BYTES)
    batch_bytes: int = _option(32 << 10, "producers publish a batch once it holds this many bytes...",
                               kind=int, minimum=1)
    flush_interval: float = _option(0.001, "...and at least every this many seconds",
                                    kind=float, minimum=0.0, exclusive=True, maximum=60.0)
    log_level: str = _option("INFO", "level of the per-task log files", choices=LOG_LEVELS, upper=True)
    stop_timeout: float = _option(5.0, "seconds a task may take to exit at cleanup before SIGKILL",
                                  kind=float, minimum=0.0)
    progress: bool | None = _option(None, "progress bar: None shows it when stderr is a terminal",
                                    kind=bool, optional=True)
    stall_timeout: float | None = _option(
        None, "fail the job when no task makes progress for this many seconds while records wait "
        "(None or 0: never). Set it above the longest time one record, or a function's close(), may "
        "take. Watched by LocalEnvironment's process executor; the inline executor and RayEnvironment "
        "ignore it", kind=float,
        minimum=0.0, exclusive=True, optional=True, zero_is_none=True)
    chaining: bool = _option(True, "run operators joined by a forward edge (same parallelism, unkeyed, "
                             "nothing else fed) in one task, passing records by call; a splittable "
                             "source whose parallelism is not given then takes that of the operator it "
                             "feeds. False: one task per operator instance", kind=bool)
    checkpoint_interval: float = _option(30.0, "seconds between checkpoints, for an environment given a "
                                         "checkpoint_dir (LocalEnvironment(checkpoint_dir=...)); "
                                         "job.checkpoint() takes one at once", kind=float, minimum=0.0,
                                         exclusive=True)
    keep_logs: int | None = _option(20, "job log folders kept per environment, the newest first; older "
                                    "ones are pruned (0: only the running job's; None: keep every one)",
                                    kind=int, minimum=0, optional=True)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> Config:
        """A Config from a user's dict: unknown keys and values out of range raise ValueError."""
        values = dict(values or {})
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                raise ValueError(f"unknown config key {key!r}{_did_you_mean(key, known)}; "
                                 f"the valid keys are {', '.join(known)}")
        checked = {f.name: _check(f.name, values[f.name], f.metadata) for f in dataclasses.fields(cls)
                   if f.name in values}
        return cls(**checked)

    def as_dict(self) -> dict[str, Any]:
        """Every key with its value: what the runtime reads and ships to tasks."""
        return dataclasses.asdict(self)

    @classmethod
    def describe(cls) -> dict[str, str]:
        """Each key's meaning, for docs and `--help` texts."""
        return {f.name: f.metadata["doc"] for f in dataclasses.fields(cls)}


def _did_you_mean(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check(key: str, value: Any, rules: Mapping[str, Any]) -> Any:
    """The value to store for `key`, or ValueError saying what was given and what is valid."""
    if value is None and rules.get("optional"):
        return None
    choices = rules.get("choices")
    if choices is not None:
        given = value.upper() if rules.get("upper") and isinstance(value, str) else value
        if given not in choices:
            raise ValueError(f"config[{key!r}] must be one of {', '.join(map(repr, choices))}; got {value!r}")
        return given
    kind = rules["kind"]
    nullable = " or None" if rules.get("optional") else ""
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config[{key!r}] must be True, False{nullable}; got {value!r}")
        return value
    # bool is an int to Python, but `ring_bytes: True` is a mistake, not 1 byte.
    numeric = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, numeric):
        raise ValueError(f"config[{key!r}] must be {'an int' if kind is int else 'a number'}{nullable}; "
                         f"got {value!r} ({type(value).__name__})")
    if kind is float and not math.isfinite(value):
        raise ValueError(f"config[{key!r}] must be a finite number; got {value!r}")
    if value == 0 and rules.get("zero_is_none"):
        return None
    low, high = rules.get("minimum"), rules.get("maximum")
    exclusive = rules.get("exclusive", False)
    too_low = low is not None and (value <= low if exclusive else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        raise ValueError(f"config[{key!r}] must be {_range(low, high, exclusive)}; got {value!r}")
    return kind(value)


def _range(low: Any, high: Any, exclusive: bool) -> str:
    bound = f"> {low}" if exclusive else f">= {low}"
    if high is None:
        return bound
    return f"{bound} and <= {high}"
