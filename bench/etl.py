"""ETL: the everyday batch job of issue 19, a CSV group-by, against the plain Python loop it replaces.

The file: N lines `id,user<k>,value,text` (1,000,000 lines and 50 keys by default, about 40 MB;
`--mb 200` writes the 200 MB variant), generated once per run into a private temporary folder that is
removed at the end.

Two pipeline shapes, each with its own plain reference:

  natural   parse, keyby(user), map(value), reduce(add)           (the pipeline the issue timed)
  5-stage   parse, filter(value % 7), map(weigh), keyby(user), reduce(add)

Contenders (every answer must equal the plain loop's, key for key):

  plain                 one Python process: `for line in open(path)`, a dict, no framework; the inner
                        loop written inline, as a user who wants speed writes it
  procflow-read_text    env.read_text(path) ... .collect(), every operator at parallelism = cores; the
                        source's parallelism is left to procflow (it follows its work, issue 19), or set
                        to cores with --source-parallelism
  procflow-from_batch   env.from_batch(open(path)) ... the same operators: what users write while
                        there is no file source

Timings cover the whole job as a user waits for it: building the pipeline, starting and stopping its
processes, reading the file (warm in the page cache after the first round) and holding the answer.
Contenders run in shuffled rounds (bench.common.interleaved); medians of 11 rounds by default.
Target (issue 19): procflow at least 0.85 x cores times as fast as the plain loop.
"""

from __future__ import annotations

import functools
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

JOB_TIMEOUT = 600.0
DEFAULT_LINES = 1_000_000
QUICK_LINES = 20_000
DEFAULT_KEYS = 50
DEFAULT_RUNS = 11
TARGET_PER_CORE = 0.85
SOURCES = ("read_text", "from_batch")
SHAPES = ("natural", "5-stage")
_WORDS = ("alpha beta gamma delta error warning info debug request response timeout retry cache "
          "miss hit user session login logout upload download").split()


# -- the data ------------------------------------------------------------------------------------------

def csv_lines(n: int, keys: int = DEFAULT_KEYS, seed: int = 19, start: int = 0):
    """Lines `id,user<k>,value,text\\n`, deterministic in (seed, start): ids from `start`, values
    0..999, a text of 2 to 8 words (no commas, so the text is always the fourth field)."""
    rng = random.Random(seed * 1_000_003 + start)
    for i in range(start, start + n):
        text = " ".join(rng.choices(_WORDS, k=rng.randint(2, 8)))
        yield f"{i},user{rng.randrange(keys)},{rng.randrange(1000)},{text}\n"


def write_csv(path: str, lines: int | None, mb: float | None = None, keys: int = DEFAULT_KEYS) -> tuple[int, int]:
    """Write the file: `lines` lines, or (with `mb`) lines until it holds at least `mb` MB.
    Returns (lines, bytes)."""
    limit = None if mb is None else int(mb * 1e6)
    written = size = 0
    block = 100_000
    with open(path, "w") as f:
        while (limit is None and written < (lines or 0)) or (limit is not None and size < limit):
            count = block if limit is not None else min(block, (lines or 0) - written)
            chunk = "".join(csv_lines(count, keys, start=written))
            f.write(chunk)
            written += count
            size += len(chunk)   # ASCII: characters are bytes
    return written, size


# -- the job's functions (module level, so they ship under spawn and to Ray as well) -------------------

def parse(line: str) -> tuple[str, int]:
    """(user, value) of one line, with or without its line ending (the text field takes it)."""
    _id, user, value, _text = line.split(",", 3)
    return user, int(value)


def kept(record: tuple[str, int]) -> bool:
    return record[1] % 7 != 0


def weigh(record: tuple[str, int]) -> tuple[str, int]:
    return record[0], record[1] * 3 + 1


def add_weight(total: tuple[str, int], record: tuple[str, int]) -> tuple[str, int]:
    return total[0], total[1] + record[1]


user_of = operator.itemgetter(0)
value_of = operator.itemgetter(1)


