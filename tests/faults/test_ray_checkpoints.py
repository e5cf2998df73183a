"""Checkpoints on Ray (issue 20): the checkpoint tests' pipeline (split file source, map, keyby + reduce,
two file sinks, three collects) on RayEnvironment, failed after a checkpoint completed, resumes with
exactly the uninterrupted output: on Ray, and on LocalEnvironment from a checkpoint Ray took (the graph's
fingerprint is the backend's business of neither).

What differs from the local runs is under test here: the Ray gate's hold of an aligned input, the
checkpoint request reaching the source actors, and the state riding the acks to the driver, which writes
the state files (the actors never touch the checkpoint folder). Two Ray jobs in all, on the session's one
local Ray instance (tests/conftest.py `ray_session`, this machine only): each costs seconds on 2 cores.
"""

from __future__ import annotations

import os
import signal
import stat

import pytest

from procflow import JobFailedError, LocalEnvironment, RayEnvironment
from procflow.runtime.checkpoint.store import CheckpointStore, folder_name
from tests.faults import checkpoint_pipeline as pipeline
from tests.faults.test_checkpoints import _manifests, _published, _resume
from tests.integration.conftest import wait_for

pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

CONFIG = {"checkpoint_interval": 0.1}


@pytest.fixture
def ray_instance(ray_session):
    ray_session.ensure()


def _start_on_ray(env_dir: str, inp: str, out: str, checkpoint_dir: str) -> tuple[RayEnvironment, object]:
    """The pipeline running on Ray, once a checkpoint has completed and its parts are published."""
    env = RayEnvironment("ckpt-ray", env_dir=env_dir, checkpoint_dir=checkpoint_dir, config=CONFIG)
    pipeline.build(env, inp, out)
    job = env.submit(autostop=False)
    wait_for(lambda: _manifests(checkpoint_dir), 90, "a complete checkpoint")
    wait_for(lambda: _published(out), 30, "the parts of a completed checkpoint in the output folder")
    return env, job


def test_task_actor_killed_after_a_checkpoint_resumes_on_ray_exactly_once(ray_instance, env_dir, tmp_path):
    inp = pipeline.write_input(str(tmp_path / "in"))
    out, checkpoint_dir = str(tmp_path / "out"), str(tmp_path / "ckpt")
    env, job = _start_on_ray(env_dir, inp, out, checkpoint_dir)
    with env:
        # The worker process of a reduce instance's actor (which runs its sink too: a chain), mid-run.
        os.kill(job.metrics["sum_1"]["pid"], signal.SIGKILL)
        with pytest.raises(JobFailedError, match="sum_1"):
            job.wait(60)
    assert job.status == "failed", "the job ended before the kill: make it slower"
    assert not os.path.exists(os.path.join(out, "records", "_SUCCESS"))
    published = _published(out)

    resumed = RayEnvironment("ckpt-ray-resume", env_dir=env_dir, checkpoint_dir=checkpoint_dir, config=CONFIG)
    with resumed:
        handles = pipeline.build(resumed, inp, out)
        resumed.submit(resume=True)
    pipeline.assert_exactly_once(out, handles)
    assert _manifests(checkpoint_dir) == [], "a finished job keeps no checkpoints"
    assert set(published) <= set(_published(out)), "a part published before the failure was not kept"


def test_a_checkpoint_taken_on_ray_resumes_on_the_local_backend(ray_instance, env_dir, tmp_path):
    inp = pipeline.write_input(str(tmp_path / "in"))
    out, checkpoint_dir = str(tmp_path / "out"), str(tmp_path / "ckpt")
    env, job = _start_on_ray(env_dir, inp, out, checkpoint_dir)
    with env:
        job.kill("the test")
    assert job.status == "killed", "the job ended before the kill: make it slower"
    # Every task's state, written by the driver from the acks: private files the manifest verifies.
    loaded = CheckpointStore(checkpoint_dir).latest()
    assert loaded is not None
    tasks = set(env.compile().nodes) - {"all_0"}   # a collect the driver runs: its records are collected.pickle
    assert tasks <= set(loaded.states)
    folder = os.path.join(checkpoint_dir, folder_name(loaded.number))
    assert {stat.S_IMODE(os.stat(os.path.join(folder, n)).st_mode) for n in os.listdir(folder)} == {0o600}

    resumed = _resume(env_dir, inp, out, checkpoint_dir)   # LocalEnvironment: checks output and collects
    assert isinstance(resumed, LocalEnvironment)
