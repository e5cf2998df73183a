"""Checkpoints over random small DAGs (issue 20): each is killed after a checkpoint completed (its driver
or one reduce instance, SIGKILL), resumed (its keyed reduce possibly rescaled), and its outputs (file
sinks' committed parts, collect()s) equal a plain-Python evaluation exactly. A few examples in the
default suite, more with PROCFLOW_SOAK=1."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procflow import JobFailedError, LocalEnvironment
from procflow.testing import DriverProcess, child_pids, descendants, own_segments, wait_gone
from tests.faults import random_dag_pipeline as dag
from tests.faults.test_crash_matrix import SOAK, _latest_checkpoint
from tests.integration.conftest import assert_no_leaks, wait_for

EXAMPLES = 25 if SOAK else 3

specs = st.fixed_dictionaries({
    "source_parallelism": st.integers(1, 3),
    "map": st.sampled_from(sorted(dag.MAPS)),
    "filter": st.booleans(),
    "keys": st.integers(1, 9),
    "reduce_parallelism": st.integers(1, 3),
    "resumed_reduce_parallelism": st.integers(1, 3),   # a keyed reduce may be rescaled on resume
    "sums_to": st.sampled_from(["file", "collect"]),
    "branch_to": st.sampled_from([None, "file", "collect"]),
})


def _after_a_checkpoint(checkpoint_dir: str, spec: dict, moment: tuple[int, float]) -> None:
    """Wait for checkpoint `moment[0]` to complete, then `moment[1]` s more: the kill's random moment."""
    wait_for(lambda: _latest_checkpoint(checkpoint_dir) >= moment[0], 120, f"checkpoint {moment[0]} of {spec}")
    time.sleep(moment[1])   # not synchronisation: where past that checkpoint the crash lands


def _kill_the_driver(spec, moment, env_dir, inp, out, checkpoint_dir) -> None:
    with DriverProcess(dag.DRIVER, env_dir, json.dumps(spec), inp, out, checkpoint_dir) as driver:
        driver.expect("running", timeout=90)
        _after_a_checkpoint(checkpoint_dir, spec, moment)
        tasks = descendants(driver.pid)
        driver.signal(signal.SIGKILL)
        assert driver.wait(10) == -signal.SIGKILL, f"the job ended before the kill: make it slower ({spec})"
        assert wait_gone(tasks, 10) == set(), "task processes outlived their killed driver"


def _kill_a_reduce(spec, moment, env_dir, inp, out, checkpoint_dir, instance) -> None:
    env = LocalEnvironment("dag", env_dir=env_dir, checkpoint_dir=checkpoint_dir,
                           config={"checkpoint_interval": 0.1})
    dag.build(env, spec, inp, out)
    job = env.submit(autostop=False)
    _after_a_checkpoint(checkpoint_dir, spec, moment)
    victim = f"sum_{instance % spec['reduce_parallelism']}"   # lives until the end of input
    os.kill(job.metrics[victim]["pid"], signal.SIGKILL)
    with pytest.raises(JobFailedError, match=victim):
        job.wait(120)
    env.close()


@pytest.mark.timeout(600 if SOAK else 300)
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=specs, victim=st.sampled_from(["driver", "task"]), instance=st.integers(0, 2),
       moment=st.tuples(st.integers(1, 3), st.floats(0.0, 0.2)))
def test_a_random_dag_killed_after_a_checkpoint_resumes_exactly_once(tmp_path, spec, victim, instance, moment):
    children, segments = child_pids(), own_segments()
    run = tempfile.mkdtemp(dir=tmp_path)   # one folder per example: the fixture's is shared
    env_dir, out, checkpoint_dir = (os.path.join(run, n) for n in ("env", "out", "ckpt"))
    inp = dag.write_input(os.path.join(run, "in"), spec)
    if victim == "driver":
        _kill_the_driver(spec, moment, env_dir, inp, out, checkpoint_dir)
    else:
        _kill_a_reduce(spec, moment, env_dir, inp, out, checkpoint_dir, instance)

    env = LocalEnvironment("dag-resume", env_dir=env_dir, checkpoint_dir=checkpoint_dir,
                           config={"checkpoint_interval": 0.1})
    handles = dag.build(env, spec, inp, out, spec["resumed_reduce_parallelism"])
    env.submit(resume=True)
    assert dag.outputs(spec, out, handles) == dag.expected(spec), f"{victim} killed at {moment}, {spec}"
    env.close()
    assert_no_leaks(children, segments)
