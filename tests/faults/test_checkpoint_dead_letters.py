"""Dead letters survive a resume exactly once (issue 20): the records set aside before the restored
checkpoint are not processed again, so their letters come back from the checkpoint; those after it fail
again in the resumed run."""

from __future__ import annotations

import signal
import time

import pytest

from procflow import LocalEnvironment
from procflow.testing import DriverProcess
from tests.faults.test_checkpoints import _manifests
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.timeout(240)

N, EVERY = 3000, 50


def fail_some(n: int) -> int:
    time.sleep(0.001)   # the job lasts a few checkpoint intervals
    if n % EVERY == 0:
        raise ValueError(f"bad record {n}")
    return n


def build(env: LocalEnvironment, out: str) -> None:
    env.from_batch(range(N), name="numbers").map(fail_some, parallelism=2, on_error="dead_letter", name="check") \
        .write_jsonl(out, name="write")


DRIVER = """
import sys
from procflow import LocalEnvironment
from tests.faults.test_checkpoint_dead_letters import build

env = LocalEnvironment("dl", env_dir=sys.argv[1], checkpoint_dir=sys.argv[3], config={"checkpoint_interval": 0.1})
build(env, sys.argv[2])
print("running", flush=True)
env.submit()
"""


def test_dead_letters_before_the_checkpoint_come_back_on_resume_and_none_twice(env_dir, tmp_path):
    out, checkpoint_dir = str(tmp_path / "out"), str(tmp_path / "ckpt")
    with DriverProcess(DRIVER, env_dir, out, checkpoint_dir) as driver:
        driver.expect("running", timeout=90)
        wait_for(lambda: any(int(n) >= 2 for n in _manifests(checkpoint_dir)), 90, "checkpoint 2")
        driver.signal(signal.SIGKILL)
        assert driver.wait(10) == -signal.SIGKILL, "the job ended before the kill: make it slower"

    env = LocalEnvironment("dl-resume", env_dir=env_dir, checkpoint_dir=checkpoint_dir)
    build(env, out)
    job = env.submit(resume=True)
    letters = job.dead_letters
    assert sorted(e["record"] for e in letters) == list(range(0, N, EVERY))
    assert all(e["error"] == f"ValueError: bad record {e['record']}" and e["task"].startswith("check_")
               for e in letters)