# -- contenders ----------------------------------------------------------------------------------------

def plain_natural(path: str) -> dict[str, int]:
    totals: dict[str, int] = {}
    get = totals.get
    with open(path) as f:
        for line in f:
            _id, user, value, _text = line.split(",", 3)
            totals[user] = get(user, 0) + int(value)
    return totals


def plain_5stage(path: str) -> dict[str, int]:
    totals: dict[str, int] = {}
    get = totals.get
    with open(path) as f:
        for line in f:
            _id, user, value, _text = line.split(",", 3)
            v = int(value)
            if v % 7:
                totals[user] = get(user, 0) + v * 3 + 1
    return totals


PLAIN: dict[str, Callable[[str], dict[str, int]]] = {"natural": plain_natural, "5-stage": plain_5stage}


def build(env: Any, stream: Any, shape: str, w: int) -> Any:
    """The operators after the source, written as a user writes them; returns the collect handle."""
    parsed = stream.map(parse, parallelism=w)
    if shape == "natural":
        return parsed.keyby(user_of).map(value_of, parallelism=w).reduce(operator.add, parallelism=w).collect()
    weighed = parsed.filter(kept, parallelism=w).map(weigh, parallelism=w)
    return weighed.keyby(user_of).reduce(add_weight, parallelism=w).collect()


def answer(shape: str, pairs: list[tuple[str, Any]]) -> dict[str, int]:
    """The collected (key, value) pairs as {user: total}; the 5-stage reduce folds (user, total)."""
    if shape == "natural":
        return dict(pairs)
    return {key: value[1] for key, value in pairs}


def run_procflow(path: str, shape: str, w: int, source: str, source_parallelism: int | None) -> dict[str, int]:
    import procflow

    env = procflow.LocalEnvironment(f"bench_etl_{source}")
    f = None
    try:
        if source == "read_text":
            reader = getattr(env, "read_text", None)
            if reader is None:
                raise NotImplementedError("env.read_text is not in this build of procflow")
            kwargs = {} if source_parallelism is None else {"parallelism": source_parallelism}
            stream = reader(path, **kwargs)
        else:
            f = open(path)   # noqa: SIM115 (closed below, after the job that reads it)
            stream = env.from_batch(f)
        result = build(env, stream, shape, w)
        common.submit_with_watchdog(env, JOB_TIMEOUT)
        return answer(shape, result.results())
    finally:
        env.close()
        if f is not None:
            f.close()


def verified(name: str, shape: str, run: Callable[[], dict[str, int]], want: dict[str, dict[str, int]]):
    """One timed run as a no-argument callable; its answer must equal the plain loop's (which, run
    first in the first round, defines it)."""
    def once() -> float:
        started = time.perf_counter()
        got = run()
        seconds = time.perf_counter() - started
        if shape not in want:
            if name != "plain":
                raise RuntimeError("no plain reference answer to verify against")
            want[shape] = got
        common.verify(name, f"{shape} totals per user", got, want[shape])
        return seconds
    return once


# -- report --------------------------------------------------------------------------------------------

def derive(case: dict, w: int) -> None:
    """Speed-up over the plain loop and per core, for every contender of one shape."""
    plain = case["contenders"].get("plain", {}).get("median")
    for m in case["contenders"].values():
        m["speedup"] = common.ratio(plain, m["median"])
        m["per_core"] = common.ratio(m["speedup"], w)


def targets(doc: dict, w: int) -> list[dict]:
    """Issue 19: each procflow contender >= 0.85 x cores times as fast as the plain loop."""
    goal = TARGET_PER_CORE * w
    out = []
    for shape, case in doc["shapes"].items():
        for name, m in case["contenders"].items():
            if name == "plain":
                continue
            su = m.get("speedup")
            out.append({"name": f"{shape}: {name} vs plain", "value": su,
                        "goal": f">= {goal:.2f} ({TARGET_PER_CORE} x {w} cores)",
                        "met": None if su is None else su >= goal})
    return out


