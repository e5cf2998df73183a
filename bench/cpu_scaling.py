"""CPU scaling: N independent records, each a fixed amount of pure-Python work, spread over W workers.

The work function `spin` is a loop whose count is calibrated at start-up so that one call takes the
chosen grain (1 ms by default; the 20 us grain stresses per-record overhead instead of compute).

Contenders (all use W worker processes, all results checked against the sequential run):

  sequential        a list comprehension in this process: the baseline for every speed-up
  mp.Pool.imap      multiprocessing.Pool(W).imap(fn, range(N), chunksize=N // (32 W))
  mpire             mpire.WorkerPool(W).map(fn, range(N), chunk_size=N // (32 W))
  ray               local ray.init(num_cpus=W); the faster of chunked tasks and W actors
  procflow          LocalEnvironment: from_batch(range(N)).map(fn, parallelism=W).collect()
  procflow-balance  the same with .balance() before the map: records go to whichever map is free
                    (round robin, the default, gives each map N/W however fast its core runs)
  procflow-ray      RayEnvironment, same pipeline (skipped with a note when unavailable)

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
GRAINS = {"1ms": (1e-3, 20_000, 400, 5), "20us": (20e-6, 100_000, 4_000, 11)}
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

def run_sequential(fn, n, w):
    return [fn(x) for x in range(n)]


def chunksize(n: int, w: int) -> int:
    """~32 chunks per worker: small enough to balance the tail, large enough to amortise IPC."""
    return max(1, n // (32 * w))


def run_pool(fn, n, w):
    with CTX.Pool(w) as pool:
        out = list(pool.imap(fn, range(n), chunksize=chunksize(n, w)))
        pool.close()
        pool.join()
    return out


def run_mpire(fn, n, w):
    from mpire import WorkerPool

    with WorkerPool(n_jobs=w, start_method="fork") as pool:
        return pool.map(fn, range(n), chunk_size=chunksize(n, w), progress_bar=False)


def _spin_range(lo: int, hi: int, loops: int) -> list[int]:
    return [spin(x, loops) for x in range(lo, hi)]


class _SpinActor:
    def run(self, lo: int, hi: int, loops: int) -> list[int]:
        return _spin_range(lo, hi, loops)


def _chunks(n: int, w: int):
    step = max(1, n // (8 * w))
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)]


def run_ray_tasks(fn, n, w):
    import ray

    task = ray.remote(_spin_range)
    refs = [task.remote(lo, hi, fn.keywords["loops"]) for lo, hi in _chunks(n, w)]
    return [v for part in ray.get(refs) for v in part]


def run_ray_actors(fn, n, w):
    import ray

    actors = [ray.remote(_SpinActor).remote() for _ in range(w)]
    try:
        refs = [actors[i % w].run.remote(lo, hi, fn.keywords["loops"])
                for i, (lo, hi) in enumerate(_chunks(n, w))]
        return [v for part in ray.get(refs) for v in part]
    finally:
        for a in actors:
            ray.kill(a)


def run_procflow(fn, n, w, env_cls_name="LocalEnvironment", balance=False):
    import procflow

    env = getattr(procflow, env_cls_name)("bench_cpu_scaling")
    try:
        stream = env.from_batch(range(n))
        if balance:
            stream = stream.balance()
        res = stream.map(fn, parallelism=w).collect()
        common.submit_with_watchdog(env, JOB_TIMEOUT)
        return res.results()
    finally:
        env.close()


def run_procflow_balance(fn, n, w):
    return run_procflow(fn, n, w, balance=True)


def run_procflow_ray(fn, n, w):
    return run_procflow(fn, n, w, "RayEnvironment")


# -- driver --------------------------------------------------------------------------------------------

def verified(name: str, runner, fn, n: int, w: int, want: list):
    """One run of a contender as a no-argument callable returning its time (the runner's alone, the
    checksum taken after), its result checked against the reference.

    `want` holds the reference (count, checksum); while empty, the first result becomes it (the
    sequential contender runs first in the first round and so defines it).
    """
    def once():
        started = time.perf_counter()
        got = runner(fn, n, w)
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
    print(f"  round {round_index + 1}  {name:13s} {shown}", flush=True)


def ray_start(w: int) -> str | None:
    """Start a private local Ray instance (never another host). Returns None or why it is unavailable."""
    try:
        import ray

        ray.init(num_cpus=w, include_dashboard=False, address="local", log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": common.REPO_ROOT}})
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


RAY_RUNNERS = {"ray-tasks": run_ray_tasks, "ray-actors": run_ray_actors, "procflow-ray": run_procflow_ray}


class Measured(NamedTuple):
    """A result timed where it ran (in the Ray process), so that the timing leaves out Ray's start."""
    value: Any
    seconds: float


def _warm_up_ray(w: int) -> None:
    """Start Ray's W worker processes now (outside the timing): the issue times Ray with a warm cluster."""
    import ray

    ray.get([ray.remote(_spin_range).remote(0, 1, 1) for _ in range(2 * w)])


