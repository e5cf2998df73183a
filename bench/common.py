"""Shared helpers for the benchmarks: machine facts, timing, verification, result files, tables.

Every benchmark follows the same rules, enforced here so each script stays short:

* a contender's output is checked (count and checksum) before its time is kept: `verify()` raises;
* every run's raw time is stored next to the median, with the machine it ran on, in
  ``bench/results/<name>.json``;
* after a benchmark, `leak_report()` lists child processes and ``/dev/shm`` entries that outlived it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import multiprocessing
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("procflow", "numpy", "msgpack", "multiprocess", "mpire", "faster-fifo", "ray", "matplotlib")


class VerificationError(AssertionError):
    """A contender produced a wrong result; its time must not be reported."""


def verify(contender: str, what: str, got: Any, want: Any) -> None:
    """Raise unless `got == want`. Used on counts, checksums and byte totals."""
    if got != want:
        raise VerificationError(f"{contender}: wrong {what}: got {got!r}, expected {want!r}")


# -- machine ------------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info() -> dict[str, Any]:
    """Facts that decide whether two result files are comparable."""
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "mem_total_mb": _meminfo_mb("MemTotal"),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "start_method": multiprocessing.get_start_method(allow_none=True)
        or multiprocessing.get_context().get_start_method(),
        "packages": package_versions(),
    }


def _meminfo_mb(field: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


# -- timing -------------------------------------------------------------------------------------------

def median_of(fn: Callable[[], float | None], runs: int, warmup: int = 0) -> dict[str, Any]:
    """Call `fn` `warmup + runs` times; `fn` returns its own measured seconds, or None to be timed here.

    Letting `fn` report its own time lets a contender exclude set-up it does not want counted (for
    example process start-up when measuring steady-state throughput). `fn` must verify its output.
    """
    times = []
    for i in range(warmup + runs):
        started = time.perf_counter()
        measured = fn()
        elapsed = time.perf_counter() - started if measured is None else measured
        if i >= warmup:
            times.append(elapsed)
    return {"times": times, "median": statistics.median(times)}


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)


def wait_for_quiet(idle_share: float = 0.9, window: float = 0.2, timeout: float = 10.0) -> float:
    """Wait until the machine's CPUs are at least `idle_share` idle over `window` seconds.

    A contender must not start while the last one is still winding down: Ray, for one, restarts its
    worker processes after actors are killed, and whoever ran next lost a core to that for a second or
    two. Returns the seconds waited (at most `timeout`, after which we go on regardless). Linux only;
    elsewhere returns at once.
    """
    if not os.path.exists("/proc/stat"):
        return 0.0
    started = time.monotonic()
    quiet = 0
    while time.monotonic() - started < timeout and quiet < 2:   # two quiet windows in a row
        idle0, total0 = _cpu_times()
        time.sleep(window)   # sampling the CPU counters over a window, not synchronisation
        idle1, total1 = _cpu_times()
        quiet = quiet + 1 if total1 > total0 and (idle1 - idle0) / (total1 - total0) >= idle_share else 0
    return time.monotonic() - started


def interleaved(fns: dict[str, Callable[[], float | None]], runs: int, *,
                progress: Callable[[int, str, float | None], None] | None = None,
                settle: Callable[[], object] | None = wait_for_quiet,
                ) -> tuple[dict[str, dict[str, Any]], dict[str, Exception]]:
    """`median_of` for several contenders at once, run in rounds: every contender once per round.

    Running each contender's runs back to back lets slow drift of a shared machine (another tenant, the
    host's clock speed) land on one contender and not the next, which made ratios swing by a third
    between two runs of the same bench. Rounds spread the drift over all of them. The first round keeps
    the given order (a reference contender can go first); later rounds are shuffled (seeded, so runs
    repeat), because a fixed order gives each contender a fixed predecessor, and on this VM a run
    right after another contender's burned up to 15% more CPU than the same run after its own.

    `settle` runs before every run (by default: wait until the CPUs are quiet).

    Returns (results, failures): a contender that raises anything but VerificationError is dropped and
    its exception kept in `failures`; a VerificationError (a wrong result) propagates.
    """
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    failures: dict[str, Exception] = {}
    for r in range(runs):
        order = list(names)
        if r:
            random.Random(r).shuffle(order)
        for name in order:
            if name in failures:
                continue
            if settle is not None:
                settle()
            started = time.perf_counter()
            try:
                measured = fns[name]()
            except VerificationError:
                raise
            except Exception as exc:
                failures[name] = exc
                if progress is not None:
                    progress(r, name, None)
                continue
            elapsed = time.perf_counter() - started if measured is None else measured
            times[name].append(elapsed)
            if progress is not None:
                progress(r, name, elapsed)
    results = {name: {"times": t, "median": statistics.median(t)}
               for name, t in times.items() if name not in failures and t}
    return results, failures


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


# -- procflow availability ----------------------------------------------------------------------------

def import_procflow() -> tuple[Any, str | None]:
    """Returns (module, None) when procflow's public API imports, else (None, why)."""
    try:
        import procflow

        procflow.LocalEnvironment  # noqa: B018  (the package may exist before its API does)
        return procflow, None
    except Exception as exc:  # any failure means "skip with a note"
        return None, f"{type(exc).__name__}: {exc}"