def _report(round_index: int, name: str, seconds: float | None) -> None:
    shown = "failed" if seconds is None else f"{seconds:.3f} s"
    print(f"  round {round_index + 1}  {name:20s} {shown}", flush=True)


def main(argv: list[str] | None = None) -> dict:
    parser = common.base_parser("python -m bench.etl", __doc__, default_runs=DEFAULT_RUNS)
    parser.add_argument("--lines", type=int, default=None,
                        help=f"CSV lines (default {DEFAULT_LINES:,}; {QUICK_LINES:,} with --quick)")
    parser.add_argument("--mb", type=float, default=None, help="write lines until the file holds this many "
                        "MB (200 for the issue's large variant); overrides --lines")
    parser.add_argument("--keys", type=int, default=DEFAULT_KEYS, help="distinct users")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="parallelism (default: cores)")
    parser.add_argument("--sources", default=",".join(SOURCES), help="comma list of: " + ", ".join(SOURCES))
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma list of: " + ", ".join(SHAPES))
    parser.add_argument("--source-parallelism", type=int, default=None,
                        help="pass parallelism= to read_text (default: leave it to procflow)")
    parser.add_argument("--dir", default=None, help="where the private temporary folder goes")
    parser.add_argument("--no-procflow", action="store_true", help="run the plain loop only")
    args = parser.parse_args(argv)
    w = args.workers
    runs = 1 if args.quick and args.runs == DEFAULT_RUNS else args.runs
    lines = args.lines or (QUICK_LINES if args.quick else DEFAULT_LINES)
    shm_before = common.shm_entries()

    doc: dict[str, Any] = {"params": {"runs": runs, "quick": args.quick, "workers": w, "keys": args.keys,
                                      "source_parallelism": args.source_parallelism},
                           "shapes": {}, "skipped": {}, "failed": {}}
    procflow_mod = common.procflow_unless(args.no_procflow, doc)

    tmp = tempfile.mkdtemp(prefix="procflow_bench_etl_", dir=args.dir)   # mode 0700: ours alone
    try:
        path = os.path.join(tmp, "events.csv")
        started = time.perf_counter()
        n_lines, n_bytes = write_csv(path, None if args.mb else lines, args.mb, args.keys)
        print(f"wrote {n_lines:,} lines, {n_bytes / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s; "
              f"W={w}, {runs} round(s)")
        doc["params"].update(lines=n_lines, bytes=n_bytes)
        # A quick smoke run must not wait up to 10 s per run for a quiet CPU on a busy machine.
        settle = None if args.quick else common.wait_for_quiet
        for shape in args.shapes.split(","):
            want: dict[str, dict[str, int]] = {}
            fns = {"plain": verified("plain", shape, functools.partial(PLAIN[shape], path), want)}
            if procflow_mod is not None:
                for source in args.sources.split(","):
                    name = f"procflow-{source}"
                    run = functools.partial(run_procflow, path, shape, w, source, args.source_parallelism)
                    fns[name] = verified(name, shape, run, want)
            print(f"\nshape {shape}")
            results, failures = common.interleaved(fns, runs, progress=_report, settle=settle)
            for name, exc in failures.items():
                msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                print(f"  {name}: FAILED/SKIPPED: {msg}")
                doc["skipped" if isinstance(exc, NotImplementedError) else "failed"][f"{shape}/{name}"] = msg
            case = doc["shapes"][shape] = {"contenders": results}
            derive(case, w)
            common.print_table(f"{shape}: {n_lines:,} lines, W={w} (median of {runs})",
                               ["contender", "seconds", "speed-up vs plain", "per core"],
                               [[k, m["median"], m["speedup"], m["per_core"]] for k, m in results.items()])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    doc["targets"] = targets(doc, w)
    common.print_table("targets", *common.target_table(doc["targets"]))
    doc["leaks"] = common.leak_report(shm_before)
    if not args.no_save:
        common.write_result("etl", doc)
    return doc


if __name__ == "__main__":
    main(sys.argv[1:])