def _ray_driver_main(conn, w: int) -> None:
    """The Ray driver process: start Ray, warm it up, run one contender when asked, shut Ray down."""
    # Run as `python -m bench.cpu_scaling`, this process knows this module as __mp_main__, a name Ray's
    # workers cannot import; the functions shipped to them must come from its importable name.
    from bench import cpu_scaling

    why = ray_start(w)
    try:
        if why is None:
            cpu_scaling._warm_up_ray(w)
            # Ray's own processes are busy for a while after ray.init: let them finish first, as the
            # caller let the previous contender's processes finish.
            common.wait_for_quiet()
        conn.send(why)
        request = None if why else conn.recv()
        if request is not None:
            name, loops, n = request
            fn = functools.partial(cpu_scaling.spin, loops=loops)
            try:
                started = time.perf_counter()
                value = cpu_scaling.RAY_RUNNERS[name](fn, n, w)
                seconds = time.perf_counter() - started
                conn.send(("ok", Measured(cpu_scaling.checksum(value), seconds)))
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        ray_stop()


def ray_runner(name: str):
    """A Ray contender with the local ones' signature, run in a freshly spawned interpreter.

    Each run gets its own Ray instance, started (and its workers warmed up) before the clock starts and
    shut down after it stops, in a process of its own. So no local contender shares the machine with
    Ray's daemons (an idle local Ray instance kept 3% of this 2-core VM busy), and none forks from a
    process that called ray.init (which holds Ray's threads and gigabytes of address space: a fork
    there took 2.9 ms instead of 1 ms, a cost no user of Pool, mpire or procflow pays).
    """
    def run(fn, n, w):
        ctx = multiprocessing.get_context("spawn")
        conn, child_conn = ctx.Pipe()
        process = ctx.Process(target=_ray_driver_main, args=(child_conn, w), daemon=True,
                              name=f"bench-ray-{name}")
        process.start()
        child_conn.close()
        try:
            why = conn.recv()
            if why:
                raise RuntimeError(f"Ray did not start: {why}")
            conn.send((name, fn.keywords["loops"], n))
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
    parser.add_argument("--grains", default="1ms,20us", help="comma list of: 1ms, 20us")
    parser.add_argument("--n", type=int, default=None, help="records per run (default: per grain)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray contenders")
    parser.add_argument("--no-procflow", action="store_true", help="run the peers only")
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
        loops = calibrate(grain_s)
        fn = functools.partial(spin, loops=loops)
        print(f"\ngrain {grain}: {loops} loops per call, n={n}, W={w}")
        doc["grains"][grain] = g = {"grain_s": grain_s, "loops": loops, "n": n, "contenders": {}}

        want: list = []  # filled by the first sequential run; every contender must reproduce it
        plan = [("sequential", run_sequential), ("mp.Pool.imap", run_pool), ("mpire", run_mpire)]
        if not ray_why:
            plan += [(name, ray_runner(name)) for name in ("ray-tasks", "ray-actors")]
        if procflow_mod is not None:
            plan += [("procflow", run_procflow), ("procflow-balance", run_procflow_balance)]
            if not ray_why:
                plan.append(("procflow-ray", ray_runner("procflow-ray")))
        fns = {name: verified(name, runner, fn, n, w, want) for name, runner in plan}
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


def _derive(g: dict, w: int) -> None:
    """Speed-ups; the two Ray variants collapse into 'ray' (the faster one), both kept in the json."""
    c = g["contenders"]
    ray_variants = [k for k in ("ray-tasks", "ray-actors") if k in c]
    if ray_variants:
        best = min(ray_variants, key=lambda k: c[k]["median"])
        c["ray"] = {**c[best], "variant": best}
    seq = c.get("sequential", {}).get("median")
    for m in c.values():
        m["speedup"] = common.ratio(seq, m["median"])
        m["efficiency"] = common.ratio(m["speedup"], w)


def _print_grain(grain: str, g: dict, w: int, runs: int) -> None:
    rows = [[name, m["median"], m["speedup"], m["efficiency"]]
            for name, m in g["contenders"].items() if name not in ("ray-tasks", "ray-actors")]
    common.print_table(f"grain {grain}, n={g['n']}, W={w} (median of {runs})",
                       ["contender", "seconds", "speed-up", "speed-up/W"], rows)


PEER_NAMES = ("mp.Pool.imap", "mpire", "ray")


def targets(doc: dict, w: int) -> list[dict]:
    out = []
    coarse = doc["grains"].get("1ms", {}).get("contenders", {})
    su = coarse.get("procflow", {}).get("speedup")
    out.append({"name": "1ms: procflow speed-up", "value": su, "goal": f">= {0.92 * w:.2f} (0.92 x W)",
                "met": None if su is None else su >= 0.92 * w})
    for grain, g in doc["grains"].items():
        c = g["contenders"]
        peers = {k: c[k]["median"] for k in PEER_NAMES if k in c}
        best = min(peers, key=peers.get) if peers else None
        for name in ("procflow", "procflow-balance"):
            pf = c.get(name, {}).get("median")
            out.append({"name": f"{grain}: {name} vs fastest peer ({best})",
                        "value": common.ratio(peers.get(best), pf), "goal": "> 1 (faster)",
                        "met": None if pf is None or best is None else pf < peers[best],
                        "rounds_faster": rounds_faster(c.get(name, {}).get("times"),
                                                       c.get(best, {}).get("times"))})
    return out


def rounds_faster(times: list[float] | None, peer_times: list[float] | None) -> str | None:
    """"k of n": in how many rounds the contender beat the peer, each pair timed within one round.

    Medians compare runs that may lie minutes apart; a pair from one round shares most of the
    machine's drift, so this is the steadier view of who is ahead when medians are close.
    """
    if not times or not peer_times:
        return None
    pairs = list(zip(times, peer_times))
    return f"{sum(mine < theirs for mine, theirs in pairs)} of {len(pairs)}"


if __name__ == "__main__":
    main(sys.argv[1:])
