"""The pipeline of the checkpoint tests: a split file source, a map, keyby + reduce, and two file sinks
(every record, and the sums per key), with its expected output computed here in plain Python."""

from __future__ import annotations

import glob
import json
import os
import time
from typing import Any

FILES, LINES = 4, 2000   # 8000 records, 2 s of sleep on 2 instances: the kill comes well before the end
RECORDS = FILES * LINES
KEYS = 7


def write_input(folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    for f in range(FILES):
        with open(os.path.join(folder, f"f{f}.txt"), "w") as out:
            out.writelines(f"{f * LINES + i}\n" for i in range(LINES))
    return folder


def parse(line: str) -> int:
    time.sleep(0.0005)   # slow enough that the job lasts a few checkpoint intervals
    return int(line)


def key_of(n: int) -> int:
    return n % KEYS


def add(a: int, b: int) -> int:
    return a + b


def build(env: Any, inp: str, out: str, sum_parallelism: int = 2) -> tuple[Any, Any, Any]:
    """The pipeline; returns its collect() handles: every record (collected by the driver itself), every
    record again and the sums (keyed, so collected by tasks of their own). `sum_parallelism`: the keyed
    reduce's, which a resume may change (its sink keeps 2, set explicitly so that it does not follow)."""
    numbers = env.read_text(inp, parallelism=2, split_size=2000, name="lines").map(parse, parallelism=2,
                                                                                   name="parse")
    numbers.write_jsonl(os.path.join(out, "records"), name="records")
    sums = numbers.keyby(key_of).reduce(add, parallelism=sum_parallelism, name="sum")
    sums.write_jsonl(os.path.join(out, "sums"), parallelism=2, name="sums")
    return numbers.collect(name="all"), numbers.keyby(key_of).collect(name="keyed"), sums.collect(name="totals")


def collected(records: Any, keyed: Any, sums: Any) -> tuple[list[int], list[int], list[list[int]]]:
    return sorted(records.results()), sorted(keyed.results()), sorted(list(s) for s in sums.results())


def expected() -> tuple[list[int], list[list[int]]]:
    sums = [[k, sum(n for n in range(RECORDS) if n % KEYS == k)] for k in range(KEYS)]
    return list(range(RECORDS)), sums


def assert_exactly_once(out: str, handles: tuple[Any, Any, Any]) -> None:
    """Both file sinks' committed output and the three collects equal an uninterrupted run's."""
    assert committed(out) == expected()
    records, sums = expected()
    assert collected(*handles) == (records, records, sums)


def committed(out: str) -> tuple[list[int], list[list[int]]]:
    """The records of both sinks' committed parts (sorted), after checking their _SUCCESS exists."""
    return committed_rows(os.path.join(out, "records")), committed_rows(os.path.join(out, "sums"))


def committed_rows(folder: str) -> list[Any]:
    """The JSONL records of a file sink's committed parts, sorted, after checking the commit: _SUCCESS
    exists, no staging is left, and the parts are exactly those _SUCCESS lists (none published at a
    checkpoint and then left over, or missing)."""
    assert os.path.exists(os.path.join(folder, "_SUCCESS")), os.listdir(folder)
    assert not [n for n in os.listdir(folder) if n.startswith("_staging-")], os.listdir(folder)
    with open(os.path.join(folder, "_SUCCESS"), encoding="utf-8") as f:
        listed = sorted(entry["name"] for entry in json.load(f)["files"])
    assert sorted(n for n in os.listdir(folder) if n.startswith("part-")) == listed, os.listdir(folder)
    rows = []
    for part in glob.glob(os.path.join(folder, "part-*")):
        with open(part, encoding="utf-8") as f:
            rows += [json.loads(line) for line in f]
    return sorted(rows)


# A driver script: argv = env_dir, input folder, output folder, checkpoint folder[, executor].
DRIVER = """
import sys
from procflow import LocalEnvironment
from tests.faults.checkpoint_pipeline import build

env = LocalEnvironment("ckpt", env_dir=sys.argv[1], checkpoint_dir=sys.argv[4],
                       executor=sys.argv[5] if len(sys.argv) > 5 else "process",
                       config={"checkpoint_interval": 0.1})
build(env, sys.argv[2], sys.argv[3])
print("running", flush=True)
env.submit()
print("finished", flush=True)
"""


# -- a join of two sources of different lengths: barriers aligned across different upstream operators --

# The left input is 20 times as fast as the right: its barrier arrives first, with records behind it
# that alignment must hold back until the right's barrier comes.
# The right one ends after about 2 s, the left after about 4: checkpoints go on without the right.
JOIN_KEYS, LEFT, RIGHT = 20, 4000, 100


def _join_class() -> type:
    from procflow import JoinFunction

    class SymmetricJoin(JoinFunction):
        """A symmetric hash join whose buffers are its state (snapshot_state / restore_state)."""

        def __init__(self) -> None:
            self.seen: dict[int, tuple[list[int], list[int]]] = {}

        def execute(self, payload: int, key: int, tag: int) -> list[list[int]]:
            sides = self.seen.setdefault(key, ([], []))
            sides[tag].append(payload)
            other = sides[1 - tag]
            return [[payload, o] if tag == 0 else [o, payload] for o in other]

        def snapshot_state(self) -> dict[int, tuple[list[int], list[int]]]:
            return self.seen

        def restore_state(self, state: dict[int, tuple[list[int], list[int]]]) -> None:
            self.seen = {int(k): (list(v[0]), list(v[1])) for k, v in state.items()}

    return SymmetricJoin


SymmetricJoin = _join_class()


class AttributesJoin(SymmetricJoin):  # type: ignore[misc, valid-type]
    """The same join without snapshot_state / restore_state: its attributes (the buffers) are its state."""

    snapshot_state = None   # type: ignore[assignment]
    restore_state = None    # type: ignore[assignment]


JOINS = {"symmetric": SymmetricJoin, "attributes": AttributesJoin}


def left_int(line: str) -> int:
    time.sleep(0.001)
    return int(line)


def right_int(line: str) -> int:
    time.sleep(0.02)
    return int(line)


def join_key(n: int) -> int:
    return n % JOIN_KEYS


def write_join_input(folder: str) -> tuple[str, str]:
    os.makedirs(folder, exist_ok=True)
    left, right = os.path.join(folder, "left.txt"), os.path.join(folder, "right.txt")
    with open(left, "w") as f:
        f.writelines(f"{i}\n" for i in range(LEFT))
    with open(right, "w") as f:
        f.writelines(f"{10_000 + i}\n" for i in range(RIGHT))
    return left, right


def build_join(env: Any, left: str, right: str, out: str, join: str = "symmetric") -> None:
    a = env.read_text(left, parallelism=1, split_size=4000, name="left").map(left_int, name="parse_left")
    b = env.read_text(right, parallelism=1, split_size=500, name="right").map(right_int, name="parse_right")
    # The right records are also written by a sink chained to their source: it ends with that source,
    # and its last part must come back on resume from the source's final state.
    b.write_jsonl(os.path.join(out, "right"), name="right_records")
    a.connect(b).keyby(join_key).join(JOINS[join], parallelism=2, name="join") \
        .write_jsonl(os.path.join(out, "pairs"), name="pairs")


def expected_pairs() -> list[list[int]]:
    return sorted([a, b] for a in range(LEFT) for b in range(10_000, 10_000 + RIGHT) if a % JOIN_KEYS == b % JOIN_KEYS)


def committed_join(out: str) -> tuple[list[list[int]], list[int]]:
    """(the pairs, the right records), each sink's committed output sorted."""
    return committed_rows(os.path.join(out, "pairs")), committed_rows(os.path.join(out, "right"))


# argv = env_dir, left file, right file, output folder, checkpoint folder[, executor[, join]].
JOIN_DRIVER = """
import sys
from procflow import LocalEnvironment
from tests.faults.checkpoint_pipeline import build_join

env = LocalEnvironment("join", env_dir=sys.argv[1], checkpoint_dir=sys.argv[5], config={"checkpoint_interval": 0.1},
                       executor=sys.argv[6] if len(sys.argv) > 6 else "process")
build_join(env, sys.argv[2], sys.argv[3], sys.argv[4], *sys.argv[7:8])
print("running", flush=True)
env.submit()
"""
