"""A file sink's driver killed by SIGKILL: its staging folder stays behind (nothing in the output folder
looks like a result), and the next job writing into that folder clears it. While the driver lives, its
staging lock refuses a second job on the same folder."""

from __future__ import annotations

import json
import os
import signal

import pytest

from procflow import LocalEnvironment
from procflow.core.errors import OutputExistsError
from procflow.testing import DriverProcess, descendants, wait_gone
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.timeout(150)

# An endless job that writes JSON Lines into argv[2] and prints "running" once records flow.
DRIVER = """
import sys
from procflow import LocalEnvironment
from procflow.testing import AnnounceOnce, Endless

env = LocalEnvironment("driver", env_dir=sys.argv[1])
records = env.from_source(Endless, name="src")
records.write_jsonl(sys.argv[2], name="write")
records.sink(AnnounceOnce, name="announce")
env.submit()
"""



def test_sigkilled_driver_leaves_staging_that_the_next_run_clears(env_dir, tmp_path):
    out = tmp_path / "out"
    with DriverProcess(DRIVER, env_dir, str(out)) as driver:
        driver.expect("running", timeout=90)
        staged = wait_for(lambda: list(out.glob("_staging-*/part-*")), 30, "the driver's staged part")
        tasks = descendants(driver.pid)

        # Live: its lock refuses another job on the same folder, whatever the mode.
        env = LocalEnvironment("second", env_dir=env_dir)
        env.from_batch(range(3)).write_jsonl(out, mode="overwrite")
        with pytest.raises(OutputExistsError, match="another running job"):
            env.submit()
        assert staged[0].exists()

        driver.signal(signal.SIGKILL)
        assert driver.wait(10) == -signal.SIGKILL
        assert wait_gone(tasks, 10) == set(), "task processes outlived their killed driver"

    left = [p.name for p in out.iterdir()]
    assert len(left) == 1 and left[0].startswith("_staging-"), left   # staging only: no result
    assert staged[0].exists()

    env = LocalEnvironment("next", env_dir=env_dir)
    env.from_batch(range(10)).write_jsonl(out)   # mode "error": a dead driver's staging does not count
    env.submit()
    assert sorted(os.listdir(out)) == ["_SUCCESS", "part-00000-of-00001.jsonl"]
    assert json.loads((out / "_SUCCESS").read_text())["records"] == 10
