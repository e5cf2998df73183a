"""The crash matrix of issue 20: the job with a split source over files, a map, keyby + reduce, a join and
file sinks is SIGKILLed at a seeded random moment after a checkpoint completed (its driver in some runs,
one of its tasks in others), then resumed (in some runs the resumed job's driver is killed too, and it
is resumed again); the committed output equals an uninterrupted run's exactly.

The default suite runs a few seeds; PROCFLOW_SOAK=1 runs all 20. A failing run names its seed in its test
id (and its message), so `pytest -k seed7` replays it: the kill's moment is random, not its choices."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter

import pytest

from procflow import JobFailedError, LocalEnvironment
from procflow.testing import DriverProcess, child_pids, descendants, wait_gone
from tests.faults import crash_matrix_pipeline as pipeline
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.timeout(300)

RUNS, QUICK_RUNS = 20, 3
SOAK = os.environ.get("PROCFLOW_SOAK") == "1"


def _latest_checkpoint(checkpoint_dir: str) -> int:
    if not os.path.isdir(checkpoint_dir):
        return 0
    done = [int(n) for n in os.listdir(checkpoint_dir) if n.isdigit()
            and os.path.exists(os.path.join(checkpoint_dir, n, "MANIFEST.json"))]
    return max(done, default=0)


class Plan:
    """What one seeded run does: whom it kills, after which complete checkpoint, how long after it."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.seed = seed
        self.victim = "driver" if seed % 2 == 0 else "task"   # both kinds in the quick runs too
        self.twice = seed % 3 == 2   # the resumed job killed too: a checkpoint taken after a restore
        self.after_checkpoint = rng.randint(1, 4)
        self.delay_s = rng.uniform(0.0, 0.25)   # the random moment past that checkpoint
        self.rng = rng

    def __str__(self) -> str:
        again = ", then the resumed driver after its first checkpoint" if self.twice else ""
        return (f"seed {self.seed}: SIGKILL the {self.victim} {self.delay_s:.3f} s after checkpoint "
                f"{self.after_checkpoint} completed{again}")


def _seeds() -> list[object]:
    marks = [pytest.mark.soak,
             pytest.mark.skipif(not SOAK, reason="the full crash matrix: set PROCFLOW_SOAK=1")]
    return [pytest.param(seed, id=f"seed{seed}-{Plan(seed).victim}{'-twice' if Plan(seed).twice else ''}",
                         marks=() if seed < QUICK_RUNS else marks)
            for seed in range(RUNS)]


def _kill_the_driver(plan: Plan, env_dir: str, inp: str, out: str, checkpoint_dir: str,
                     after_checkpoint: int | None = None, *resume: str) -> None:
    """SIGKILL the driver (a subprocess) once checkpoint `after_checkpoint` (default: the plan's) is done."""
    after = plan.after_checkpoint if after_checkpoint is None else after_checkpoint
    with DriverProcess(pipeline.DRIVER, env_dir, inp, out, checkpoint_dir, *resume) as driver:
        driver.expect("running", timeout=90)
        wait_for(lambda: _latest_checkpoint(checkpoint_dir) >= after, 120, f"checkpoint {after} ({plan})")
        time.sleep(plan.delay_s)   # not synchronisation: the crash's random moment
        tasks = descendants(driver.pid)
        driver.signal(signal.SIGKILL)
        assert driver.wait(10) == -signal.SIGKILL, f"the job ended before the kill: make it slower ({plan})"
        assert wait_gone(tasks, 10) == set(), f"task processes outlived their killed driver ({plan})"


def _kill_a_task(plan: Plan, env_dir: str, inp: str, out: str, checkpoint_dir: str) -> None:
    env = LocalEnvironment("matrix", env_dir=env_dir, checkpoint_dir=checkpoint_dir,
                           config={"checkpoint_interval": 0.1})
    pipeline.build(env, inp, out)
    job = env.submit(autostop=False)
    wait_for(lambda: _latest_checkpoint(checkpoint_dir) >= plan.after_checkpoint, 120,
             f"checkpoint {plan.after_checkpoint} ({plan})")
    time.sleep(plan.delay_s)   # not synchronisation: the crash's random moment
    # Any task: every one runs until about the end of input (the sources' are chained to the slow map).
    victim = plan.rng.choice(sorted(job.metrics))
    pid = job.metrics[victim]["pid"]
    assert pid in child_pids(), f"{victim} is not running: make the job slower ({plan})"
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(JobFailedError, match=victim):
        job.wait(120)


def _resume(env_dir: str, inp: str, out: str, checkpoint_dir: str) -> None:
    env = LocalEnvironment("matrix-resume", env_dir=env_dir, checkpoint_dir=checkpoint_dir,
                           config={"checkpoint_interval": 0.1})
    pipeline.build(env, inp, out)
    env.submit(resume=True)


def test_the_uninterrupted_run_gives_the_reference_output(env_dir, tmp_path):
    """The matrix compares with the plain-Python reference: an uninterrupted run gives exactly that."""
    inp = pipeline.write_input(str(tmp_path / "in"))
    out = str(tmp_path / "out")
    env = LocalEnvironment("matrix", env_dir=env_dir, checkpoint_dir=str(tmp_path / "ckpt"),
                           config={"checkpoint_interval": 0.1})
    pipeline.build(env, inp, out)
    env.submit()
    assert pipeline.committed(out) == pipeline.expected()


@pytest.mark.parametrize("seed", _seeds())
def test_a_run_killed_at_a_random_moment_resumes_exactly_once(env_dir, tmp_path, seed):
    plan = Plan(seed)
    inp = pipeline.write_input(str(tmp_path / "in"))
    out, checkpoint_dir = str(tmp_path / "out"), str(tmp_path / "ckpt")
    kill = _kill_the_driver if plan.victim == "driver" else _kill_a_task
    kill(plan, env_dir, inp, out, checkpoint_dir)
    for sink in pipeline.SINKS:
        assert not os.path.exists(os.path.join(out, sink, "_SUCCESS")), f"committed before the end ({plan})"
    if plan.twice:   # the resumed job numbers its checkpoints on from the restored one
        _kill_the_driver(plan, env_dir, inp, out, checkpoint_dir, _latest_checkpoint(checkpoint_dir) + 1, "resume")

    _resume(env_dir, inp, out, checkpoint_dir)
    got, want = pipeline.committed(out), pipeline.expected()
    for sink in pipeline.SINKS:
        assert got[sink] == want[sink], f"{plan}: sink {sink!r} {_difference(got[sink], want[sink])}"


def _difference(got: list[object], want: list[object]) -> str:
    have, need = Counter(map(repr, got)), Counter(map(repr, want))
    return f"lost {sum((need - have).values())} records and duplicated {sum((have - need).values())}"
