"""Soak: many small records through a four-stage pipeline (source -> map -> filter -> keyed tally, then
a collect of one total per tally instance), every stage with parallelism 2. Checks the counts exactly
and that the resident memory of every process stays flat after warm-up; prints RSS samples per process.

    python -m bench.soak                   # 10 million records (make soak)
    python -m bench.soak --records 200000  # quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

from procflow import FlatMapFunction, LocalEnvironment
from procflow.testing import child_pids, mp_helper_pids

PARALLELISM = 2
PAGE = os.sysconf("SC_PAGE_SIZE")


class Tally(FlatMapFunction):
    """Stage 4: counts records and sums values per instance; emits one (count, sum) at end of input."""

    def open(self) -> None:
        self.count = self.total = 0

    def execute(self, record: Any) -> None:
        self.count += 1
        self.total += record

    def handle_stop_signal(self, signal: Any) -> list:
        return [(self.count, self.total)]


def expected(n: int) -> tuple[int, int]:
    """Records surviving the filter (x * 3 not divisible by 5, i.e. x % 5 != 0) and the sum of x * 3."""
    dropped = (n + 4) // 5                 # x in range(n) with x % 5 == 0
    total = 3 * (n * (n - 1) // 2 - 5 * ((dropped - 1) * dropped // 2))
    return n - dropped, total


def rss_mb(pid: int) -> tuple[float, float] | None:
    """(private, shared) resident MB of `pid`. Shared pages are ring memory, bounded by the ring size and
    filled as the rings are first used; private pages are where a leak would show."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("RssAnon", "RssShmem")))
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        return int(fields["RssAnon"].split()[0]) / 1024, int(fields["RssShmem"].split()[0]) / 1024
    except (KeyError, ValueError):
        return None


def run(records: int, sample_every: float = 0.5, env_dir: str | None = None,
        out=sys.stdout) -> dict[str, Any]:
    # None: the environment's private per-user log folder (a shared $TMPDIR/procflow-soak was open to
    # the symlink games of issue 22).
    env = LocalEnvironment("soak", env_dir=env_dir)
    tallies = (env.from_batch(range(records), parallelism=PARALLELISM, name="source")
                  .map(lambda x: x * 3, parallelism=PARALLELISM, name="triple")
                  .filter(lambda y: y % 5 != 0, parallelism=PARALLELISM, name="drop5")
                  .keyby(lambda y: y % 1024)
                  .flatmap(Tally, parallelism=PARALLELISM, name="tally")
                  .collect())
    started = time.monotonic()
    job = env.submit(autostop=False)
    pids = {name: m["pid"] for name, m in job.metrics.items()}
    pids["driver"] = os.getpid()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in pids}
    shared: dict[str, float] = dict.fromkeys(pids, 0.0)
    try:
        while True:
            now = time.monotonic() - started
            for name, pid in pids.items():
                value = rss_mb(pid)
                if value is not None:
                    samples[name].append((now, value[0]))
                    shared[name] = max(shared[name], value[1])
            try:
                job.wait(sample_every)  # sampling interval; returns when the job ends
                break
            except TimeoutError:
                continue
    finally:
        env.close()
    elapsed = time.monotonic() - started
    # multiprocess's resource tracker (which the test suite starts up front) lives as long as this
    # process by design: not a leftover of the job.
    assert not child_pids() - {os.getpid()} - mp_helper_pids(), "soak left processes behind"
    results = tallies.results()
    count, total = sum(c for c, _ in results), sum(s for _, s in results)
    want_count, want_total = expected(records)
    report = {"records": records, "elapsed_s": elapsed, "rate_rps": records / elapsed, "count": count,
              "total": total, "expected_count": want_count, "expected_total": want_total,
              "counts_exact": (count, total) == (want_count, want_total) and len(results) == PARALLELISM,
              "rss": {}}
    for name, series in samples.items():
        report["rss"][name] = {**flatness(series), "shared_peak_mb": shared[name]}
    print_report(report, out)
    return report


def flatness(series: list[tuple[float, float]]) -> dict[str, float]:
    """RSS after warm-up (the first quarter of the run): median of the first and last thirds of it."""
    if not series:
        return {"samples": 0, "early_mb": 0.0, "late_mb": 0.0, "growth_mb": 0.0, "peak_mb": 0.0}
    end = series[-1][0]
    steady = [v for t, v in series if t >= end / 4] or [series[-1][1]]
    third = max(len(steady) // 3, 1)
    early, late = statistics.median(steady[:third]), statistics.median(steady[-third:])
    return {"samples": len(series), "early_mb": early, "late_mb": late, "growth_mb": late - early,
            "peak_mb": max(v for _, v in series)}


def print_report(report: dict[str, Any], out) -> None:
    print(f"soak: {report['records']:,} records in {report['elapsed_s']:.1f}s "
          f"({report['rate_rps']:,.0f} records/s); tally count {report['count']:,} "
          f"(expected {report['expected_count']:,}), sum {report['total']:,} (expected "
          f"{report['expected_total']:,}): {'EXACT' if report['counts_exact'] else 'MISMATCH'}", file=out)
    print("private resident memory (RssAnon) after warm-up, and the peak of shared ring pages (RssShmem):",
          file=out)
    print(f"{'process':<12}{'samples':>8}{'early MB':>10}{'late MB':>10}{'growth':>9}{'peak MB':>10}"
          f"{'shm MB':>9}", file=out)
    for name, r in sorted(report["rss"].items()):
        print(f"{name:<12}{r['samples']:>8}{r['early_mb']:>10.1f}{r['late_mb']:>10.1f}"
              f"{r['growth_mb']:>+9.1f}{r['peak_mb']:>10.1f}{r['shared_peak_mb']:>9.1f}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--max-growth-mb", type=float, default=20.0,
                        help="fail if any process's private RSS grows more than this after warm-up")
    args = parser.parse_args(argv)
    report = run(args.records, sample_every=1.0 if args.records >= 1_000_000 else 0.2)
    grown = {k: v["growth_mb"] for k, v in report["rss"].items() if v["growth_mb"] > args.max_growth_mb}
    if not report["counts_exact"]:
        print("FAIL: counts are not exact", file=sys.stderr)
        return 1
    if grown:
        print(f"FAIL: resident memory grew after warm-up: {grown}", file=sys.stderr)
        return 1
    print("OK: exact counts, flat memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
