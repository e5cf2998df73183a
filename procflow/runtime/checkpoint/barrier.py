"""The records of a checkpoint: a numbered Barrier that travels every channel, and the ack to the driver.

    driver ── job control word "checkpoint n requested" ──► every source instance, at its next tick
    source ── Barrier(n) on every output channel (after the records before it) ──► consumers
    consumer: a Barrier on one input holds that input back (alignment) until every open input has
              delivered it; then the task snapshots, forwards Barrier(n) on every output, and
    task ──CheckpointAck(n)──► driver      over the control channel the task already reports on

A task that finishes (every input ended) sends one last CheckpointAck numbered FINAL, carrying its state
itself: it can ack no more barriers, and the driver writes that state into every later checkpoint. Its
downstream tasks align on their inputs still open, after its StopSignal, so they hold all it emitted;
every task upstream of it has finished too, so on resume nothing new reaches it.

A Barrier rides a channel exactly as a StopSignal does (a control frame behind the records before it,
a ChannelEnd at the gate), so it never overtakes a record nor is overtaken by one. A router puts both on
all its outputs at once where there is room, then waits only for the full ones (router.py
`_control_everywhere`): one slow consumer does not delay the barrier of the others.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Barrier:
    """Checkpoint `checkpoint`'s marker: everything before it on a channel belongs to the checkpoint."""

    checkpoint: int


FINAL = 0   # CheckpointAck.checkpoint of a finished task's last state (checkpoints are numbered from 1)


@dataclass(frozen=True)
class CheckpointAck:
    """A task instance took its part of checkpoint `checkpoint`: its state file (`nbytes`, `sha256`)
    is written, and `progress` tells the driver what it merges itself (a split reader's finished and
    current splits, a file sink's rolled parts). `state`: the state itself, where the driver writes it
    (`carrying`)."""

    task: str
    checkpoint: int
    nbytes: int
    sha256: str
    progress: dict[str, Any] = field(default_factory=dict)
    state: bytes | None = None

    @classmethod
    def carrying(cls, task: str, checkpoint: int, state: bytes, progress: dict[str, Any]) -> CheckpointAck:
        """An ack with the state itself, which the driver writes into the checkpoint: a finished task's
        FINAL ack, or any ack where the task may run on another machine than the folder (Ray)."""
        return cls(task, checkpoint, len(state), hashlib.sha256(state).hexdigest(), progress, state)
