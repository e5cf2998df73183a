"""Public helpers for testing pipelines and procflow itself: leak checks and fault-injecting functions."""

from __future__ import annotations

import os

from procflow.runtime.communication.shm import list_segments


def child_pids(pid: int | None = None) -> set[int]:
    """Live (non-zombie) direct children of `pid` (default: this process), read from /proc."""
    pid = os.getpid() if pid is None else pid
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.update(int(p) for p in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    alive = set()
    for child in found:
        try:
            with open(f"/proc/{child}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            continue
        if state != "Z":
            alive.add(child)
    return alive


def own_segments(pid: int | None = None) -> set[str]:
    """procflow shared-memory segments created by `pid` (default: this process)."""
    prefix = f"procflow_{os.getpid() if pid is None else pid}_"
    return {name for name in list_segments() if name.startswith(prefix)}
