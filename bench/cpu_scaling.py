"""CPU scaling: N independent records, each a fixed amount of pure-Python work, spread over W workers.

The work function `spin` is a loop whose count is calibrated at start-up so that one call takes the
chosen grain (1 ms by default; the 20 us grain stresses per-record overhead instead of compute). The
2 us grain is a `map` then a `filter` (`keep`: a third of the results go) then collect: there a
record's own cost is smaller than moving it, and Pool pays its per-item pickling.

Contenders (all use W worker processes, all results checked against the sequential run):

  sequential        a list comprehension in this process: the baseline for every speed-up
  mp.Pool.imap      multiprocessing.Pool(W).imap(fn, range(N), chunksize=N // (c W)), each chunking
                    c of POOL_CHUNKS a contender of its own (`mp.Pool.imap[c/W]`); the table shows the
                    faster as `mp.Pool.imap`. At the 2 us grain the driver filters the results as they
                    arrive (Pool has no filter).
  mpire             mpire.WorkerPool(W).map(fn, range(N), chunk_size=N // (32 W))
  ray               local ray.init(num_cpus=W); the fastest of chunked tasks (`ray-tasks[c/W]`: N cut
                    into c W ranges, each c of RAY_CHUNKS; the faster is `ray-tasks`) and W actors
  procflow          LocalEnvironment: from_batch(range(N)).map(fn, parallelism=W).collect() (and
                    .filter(keep, parallelism=W) before the collect at 2 us): the pipeline as users
                    write it, distribution left to procflow
  procflow-balance  the same with .balance() before the map: records go to whichever map is free
  procflow-ray      RayEnvironment, same pipeline (skipped with a note when unavailable)
  procflow-ray-before   with `--before ROOT`: procflow-ray on the procflow found in ROOT (another checkout,
                    e.g. `git worktree add ROOT main`), in the same rounds: before/after from one run

Timings include creating and tearing down each contender's worker processes (a Pool, a WorkerPool, a
procflow job), except Ray's cluster start (several seconds), and end once every result is held in the
driver, as a list. The checksum that verifies them is taken after the clock stops: Pool.imap hands
results over while its workers compute, procflow's collect() when the job ends, so a checksum inside
the clock (9 ms for 100,000 results) hid in Pool's run and counted in full against procflow's.

Each Ray run gets a Ray instance of its own, in a freshly spawned process (`ray_runner`): started,
warmed up and settled before its clock starts, shut down after it stops. So the other contenders
neither share the machine with Ray's idle daemons nor fork their workers from a process that has
called ray.init.

Contenders run in rounds (each once per round, in shuffled order), so that the drift of a shared
machine spreads over all of them. Speed-up = sequential median / contender median; efficiency =
speed-up / W.
"""

from __future__ import annotations

import functools
import importlib.util
import multiprocessing
import os
import statistics
import sys
import time
from typing import Any, NamedTuple

from bench import common

CTX = multiprocessing.get_context("fork")
# grain name -> (seconds per call, N, N with --quick, runs). The 20 us runs last about a second each, so
# they take more of them: at that length a run is at the mercy of the machine's moment-to-moment noise.
# Five 1 ms rounds, not three: the same contender's 10-15 s runs still differed by up to 25%. Eleven
# 20 us rounds, not seven: with seven, sequential runs spread from 1.15 to 1.81 s in one bench, and
# identical work in two processes took 1.66 and 2.50 s of CPU seconds apart.
# Eleven 1 ms rounds, as issue 19 asks of every grain: procflow must beat Pool and Ray tasks in at least 8.
# The 2 us grain: 1,000,000 records make a sequential run of about 3 s, long enough to rise above the noise.
GRAINS = {"1ms": (1e-3, 20_000, 400, 11), "20us": (20e-6, 100_000, 4_000, 11),
          "2us": (2e-6, 1_000_000, 20_000, 11)}
