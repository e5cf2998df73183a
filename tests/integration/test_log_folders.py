"""Job log folders: each job gets a fresh private folder, and only the newest `keep_logs` stay (issue 22:
600 jobs left 600 folders)."""

from __future__ import annotations

import os
import stat

import pytest

from procflow import LocalEnvironment

from .conftest import NO_RAY

pytestmark = pytest.mark.timeout(120)


def job_folders(env_dir: str) -> set[str]:
    return {n for n in os.listdir(env_dir) if os.path.isdir(os.path.join(env_dir, n))}


# Not on Ray: five jobs there take ~15 s of actor start-up, and the pruning is the environment's own code
# (api/), the same for every backend.
@pytest.mark.backends(*NO_RAY)
def test_only_the_newest_keep_logs_job_folders_stay(backend, env_dir):
    os.makedirs(env_dir)
    os.mkdir(os.path.join(env_dir, "mine"))   # not a job folder: never pruned
    env = backend.make_env("prune", keep_logs=3)
    env.from_batch(range(10)).map(lambda r: r).sink(lambda r: None)
    jobs = []
    for _ in range(5):
        jobs.append(env.submit(rerun=True).job_id)
        assert len(job_folders(env_dir) - {"mine"}) <= 3
    assert job_folders(env_dir) == {*jobs[-3:], "mine"}
    for job in jobs[-3:]:
        assert stat.S_IMODE(os.stat(os.path.join(env_dir, job)).st_mode) == 0o700


def test_keep_logs_none_keeps_every_job_folder(env_dir):
    env = LocalEnvironment("all", {"keep_logs": None}, env_dir=env_dir, executor="inline")
    env.from_batch(range(3)).sink(lambda r: None)
    jobs = {env.submit(rerun=True).job_id for _ in range(4)}
    assert job_folders(env_dir) == jobs
