"""on_error per operator: "fail" (default) stops the job, "skip" counts and logs and goes on,
"dead_letter" brings each failed record and its traceback back on the job."""

from __future__ import annotations

import glob
import os

import pytest

from procflow import JobFailedError, LocalEnvironment
from procflow.testing import FaultAt

pytestmark = pytest.mark.timeout(60)


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def odd_fails(record):
    if record % 2:
        raise ValueError(f"odd record {record}")
    return record


def test_default_policy_fails_never_loses_silently(env_dir):
    env = LocalEnvironment("policy", env_dir=env_dir)
    env.from_batch(range(100)).map(odd_fails).collect()
    with pytest.raises(JobFailedError, match="odd record"):
        env.submit()


def test_skip_counts_and_logs_and_goes_on(env_dir):
    env = LocalEnvironment("policy", env_dir=env_dir)
    out = env.from_batch(range(1000)).map(odd_fails, parallelism=2, on_error="skip", name="m").collect()
    job = env.submit()
    assert sorted(out.results()) == list(range(0, 1000, 2))
    metrics = job.metrics
    assert metrics["m_0"]["errors"] + metrics["m_1"]["errors"] == 500
    assert job.summary()["operators"]["m"]["errors"] == 500
    assert job.dead_letters == []
    logged = "".join(read(p) for p in glob.glob(os.path.join(job.log_dir, "m_*_info.log")))
    assert "record 1 failed (ValueError: odd record 1); on_error=skip" in logged


@pytest.mark.parametrize("where", ["flatmap", "sink"])
def test_skip_in_other_operators(env_dir, where):
    env = LocalEnvironment("policy", env_dir=env_dir)
    src = env.from_batch(range(100))
    if where == "flatmap":
        src.flatmap(FaultAt(7, returns="list"), on_error="skip", name="op").collect()
    else:
        src.sink(FaultAt(7), on_error="skip", name="op")
    job = env.submit()
    assert job.metrics["op_0"]["errors"] == 1 and job.metrics["op_0"]["records_in"] == 100


def test_dead_letters_carry_records_and_tracebacks(env_dir):
    env = LocalEnvironment("policy", env_dir=env_dir)
    out = env.from_batch(range(600)).map(odd_fails, parallelism=2, on_error="dead_letter", name="m").collect()
    job = env.submit()
    assert sorted(out.results()) == list(range(0, 600, 2))
    letters = job.dead_letters
    assert sorted(d["record"] for d in letters) == list(range(1, 600, 2))   # more than one 256-entry batch
    assert {d["task"] for d in letters} <= {"m_0", "m_1"}
    first = next(d for d in letters if d["record"] == 1)
    assert first["error"] == "ValueError: odd record 1"
    assert "Traceback" in first["traceback"] and "in odd_fails" in first["traceback"]
    assert job.summary()["operators"]["m"]["errors"] == 300


def test_dead_letters_survive_a_later_failure(env_dir):
    """Records dead-lettered before a task fails are still delivered with the failure."""
    def bad(record):
        if record == 3:
            raise ValueError("dead letter")
        if record == 50:
            raise SystemExit("fatal")   # not an Exception: on_error does not apply; the task fails
        return record

    env = LocalEnvironment("policy", env_dir=env_dir)
    env.from_batch(range(100)).map(bad, on_error="dead_letter", name="m").sink(lambda r: None)
    with pytest.raises(JobFailedError, match="fatal"):
        env.submit()
    assert [d["record"] for d in env.job.dead_letters] == [3]


def test_unpicklable_dead_letter_travels_as_repr(env_dir):
    from procflow.testing import Unencodable

    def explode(record):
        raise ValueError("always")

    # Unchained, the record cannot even leave the source.
    env = LocalEnvironment("policy", {"chaining": False}, env_dir=env_dir)
    env.from_batch([Unencodable()]).map(explode, on_error="dead_letter").sink(lambda r: None)
    with pytest.raises(JobFailedError):
        env.submit()
    # Chained with its source (the default), the map receives it by call, fails on it, and its dead
    # letter, which pickle refuses, reaches the driver as the record's repr.
    env = LocalEnvironment("policy", env_dir=env_dir)
    env.from_batch([Unencodable(), 1]).map(explode, on_error="dead_letter", name="m").sink(lambda r: None)
    job = env.submit()
    # (the letters shipped with it travel as reprs too)
    assert [(d["task"], d["record"]) for d in job.dead_letters] == [("m_0", "Unencodable()"), ("m_0", "1")]