# Grains whose pipeline is map, then filter, then collect (the others: map, then collect).
FILTERED_GRAINS = frozenset({"2us"})
# Chunks per worker tried for Pool and for Ray tasks: "their best chunking" (issue 19) is the faster one.
# Pool: 32 per worker balances the tail, 4 amortises the IPC; Ray tasks: each task costs about a ms.
POOL_CHUNKS = (32, 4)
RAY_CHUNKS = (8, 2)
# Issue 19: procflow must be ahead in at least WIN_SHARE of the paired rounds (8 of 11).
WIN_SHARE = (8, 11)
TARGET_2US_VS_POOL = 1.3
JOB_TIMEOUT = 600.0
MASK = (1 << 64) - 1


def spin(x: int, loops: int) -> int:
    """Pure-Python busy work (an LCG), deterministic in x so results can be checksummed."""
    acc = x
    for _ in range(loops):
        acc = (acc * 1103515245 + 12345) & 0x7FFFFFFF
    return acc


def calibrate(grain_s: float) -> int:
    """Loop count for which one `spin` call takes about `grain_s` in this process."""
    probe = 200_000
    per_loop = statistics.median(_time_spin(probe) for _ in range(5)) / probe
    return max(1, round(grain_s / per_loop))


def keep(value: int) -> bool:
    """The 2 us grain's filter: drops about a third of the results, deterministically."""
    return value % 3 != 0


class Work(NamedTuple):
    """What one record costs: `loops` of spin, then (when `filtered`) `keep`. Pickles as two numbers."""

    loops: int
    filtered: bool = False

    @property
    def fn(self) -> functools.partial:
        return functools.partial(spin, loops=self.loops)

    def results(self, values):
        """`values` (spin results), filtered by `keep` when this work filters."""
        return [v for v in values if keep(v)] if self.filtered else list(values)


def _time_spin(loops: int) -> float:
    t = time.perf_counter()
    spin(1, loops)
    return time.perf_counter() - t


def checksum(values) -> tuple[int, int]:
    """(count, sum mod 2**64): order-independent, so unordered contenders compare equal."""
    count = total = 0
    for v in values:
        count += 1
        total += v
    return count, total & MASK


# -- contenders ----------------------------------------------------------------------------------------

def run_sequential(work, n, w):
    fn = work.fn
    if work.filtered:
        return [v for x in range(n) if keep(v := fn(x))]
    return [fn(x) for x in range(n)]


def chunksize(n: int, w: int, per_worker: int = 32) -> int:
    """`per_worker` chunks per worker: more balance the tail, fewer amortise IPC."""
    return max(1, n // (per_worker * w))


def run_pool(work, n, w, per_worker=POOL_CHUNKS[0]):
    with CTX.Pool(w) as pool:
        out = work.results(pool.imap(work.fn, range(n), chunksize=chunksize(n, w, per_worker)))
        pool.close()
        pool.join()
    return out


def run_mpire(work, n, w):
    from mpire import WorkerPool

    with WorkerPool(n_jobs=w, start_method="fork") as pool:
        return work.results(pool.map(work.fn, range(n), chunk_size=chunksize(n, w), progress_bar=False))


def _spin_range(lo: int, hi: int, loops: int, filtered: bool = False) -> list[int]:
    return Work(loops, filtered).results(spin(x, loops) for x in range(lo, hi))


class _SpinActor:
    def run(self, lo: int, hi: int, loops: int, filtered: bool) -> list[int]:
        return _spin_range(lo, hi, loops, filtered)


def _chunks(n: int, w: int, per_worker: int = RAY_CHUNKS[0]):
    step = max(1, n // (per_worker * w))
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)]


def run_ray_tasks(work, n, w, per_worker=RAY_CHUNKS[0]):
    import ray

    task = ray.remote(_spin_range)
    refs = [task.remote(lo, hi, work.loops, work.filtered) for lo, hi in _chunks(n, w, per_worker)]
    return [v for part in ray.get(refs) for v in part]


