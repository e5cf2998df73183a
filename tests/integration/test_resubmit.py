"""Submitting one environment twice (issue 23, item 7).

A second submit() used to run the whole pipeline again without a word and empty every collect() handle
first, so a line repeated in a script, or a notebook cell run twice, replaced the first results. Now it
raises, and `submit(rerun=True)` runs the pipeline again on purpose.
"""

from __future__ import annotations

import pytest

from procflow import JobFailedError, LocalEnvironment

pytestmark = pytest.mark.timeout(60)

EXPECTED = [0, 10, 20, 30, 40]


def tens(x):
    return x * 10


def test_a_second_submit_raises_and_keeps_the_first_results(backend):
    env = backend.make_env("twice")
    result = env.from_batch(range(5)).map(tens, parallelism=2).collect()
    job = env.submit()
    with pytest.raises(RuntimeError, match=rf"already ran job {job.job_id} \(status finished\).*"
                                           r"env\.submit\(rerun=True\)"):
        env.submit()
    with pytest.raises(RuntimeError, match="already ran job"):
        env.submit(autostop=False)
    assert env.job is job            # nothing was started
    env.close()
    assert sorted(result.results()) == EXPECTED


def test_a_failed_job_is_not_rerun_by_accident_either(env_dir):
    def boom(x):
        raise ValueError("bad record")

    with LocalEnvironment("failed-twice", env_dir=env_dir) as env:
        env.from_batch(range(3)).map(boom).collect()
        with pytest.raises(JobFailedError):
            env.submit()
        with pytest.raises(RuntimeError, match=r"\(status failed\)"):
            env.submit()


def test_rerun_runs_again_and_the_handles_hold_the_new_run_only(env_dir):
    with LocalEnvironment("rerun", env_dir=env_dir) as env:
        result = env.from_batch(range(5)).map(tens, parallelism=2).collect()
        first = env.submit(autostop=False)
        first.wait(30)
        kept = result.results()
        second = env.submit(rerun=True)
    assert second is not first and second.job_id != first.job_id
    assert first.status == second.status == "finished"
    assert sorted(kept) == EXPECTED
    assert sorted(result.results()) == EXPECTED      # emptied before the rerun, not both runs' records
    # Each job keeps its own figures: the rerun counted its records afresh.
    for job in (first, second):
        assert sum(m["records_in"] for t, m in job.metrics.items() if t.startswith("map")) == 5
