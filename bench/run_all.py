"""Run every benchmark (each in its own Python process, so one cannot disturb the next), then plot.

    python -m bench.run_all            # full run, an hour or more on 2 cores
    python -m bench.run_all --quick    # smoke run of every contender
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench import common

BENCHMARKS = ("channels", "cpu_scaling", "startup", "memory", "services", "etl", "files")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma list of benchmarks to run")
    args = parser.parse_args(argv)
    failed = []
    for name in args.only.split(","):
        cmd = [sys.executable, "-m", f"bench.{name}", *(["--quick"] if args.quick else [])]
        print(f"\n=== {' '.join(cmd[1:])}", flush=True)
        started = time.perf_counter()
        rc = subprocess.call(cmd, cwd=common.REPO_ROOT)
        print(f"=== {name}: exit {rc} after {time.perf_counter() - started:.0f} s", flush=True)
        if rc:
            failed.append(name)
    subprocess.call([sys.executable, "-m", "bench.plot"], cwd=common.REPO_ROOT)
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
