"""The crash matrix's job (issue 20): a split source over files, a map, keyby + reduce, a join of every
record with its key's total, and file sinks; its expected committed output computed in plain Python."""

from __future__ import annotations

import os
from typing import Any

# The same input and the same slow parse as the checkpoint tests (several checkpoints before the end).
from tests.faults.checkpoint_pipeline import FILES, LINES, SymmetricJoin, committed_rows, parse
from tests.faults.checkpoint_pipeline import write_input as write_input

RECORDS = FILES * LINES
KEYS = 5
SINKS = ("records", "pairs")


def key_of(n: int) -> int:
    return n % KEYS


def total_key(total: Any) -> int:
    return int(total[0])


def add(a: int, b: int) -> int:
    return a + b


def build(env: Any, inp: str, out: str) -> None:
    """Every record to one file sink; every record joined with its key's final sum to another."""
    numbers = env.read_text(inp, parallelism=2, split_size=2000, name="lines").map(parse, parallelism=2,
                                                                                   name="parse")
    numbers.write_jsonl(os.path.join(out, "records"), name="records")
    sums = numbers.keyby(key_of).reduce(add, parallelism=2, name="sum")
    numbers.connect(sums).keyby([key_of, total_key]).join(SymmetricJoin, parallelism=2, name="join") \
        .write_jsonl(os.path.join(out, "pairs"), parallelism=2, name="pairs")


def expected() -> dict[str, list[Any]]:
    totals = {k: sum(n for n in range(RECORDS) if n % KEYS == k) for k in range(KEYS)}
    return {"records": list(range(RECORDS)),
            "pairs": sorted([n, [n % KEYS, totals[n % KEYS]]] for n in range(RECORDS))}


def committed(out: str) -> dict[str, list[Any]]:
    """Each sink's committed records, sorted, after checking it finished (_SUCCESS, no staging left)."""
    return {sink: committed_rows(os.path.join(out, sink)) for sink in SINKS}


# A driver script: argv = env_dir, input folder, output folder, checkpoint folder[, "resume"].
DRIVER = """
import sys
from procflow import LocalEnvironment
from tests.faults.crash_matrix_pipeline import build

env = LocalEnvironment("matrix", env_dir=sys.argv[1], checkpoint_dir=sys.argv[4],
                       config={"checkpoint_interval": 0.1})
build(env, sys.argv[2], sys.argv[3])
print("running", flush=True)
env.submit(resume=sys.argv[5:] == ["resume"])
print("finished", flush=True)
"""
