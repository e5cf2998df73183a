"""Random small DAGs for the checkpoint property test (issue 20): a split text source, a map, an optional
filter, keyby + reduce, an optional second branch, each output to a file sink or collect(); built from a
JSON-able spec (so a driver subprocess can build the same one) and evaluated in plain Python."""

from __future__ import annotations

import os
import time
from typing import Any

from tests.faults.checkpoint_pipeline import committed_rows

FILES, LINES_PER_INSTANCE = 3, 1000   # 1.5 s of sleep per source instance: many checkpoint intervals


def double(n: int) -> int:
    return 2 * n


def shift(n: int) -> int:
    return n + 7


def not_three(n: int) -> bool:
    return n % 3 != 0


def add(a: int, b: int) -> int:
    return a + b


MAPS = {"double": double, "shift": shift}


class ModKey:
    """The reduce's key selector: n mod `keys` (a class, so the spec's key count travels with it)."""

    def __init__(self, keys: int) -> None:
        self.keys = keys

    def __call__(self, n: int) -> int:
        return n % self.keys


def parse(line: str) -> int:
    time.sleep(0.0005)   # slow enough that a checkpoint completes well before the end
    return int(line)


def records(spec: dict[str, Any]) -> int:
    return FILES * LINES_PER_INSTANCE * spec["source_parallelism"]


def write_input(folder: str, spec: dict[str, Any]) -> str:
    os.makedirs(folder, exist_ok=True)
    lines = records(spec) // FILES
    for f in range(FILES):
        with open(os.path.join(folder, f"f{f}.txt"), "w") as out:
            out.writelines(f"{f * lines + i}\n" for i in range(lines))
    return folder


def _output(stream: Any, how: str, out: str, name: str, **parallelism: int) -> Any:
    if how == "collect":
        return stream.collect(name=name, **parallelism)
    stream.write_jsonl(os.path.join(out, name), name=name, **parallelism)
    return None


def build(env: Any, spec: dict[str, Any], inp: str, out: str, reduce_parallelism: int | None = None) -> dict[str, Any]:
    """The DAG of `spec`; returns the collect() handles by output name ("sums", "branch").
    `reduce_parallelism`: the reduce's instead of the spec's (a resume may rescale it; what reads its
    output keeps 2 instances, set explicitly so that it does not follow)."""
    sp = spec["source_parallelism"]
    stream = env.read_text(inp, parallelism=sp, split_size=1500, name="lines") \
        .map(parse, parallelism=sp, name="parse").map(MAPS[spec["map"]], parallelism=sp, name="mapped")
    if spec["filter"]:
        stream = stream.filter(not_three, parallelism=sp, name="kept")
    sums = stream.keyby(ModKey(spec["keys"])).reduce(
        add, parallelism=reduce_parallelism or spec["reduce_parallelism"], name="sum")
    handles = {"sums": _output(sums, spec["sums_to"], out, "sums", parallelism=2)}
    if spec["branch_to"] is not None:
        handles["branch"] = _output(stream, spec["branch_to"], out, "branch")
    return {k: v for k, v in handles.items() if v is not None}


def expected(spec: dict[str, Any]) -> dict[str, list[Any]]:
    values = [MAPS[spec["map"]](n) for n in range(records(spec))]
    if spec["filter"]:
        values = [v for v in values if not_three(v)]
    totals: dict[int, int] = {}
    for v in values:
        totals[v % spec["keys"]] = totals.get(v % spec["keys"], 0) + v
    result: dict[str, list[Any]] = {"sums": sorted([k, t] for k, t in totals.items())}
    if spec["branch_to"] is not None:
        result["branch"] = sorted(values)
    return result


def _normal(rows: Any) -> list[Any]:
    return sorted(list(r) if isinstance(r, (list, tuple)) else r for r in rows)


def outputs(spec: dict[str, Any], out: str, handles: dict[str, Any]) -> dict[str, list[Any]]:
    """Each output's records, sorted: the committed parts of a file sink, or what a collect() got."""
    result = {}
    for name, how in (("sums", spec["sums_to"]), ("branch", spec["branch_to"])):
        if how == "collect":
            result[name] = _normal(handles[name].results())
        elif how == "file":
            result[name] = _normal(committed_rows(os.path.join(out, name)))
    return result


# A driver script: argv = env_dir, the spec as JSON, input folder, output folder, checkpoint folder.
DRIVER = """
import json, sys
from procflow import LocalEnvironment
from tests.faults.random_dag_pipeline import build

env = LocalEnvironment("dag", env_dir=sys.argv[1], checkpoint_dir=sys.argv[5],
                       config={"checkpoint_interval": 0.1})
build(env, json.loads(sys.argv[2]), sys.argv[3], sys.argv[4])
print("running", flush=True)
env.submit()
"""