def run_ray_actors(work, n, w):
    import ray

    actors = [ray.remote(_SpinActor).remote() for _ in range(w)]
    try:
        refs = [actors[i % w].run.remote(lo, hi, work.loops, work.filtered)
                for i, (lo, hi) in enumerate(_chunks(n, w))]
        return [v for part in ray.get(refs) for v in part]
    finally:
        for a in actors:
            ray.kill(a)


def run_procflow(work, n, w, env_cls_name="LocalEnvironment", balance=False):
    import procflow

    env = getattr(procflow, env_cls_name)("bench_cpu_scaling")
    try:
        stream = env.from_batch(range(n))
        if balance:
            stream = stream.balance()
        stream = stream.map(work.fn, parallelism=w)
        if work.filtered:
            stream = stream.filter(keep, parallelism=w)
        res = stream.collect()
        common.submit_with_watchdog(env, JOB_TIMEOUT)
        return res.results()
    finally:
        env.close()


def run_procflow_balance(work, n, w):
    return run_procflow(work, n, w, balance=True)


def run_procflow_ray(work, n, w):
    return run_procflow(work, n, w, "RayEnvironment")


def pool_name(per_worker: int) -> str:
    return f"mp.Pool.imap[{per_worker}/W]"


def ray_tasks_name(per_worker: int) -> str:
    return f"ray-tasks[{per_worker}/W]"


# -- driver --------------------------------------------------------------------------------------------

def verified(name: str, runner, work: Work, n: int, w: int, want: list):
    """One run of a contender as a no-argument callable returning its time (the runner's alone, the
    checksum taken after), its result checked against the reference.

    `want` holds the reference (count, checksum); while empty, the first result becomes it (the
    sequential contender runs first in the first round and so defines it).
    """
    def once():
        started = time.perf_counter()
        got = runner(work, n, w)
        seconds = time.perf_counter() - started
        if isinstance(got, Measured):   # timed where it ran, and checksummed there
            got, seconds = got
        else:
            got = checksum(got)
        if not want and name != "sequential":
            raise RuntimeError("no sequential reference result to verify against")
        if not want:
            want.append(got)
        common.verify(name, "(count, checksum)", got, want[0])
        return seconds

    return once


def _report(round_index: int, name: str, seconds: float | None) -> None:
    shown = "failed" if seconds is None else f"{seconds:.3f} s"
    print(f"  round {round_index + 1}  {name:20s} {shown}", flush=True)