def procflow_unless(disabled: bool, doc: dict[str, Any]) -> Any:
    """procflow's module for a bench's procflow contenders, or None (`--no-procflow`, or it does not
    import), with the reason noted in `doc["skipped"]` and printed."""
    module, why = (None, "disabled by --no-procflow") if disabled else import_procflow()
    if module is None:
        doc["skipped"]["procflow"] = why
        print(f"NOTE: procflow contenders skipped ({why})")
    return module


def submit_with_watchdog(env: Any, timeout: float) -> Any:
    """`env.submit(autostop=True)`, but a job still running after `timeout` seconds is killed.

    A hung contender must fail loudly (JobFailedError from submit) instead of stalling the suite.
    """
    import threading

    def kill() -> None:
        job = getattr(env, "job", None)
        if job is not None and getattr(job, "running", False):
            print(f"WARNING: watchdog: job still running after {timeout:.0f}s; killing it", file=sys.stderr)
            job.kill(f"benchmark watchdog: still running after {timeout:.0f}s")

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    try:
        return env.submit(autostop=True)
    finally:
        timer.cancel()


# -- leaks --------------------------------------------------------------------------------------------

def child_pids(root: int | None = None) -> list[int]:
    """All live descendants of `root` (default: this process), found through /proc."""
    root = os.getpid() if root is None else root
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] == "Z":
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def shm_entries() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


def leak_report(shm_before: set[str], grace: float = 5.0) -> dict[str, list]:
    """Children and /dev/shm entries still present after a benchmark (waits up to `grace` seconds)."""
    deadline = time.monotonic() + grace
    while True:
        # The stdlib's resource tracker (started by the first spawned helper, e.g. the Ray runs' driver
        # process) belongs to this process and ends with it: not a leftover of any contender.
        kids = [p for p in child_pids() if "multiprocessing.resource_tracker" not in _cmdline(p)]
        new_shm = leftover_shm(shm_before, shm_entries(), os.getpid())
        if (not kids and not new_shm) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    report = {"leftover_processes": [_cmdline(p) for p in kids], "leftover_shm": new_shm}
    if kids or new_shm:
        print(f"WARNING: leftovers after benchmark: {report}", file=sys.stderr)
    return report


def leftover_shm(before: set[str], after: set[str], pid: int) -> list[str]:
    """The /dev/shm entries in `after` but not `before` that a benchmark in process `pid` left behind.

    Other procflow drivers on the machine create segments too: count only our own (procflow names
    carry the owner pid) and anything that is not procflow's. Our driver's owner lock file
    (`procflow_<pid>_<token>.lock`) lives as long as this process by design and goes at exit: it is no
    leftover, and reporting it had every bench warn after its first procflow job.
    """
    mine = f"procflow_{pid}_"
    return sorted(e for e in after - before
                  if (e.startswith(mine) and not e.endswith(".lock")) or not e.startswith("procflow_"))


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f"{pid}: " + f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return f"{pid}: ?"


# -- /proc memory -------------------------------------------------------------------------------------

def proc_memory_kb(pid: int) -> dict[str, int] | None:
    """Rss/Pss/private kB of one process from smaps_rollup (None if it has gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
    except OSError:
        return None
    vals = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            vals[parts[0][:-1]] = int(parts[1])
    return {"rss": vals.get("Rss", 0), "pss": vals.get("Pss", 0),
            "private": vals.get("Private_Clean", 0) + vals.get("Private_Dirty", 0)}


def rss_kb(pid: int) -> int | None:
    """Cheap RSS read (statm), for samplers that poll often."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, IndexError, ValueError):
        return None


# -- CLI, results, tables -----------------------------------------------------------------------------

def base_parser(prog: str, description: str, default_runs: int | None = 3) -> argparse.ArgumentParser:
    """`default_runs=None`: the bench picks the number of runs per case (shown in its description)."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    shown = "per case" if default_runs is None else default_runs
    parser.add_argument("--runs", type=int, default=default_runs,
                        help=f"timed runs per contender; the median is reported (default {shown})")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: a smoke run that checks every contender works, not a measurement")
    parser.add_argument("--no-save", action="store_true", help="print only; do not write bench/results/")
    return parser


def write_result(name: str, payload: dict[str, Any]) -> str:
    """Save `payload` (plus machine info and a timestamp) as bench/results/<name>.json."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    doc = {"benchmark": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "machine": machine_info(), **payload}
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=_json_default)
    os.replace(tmp, path)
    print(f"wrote {os.path.relpath(path, REPO_ROOT)}")
    return path


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    return str(obj)


def fmt(value: Any, digits: int = 3) -> str:
    """Compact number formatting for tables: 12.3k, 4.56M, 0.012, 'n/a'."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    v = float(value)
    if 1000 <= abs(v) < 1e4:
        return f"{v:.0f}"
    for limit, unit, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if abs(v) >= limit:
            return f"{v / unit:.{digits}g}{suffix}"
    return f"{v:.{digits}g}"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Fixed-width text table; numbers go through `fmt`."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        padded = (c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        print("  ".join(padded))


def target_note(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "MISSED")


def target_table(targets: Sequence[dict]) -> tuple[list[str], list[list[Any]]]:
    """(headers, rows) of a benchmark's targets, printed and in the README alike. A "rounds faster"
    column (CPU scaling's paired view beside the medians) appears when some target has one."""
    headers = ["target", "value", "goal", "status"]
    rows = [[t["name"], t["value"], t["goal"], target_note(t["met"])] for t in targets]
    if any(t.get("rounds_faster") for t in targets):
        headers.append("rounds faster")
        for row, t in zip(rows, targets):
            row.append(t.get("rounds_faster") or "")
    return headers, rows
