"""Files: procflow's split file sources against the hand-written ways of reading a large file in parallel.

The data: JSONL log lines of about 150 bytes (`{"ts": ..., "user": "u17", "level": "INFO", ...}`),
1 GB by default (`--mb`), written once per run into a private temporary folder removed at the end.

Case `count` (parse every line, count records per user) at W = cores:

  plain          one Python process: `for line in open(path)`, json.loads, a dict
  mp.Pool        hand-written: the file cut into byte ranges (P per worker, aligned to line starts: a
                 line belongs to the range it starts in), Pool(W).imap_unordered over the ranges, each
                 worker counting its own dict, the driver merging them
  procflow       env.read_jsonl(path, parallelism=W).keyby(user).map(one).reduce(add).collect(),
                 every operator at parallelism W

Case `lines` (raw line throughput of one reader):

  plain-lines    `for line in open(path)`, counting lines and characters
  procflow-read_text   env.read_text(path, parallelism=1) into a sink counting the same (lines come
                 without their ending, so the sink's characters plus its lines must equal the file's)

Timings cover the whole job as a user waits for it (start-up included; the file is in the page cache
after the first round). Contenders run in shuffled rounds (bench.common.interleaved). Targets (issue 18):
procflow at or ahead of the Pool version and >= 0.85 x cores over one process; read_text >= 0.7 x the
plain loop.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import operator
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bench import common

try:  # the module must work (peers only) when procflow is missing or broken
    from procflow import SinkFunction
except Exception:
    SinkFunction = object

CTX = multiprocessing.get_context("fork")
JOB_TIMEOUT = 900.0
DEFAULT_MB, QUICK_MB = 1000.0, 20.0
DEFAULT_USERS = 100
DEFAULT_RUNS = 5
RANGES_PER_WORKER = 4
CASES = ("count", "lines")
TARGET_PER_CORE = 0.85      # procflow count vs plain, per core
TARGET_VS_POOL = 1.0        # procflow count vs the Pool version
TARGET_READ_TEXT = 0.7      # read_text lines/s vs the plain loop's
_LEVELS = ("INFO",) * 6 + ("DEBUG",) * 3 + ("WARN", "ERROR")
_PATHS = ("/api/orders", "/api/users", "/api/cart", "/static/app.js", "/login", "/api/search", "/health")
_MSGS = ("ok", "cache miss", "slow upstream", "retrying request", "user not found", "payment declined")


# -- the data ------------------------------------------------------------------------------------------

def jsonl_lines(n: int, users: int = DEFAULT_USERS, seed: int = 18, start: int = 0):
    """Log lines of about 150 bytes, deterministic in (seed, start); each is one JSON object."""
    rng = random.Random(seed * 1_000_003 + start)
    for i in range(start, start + n):
        yield (f'{{"ts": {1_700_000_000 + i}, "user": "u{rng.randrange(users)}", '
               f'"level": "{rng.choice(_LEVELS)}", "status": {rng.choice((200, 200, 200, 201, 404, 500))}, '
               f'"path": "{rng.choice(_PATHS)}", "latency_ms": {rng.random() * 250:.2f}, '
               f'"msg": "{rng.choice(_MSGS)}", "bytes": {rng.randrange(100_000)}}}\n')


def write_jsonl(path: str, mb: float, users: int = DEFAULT_USERS) -> tuple[int, int]:
    """Write lines until the file holds at least `mb` MB. Returns (lines, bytes)."""
    limit, written, size = int(mb * 1e6), 0, 0
    with open(path, "w") as f:
        while size < limit:
            block = max(100, min(50_000, (limit - size) // 140))   # lines are about 150 bytes
            chunk = "".join(jsonl_lines(block, users, start=written))
            f.write(chunk)
            written += block
            size += len(chunk)   # ASCII: characters are bytes
    return written, size


def byte_ranges(size: int, pieces: int) -> list[tuple[int, int]]:
    """[start, stop) ranges covering `size` bytes in `pieces` near-equal parts (none empty)."""
    pieces = max(1, min(pieces, size))
    bounds = [size * k // pieces for k in range(pieces + 1)]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


def range_lines(path: str, start: int, stop: int):
    """The lines (bytes, with their ending) that start in [start, stop): a line crossing `stop` belongs
    here, one crossing `start` to the range before. The hand-written Pool version reads this way."""
    with open(path, "rb") as f:
        if start:
            f.seek(start - 1)
            f.readline()   # the rest of the line that started before `start` (just b"\n" if none did)
        pos = f.tell()
        for line in f:
            if pos >= stop:
                return
            pos += len(line)
            yield line


# -- contenders: count -----------------------------------------------------------------------------------

def plain_count(path: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    get, loads = counts.get, json.loads
    with open(path) as f:
        for line in f:
            user = loads(line)["user"]
            counts[user] = get(user, 0) + 1
    return counts


def count_range(path: str, start: int, stop: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    get, loads = counts.get, json.loads
    for line in range_lines(path, start, stop):
        user = loads(line)["user"]
        counts[user] = get(user, 0) + 1
    return counts


def pool_count(path: str, w: int, per_worker: int = RANGES_PER_WORKER) -> dict[str, int]:
    ranges = byte_ranges(os.path.getsize(path), w * per_worker)
    totals: dict[str, int] = {}
    with CTX.Pool(w) as pool:
        for part in pool.imap_unordered(_count_range_args, [(path, lo, hi) for lo, hi in ranges]):
            for user, n in part.items():
                totals[user] = totals.get(user, 0) + n
        pool.close()
        pool.join()
    return totals


def _count_range_args(args: tuple[str, int, int]) -> dict[str, int]:
    return count_range(*args)


def user_of(record: dict) -> str:
    return record["user"]


def one(record: Any) -> int:
    return 1


def procflow_count(path: str, w: int) -> dict[str, int]:
    import procflow

    env = procflow.LocalEnvironment("bench_files_count")
    try:
        reader = getattr(env, "read_jsonl", None)
        if reader is None:
            raise NotImplementedError("env.read_jsonl is not in this build of procflow")
        result = (reader(path, parallelism=w).keyby(user_of).map(one, parallelism=w)
                  .reduce(operator.add, parallelism=w).collect())
        common.submit_with_watchdog(env, JOB_TIMEOUT)
        return dict(result.results())
    finally:
        env.close()


# -- contenders: lines ---------------------------------------------------------------------------------

def plain_lines(path: str) -> tuple[int, int]:
    """(lines, characters with line endings)."""
    lines = chars = 0
    with open(path) as f:
        for line in f:
            lines += 1
            chars += len(line)
    return lines, chars


class LineTally(SinkFunction):
    """Counts lines and characters in the sink's task; writes them to a file the driver reads."""

    def __init__(self, path: str) -> None:
        self.path = path

    def open(self) -> None:
        self.lines = self.chars = 0

    def execute(self, line: str) -> None:
        self.lines += 1
        self.chars += len(line)

    def close(self) -> None:
        with open(self.path, "w") as f:
            json.dump([self.lines, self.chars], f)