def ray_start(w: int, root: str | None = None) -> str | None:
    """Start a private local Ray instance (never another host). Returns None or why it is unavailable.

    `root`: a checkout whose procflow the driver and Ray's workers import instead of this one's."""
    try:
        import ray

        path = os.pathsep.join(p for p in (root, common.REPO_ROOT) if p)
        ray.init(num_cpus=w, include_dashboard=False, address="local", log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def ray_stop() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception as exc:
        print(f"WARNING: ray.shutdown failed: {exc}", file=sys.stderr)


RAY_RUNNERS = {**{ray_tasks_name(c): functools.partial(run_ray_tasks, per_worker=c) for c in RAY_CHUNKS},
               "ray-actors": run_ray_actors, "procflow-ray": run_procflow_ray,
               "procflow-ray-before": run_procflow_ray}


class Measured(NamedTuple):
    """A result timed where it ran (in the Ray process), so that the timing leaves out Ray's start."""
    value: Any
    seconds: float


def _warm_up_ray(w: int) -> None:
    """Start Ray's W worker processes now (outside the timing): the issue times Ray with a warm cluster."""
    import ray

    ray.get([ray.remote(_spin_range).remote(0, 1, 1) for _ in range(2 * w)])


def _ray_driver_main(conn, w: int, root: str | None = None) -> None:
    """The Ray driver process: start Ray, warm it up, run one contender when asked, shut Ray down."""
    # Run as `python -m bench.cpu_scaling`, this process knows this module as __mp_main__, a name Ray's
    # workers cannot import; the functions shipped to them must come from its importable name.
    from bench import cpu_scaling

    if root:   # procflow-ray-before: nothing has imported procflow in this fresh interpreter yet
        sys.path.insert(0, root)
    why = ray_start(w, root)
    try:
        if why is None:
            cpu_scaling._warm_up_ray(w)
            # Ray's own processes are busy for a while after ray.init: let them finish first, as the
            # caller let the previous contender's processes finish.
            common.wait_for_quiet()
        conn.send(why)
        request = None if why else conn.recv()
        if request is not None:
            name, loops, filtered, n = request
            work = cpu_scaling.Work(loops, filtered)
            try:
                started = time.perf_counter()
                value = cpu_scaling.RAY_RUNNERS[name](work, n, w)
                seconds = time.perf_counter() - started
                conn.send(("ok", Measured(cpu_scaling.checksum(value), seconds)))
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        ray_stop()


def ray_runner(name: str, root: str | None = None):
    """A Ray contender with the local ones' signature, run in a freshly spawned interpreter.

    Each run gets its own Ray instance, started (and its workers warmed up) before the clock starts and
    shut down after it stops, in a process of its own. So no local contender shares the machine with
    Ray's daemons (an idle local Ray instance kept 3% of this 2-core VM busy), and none forks from a
    process that called ray.init (which holds Ray's threads and gigabytes of address space: a fork
    there took 2.9 ms instead of 1 ms, a cost no user of Pool, mpire or procflow pays).
    """
    def run(work, n, w):
        ctx = multiprocessing.get_context("spawn")
        conn, child_conn = ctx.Pipe()
        process = ctx.Process(target=_ray_driver_main, args=(child_conn, w, root), daemon=True,
                              name=f"bench-ray-{name}")
        process.start()
        child_conn.close()
        try:
            why = conn.recv()
            if why:
                raise RuntimeError(f"Ray did not start: {why}")
            conn.send((name, work.loops, work.filtered, n))
            status, value = conn.recv()
        except EOFError:
            raise RuntimeError(f"the Ray driver process exited with code {process.exitcode}") from None
        finally:
            process.join(120)
            if process.is_alive():
                process.kill()
                process.join()
        if status != "ok":
            raise RuntimeError(value)
        return value

    return run


def main(argv: list[str] | None = None) -> dict:
    parser = common.base_parser("python -m bench.cpu_scaling", __doc__, default_runs=None)
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="W (default: os.cpu_count())")
    parser.add_argument("--grains", default="1ms,20us,2us", help="comma list of: " + ", ".join(GRAINS))
    parser.add_argument("--n", type=int, default=None, help="records per run (default: per grain)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray contenders")
    parser.add_argument("--no-procflow", action="store_true", help="run the peers only")
    parser.add_argument("--ray-only", action="store_true",
                        help="sequential, Ray tasks and actors, and procflow-ray only (issue 24's comparison)")
    parser.add_argument("--before", metavar="ROOT", default=None,
                        help="also run procflow-ray-before: procflow-ray on the procflow of checkout ROOT")
    args = parser.parse_args(argv)
    w = args.workers
    shm_before = common.shm_entries()

    procflow_mod, why = (None, "disabled by --no-procflow") if args.no_procflow else common.import_procflow()
    doc: dict[str, Any] = {"params": {"runs": args.runs, "quick": args.quick, "workers": w},
                           "grains": {}, "skipped": {}, "failed": {}}
    if procflow_mod is None:
        doc["skipped"]["procflow"] = why
        print(f"NOTE: procflow contenders skipped ({why})")

    ray_why = "disabled by --no-ray" if args.no_ray else (
        None if importlib.util.find_spec("ray") else "ray is not installed (pip install -e '.[ray]')")
    if ray_why:
        doc["skipped"]["ray"] = ray_why
        print(f"NOTE: Ray contenders skipped ({ray_why})")

    for grain in args.grains.split(","):
        grain_s, n_full, n_quick, grain_runs = GRAINS[grain]
        runs = args.runs or (1 if args.quick else grain_runs)
        n = args.n or (n_quick if args.quick else n_full)
        work = Work(calibrate(grain_s), grain in FILTERED_GRAINS)
        shape = "map, filter" if work.filtered else "map"
        print(f"\ngrain {grain}: {work.loops} loops per call, {shape}, n={n}, W={w}")
        doc["grains"][grain] = g = {"grain_s": grain_s, "loops": work.loops, "filtered": work.filtered,
                                    "n": n, "contenders": {}}

        want: list = []  # filled by the first sequential run; every contender must reproduce it
        plan = [("sequential", run_sequential)]
        if not args.ray_only:
            plan += [(pool_name(c), functools.partial(run_pool, per_worker=c)) for c in POOL_CHUNKS]
            plan.append(("mpire", run_mpire))
        if not ray_why:
            plan += [(name, ray_runner(name)) for name in (*map(ray_tasks_name, RAY_CHUNKS), "ray-actors")]
        if procflow_mod is not None:
            if not args.ray_only:
                plan += [("procflow", run_procflow), ("procflow-balance", run_procflow_balance)]
            if not ray_why:
                plan.append(("procflow-ray", ray_runner("procflow-ray")))
                if args.before:
                    plan.append(("procflow-ray-before", ray_runner("procflow-ray-before", args.before)))
        fns = {name: verified(name, runner, work, n, w, want) for name, runner in plan}
        results, failures = common.interleaved(fns, runs, progress=_report)
        g["runs"] = runs
        g["contenders"].update(results)
        for name, exc in failures.items():
            if isinstance(exc, NotImplementedError):
                print(f"  {name}: SKIPPED: not implemented in procflow yet ({exc})")
                doc["skipped"][f"{grain}/{name}"] = f"NotImplementedError: {exc}"
            else:
                msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                print(f"  {name}: FAILED/SKIPPED: {msg}")
                doc["failed"][f"{grain}/{name}"] = msg
        _derive(g, w)
        _print_grain(grain, g, w, runs)

    doc["targets"] = targets(doc, w)
    common.print_table("targets", *common.target_table(doc["targets"]))
    doc["leaks"] = common.leak_report(shm_before, grace=10.0)
    if not args.no_save:
        common.write_result("cpu_scaling", doc)
    return doc