def procflow_lines(path: str, tally_path: str) -> tuple[int, int]:
    """(lines, characters with line endings): read_text drops the "\\n" of each line, so add it back."""
    import procflow

    env = procflow.LocalEnvironment("bench_files_lines")
    try:
        reader = getattr(env, "read_text", None)
        if reader is None:
            raise NotImplementedError("env.read_text is not in this build of procflow")
        reader(path, parallelism=1).sink(LineTally, tally_path)
        common.submit_with_watchdog(env, JOB_TIMEOUT)
    finally:
        env.close()
    with open(tally_path) as f:
        lines, chars = json.load(f)
    os.unlink(tally_path)
    return lines, chars + lines


# -- driver --------------------------------------------------------------------------------------------

def verified(name: str, what: str, run: Callable[[], Any], want: list) -> Callable[[], float]:
    """One timed run; its answer must equal the reference, which the plain contender (run first in the
    first round) defines."""
    def once() -> float:
        started = time.perf_counter()
        got = run()
        seconds = time.perf_counter() - started
        if not want:
            if not name.startswith("plain"):
                raise RuntimeError("no plain reference answer to verify against")
            want.append(got)
        common.verify(name, what, got, want[0])
        return seconds
    return once


def targets(doc: dict, w: int) -> list[dict]:
    def median(case: str, name: str) -> float | None:
        return doc["cases"].get(case, {}).get("contenders", {}).get(name, {}).get("median")

    pf = median("count", "procflow")
    vs_plain = common.ratio(median("count", "plain"), pf)
    vs_pool = common.ratio(median("count", "mp.Pool"), pf)
    lines = common.ratio(median("lines", "plain-lines"), median("lines", "procflow-read_text"))
    rows = [("count: procflow vs plain", vs_plain, TARGET_PER_CORE * w, f"({TARGET_PER_CORE} x {w} cores)"),
            ("count: procflow vs mp.Pool", vs_pool, TARGET_VS_POOL, "(at or ahead)"),
            ("lines: read_text vs plain loop", lines, TARGET_READ_TEXT, "(one instance)")]
    return [{"name": name, "value": v, "goal": f">= {goal:.2f} {why}", "met": None if v is None else v >= goal}
            for name, v, goal, why in rows]