# Collapsed contenders: each is the fastest (by median) of its variants, all of which stay in the json.
COLLAPSED = (("mp.Pool.imap", tuple(pool_name(c) for c in POOL_CHUNKS)),
             ("ray-tasks", tuple(ray_tasks_name(c) for c in RAY_CHUNKS)),
             ("ray", ("ray-tasks", "ray-actors")))


def shown(name: str) -> bool:
    """Whether a contender gets a row of its own in the tables (a variant shows through its collapse)."""
    return not any(name in variants for _, variants in COLLAPSED)


def _derive(g: dict, w: int) -> None:
    """Speed-ups; the variants of Pool's and Ray's chunking collapse into the faster one (see
    COLLAPSED: `mp.Pool.imap`, `ray-tasks`, and `ray` for the faster of tasks and actors)."""
    c = g["contenders"]
    for collapsed, variants in COLLAPSED:
        present = [k for k in variants if k in c]
        if present:
            best = min(present, key=lambda k: c[k]["median"])
            c[collapsed] = {**c[best], "variant": c[best].get("variant", best)}
    # A collapsed contender takes its first variant's place, so tables keep the order of the plan.
    order = {name: i for i, name in enumerate(c)}
    for collapsed, variants in COLLAPSED:   # in order: "ray" follows "ray-tasks" once that has moved
        firsts = [order[k] for k in variants if k in order]
        if collapsed in order and firsts:
            order[collapsed] = min(firsts) - 0.5
    g["contenders"] = c = dict(sorted(c.items(), key=lambda kv: order[kv[0]]))
    seq = c.get("sequential", {}).get("median")
    for m in c.values():
        m["speedup"] = common.ratio(seq, m["median"])
        m["efficiency"] = common.ratio(m["speedup"], w)


def _print_grain(grain: str, g: dict, w: int, runs: int) -> None:
    rows = [[name, m["median"], m["speedup"], m["efficiency"]]
            for name, m in g["contenders"].items() if shown(name)]
    common.print_table(f"grain {grain}, n={g['n']}, W={w} (median of {runs})",
                       ["contender", "seconds", "speed-up", "speed-up/W"], rows)


# Issue 19's peers for the pipeline as users write it: Pool and Ray tasks, each with its best chunking.
TARGET_PEERS = ("mp.Pool.imap", "ray-tasks")
# Issue 24: procflow-on-Ray against plain Ray tasks with their best batching, per grain.
RAY_PARITY = {"1ms": 0.95, "20us": 0.9}


def targets(doc: dict, w: int) -> list[dict]:
    out = []
    coarse = doc["grains"].get("1ms", {}).get("contenders", {})
    su = coarse.get("procflow", {}).get("speedup")
    out.append({"name": "1ms: procflow speed-up", "value": su, "goal": f">= {0.92 * w:.2f} (0.92 x W)",
                "met": None if su is None else su >= 0.92 * w})
    for grain, g in doc["grains"].items():
        c = g["contenders"]
        pf = c.get("procflow", {})
        for peer in TARGET_PEERS:
            if peer not in c:
                continue
            floor = TARGET_2US_VS_POOL if grain == "2us" and peer == "mp.Pool.imap" else None
            value = common.ratio(c[peer]["median"], pf.get("median"))
            wins = paired_wins(pf.get("times"), c[peer].get("times"))
            needed = wins_needed(len(pf.get("times") or c[peer]["times"]))
            ahead = None if value is None else (value >= floor if floor else value > 1)
            out.append({"name": f"{grain}: procflow vs {peer} ({c[peer].get('variant', peer)})",
                        "value": value,
                        "goal": f"{f'>= {floor:g}' if floor else '> 1'}, >= {needed} rounds faster",
                        "met": None if ahead is None or wins is None else ahead and wins[0] >= needed,
                        "rounds_faster": rounds_faster(pf.get("times"), c[peer].get("times"))})
        floor = RAY_PARITY.get(grain)
        pf_ray, tasks = c.get("procflow-ray", {}), c.get("ray-tasks")
        if floor is not None and tasks is not None and pf_ray.get("median"):
            value = common.ratio(tasks["median"], pf_ray["median"])
            out.append({"name": f"{grain}: procflow-ray vs ray-tasks ({tasks.get('variant', 'ray-tasks')})",
                        "value": value, "goal": f">= {floor:g}",
                        "met": None if value is None else value >= floor,
                        "rounds_faster": rounds_faster(pf_ray.get("times"), tasks.get("times"))})
    return out


def wins_needed(rounds: int) -> int:
    """Paired rounds procflow must win out of `rounds`: 8 of 11 (issue 19), scaled to other counts."""
    need, of = WIN_SHARE
    return -(-need * rounds // of)


def paired_wins(times: list[float] | None, peer_times: list[float] | None) -> tuple[int, int] | None:
    """(won, pairs): in how many rounds the contender beat the peer, each pair timed within one round.

    Medians compare runs that may lie minutes apart; a pair from one round shares most of the
    machine's drift, so this is the steadier view of who is ahead when medians are close.
    """
    if not times or not peer_times:
        return None
    pairs = list(zip(times, peer_times))
    return sum(mine < theirs for mine, theirs in pairs), len(pairs)


def rounds_faster(times: list[float] | None, peer_times: list[float] | None) -> str | None:
    """paired_wins as "k of n", for the tables."""
    wins = paired_wins(times, peer_times)
    return None if wins is None else f"{wins[0]} of {wins[1]}"


if __name__ == "__main__":
    main(sys.argv[1:])