def _report(round_index: int, name: str, seconds: float | None) -> None:
    shown = "failed" if seconds is None else f"{seconds:.3f} s"
    print(f"  round {round_index + 1}  {name:20s} {shown}", flush=True)


def main(argv: list[str] | None = None) -> dict:
    parser = common.base_parser("python -m bench.files", __doc__, default_runs=DEFAULT_RUNS)
    parser.add_argument("--mb", type=float, default=None,
                        help=f"size of the JSONL file in MB (default {DEFAULT_MB:g}; {QUICK_MB:g} with --quick)")
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help="distinct keys")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="W (default: cores)")
    parser.add_argument("--ranges-per-worker", type=int, default=RANGES_PER_WORKER,
                        help="byte ranges per worker for the Pool version")
    parser.add_argument("--cases", default=",".join(CASES), help="comma list of: " + ", ".join(CASES))
    parser.add_argument("--dir", default=None, help="where the private temporary folder goes")
    parser.add_argument("--no-procflow", action="store_true", help="run the peers only")
    args = parser.parse_args(argv)
    w = args.workers
    runs = 1 if args.quick and args.runs == DEFAULT_RUNS else args.runs
    mb = args.mb or (QUICK_MB if args.quick else DEFAULT_MB)
    shm_before = common.shm_entries()

    doc: dict[str, Any] = {"params": {"runs": runs, "quick": args.quick, "workers": w, "users": args.users,
                                      "ranges_per_worker": args.ranges_per_worker},
                           "cases": {}, "skipped": {}, "failed": {}}
    procflow_mod = common.procflow_unless(args.no_procflow, doc)

    tmp = tempfile.mkdtemp(prefix="procflow_bench_files_", dir=args.dir)   # mode 0700: ours alone
    try:
        path = os.path.join(tmp, "logs.jsonl")
        started = time.perf_counter()
        n_lines, n_bytes = write_jsonl(path, mb, args.users)
        print(f"wrote {n_lines:,} lines, {n_bytes / 1e6:.0f} MB in {time.perf_counter() - started:.1f} s; "
              f"W={w}, {runs} round(s)")
        doc["params"].update(lines=n_lines, bytes=n_bytes)
        settle = None if args.quick else common.wait_for_quiet
        for case in args.cases.split(","):
            want: list = []
            if case == "count":
                fns = {"plain": verified("plain", "counts per user", functools.partial(plain_count, path), want),
                       "mp.Pool": verified("mp.Pool", "counts per user",
                                           functools.partial(pool_count, path, w, args.ranges_per_worker), want)}
                if procflow_mod is not None:
                    fns["procflow"] = verified("procflow", "counts per user",
                                               functools.partial(procflow_count, path, w), want)
            else:
                what = "(lines, characters)"
                fns = {"plain-lines": verified("plain-lines", what, functools.partial(plain_lines, path), want)}
                if procflow_mod is not None:
                    tally = os.path.join(tmp, "tally.json")
                    fns["procflow-read_text"] = verified("procflow-read_text", what,
                                                         functools.partial(procflow_lines, path, tally), want)
            print(f"\ncase {case}")
            results, failures = common.interleaved(fns, runs, progress=_report, settle=settle)
            for name, exc in failures.items():
                msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                print(f"  {name}: FAILED/SKIPPED: {msg}")
                doc["skipped" if isinstance(exc, NotImplementedError) else "failed"][f"{case}/{name}"] = msg
            for m in results.values():
                m["lines_per_s"] = n_lines / m["median"]
                m["mb_per_s"] = n_bytes / m["median"] / 1e6
            doc["cases"][case] = {"contenders": results}
            common.print_table(f"{case}: {n_bytes / 1e6:.0f} MB, {n_lines:,} lines, W={w} (median of {runs})",
                               ["contender", "seconds", "lines/s", "MB/s"],
                               [[k, m["median"], m["lines_per_s"], m["mb_per_s"]] for k, m in results.items()])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    doc["targets"] = targets(doc, w)
    common.print_table("targets", *common.target_table(doc["targets"]))
    doc["leaks"] = common.leak_report(shm_before)
    if not args.no_save:
        common.write_result("files", doc)
    return doc


if __name__ == "__main__":
    main(sys.argv[1:])
