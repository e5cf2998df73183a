"""File sinks in running jobs, on every backend: parts and _SUCCESS appear when the job succeeds, and
nothing when it fails or is stopped; a non-empty folder refuses the job before any process starts."""

from __future__ import annotations

import json
import os
import pathlib
import stat
import time

import numpy as np
import pytest

from procflow import JobFailedError, SinkFunction
from procflow.core.errors import OutputExistsError
from procflow.testing import Endless
from tests.integration.conftest import ALL_LOCAL, CONCURRENT, NO_RAY, wait_for

pytestmark = pytest.mark.timeout(120)


def parts(path) -> list[pathlib.Path]:
    return sorted(pathlib.Path(path).glob("part-*"))


def manifest(path) -> dict:
    return json.loads((pathlib.Path(path) / "_SUCCESS").read_text())


def test_jsonl_round_trip_with_success_manifest(backend, tmp_path):
    out = tmp_path / "out"
    records = [{"id": i, "key": f"k{i % 5}", "text": "ü" * (i % 3)} for i in range(500)]
    env = backend.make_env()
    # one source instance, round robin to both maps, so that each writes a part (a source that follows
    # the map's parallelism pulls splits, and one fast instance may take them all)
    env.from_batch(records, parallelism=1).map(lambda r: r, parallelism=2).write_jsonl(out)
    env.submit()
    files = parts(out)
    assert [f.name for f in files] == ["part-00000-of-00002.jsonl", "part-00001-of-00002.jsonl"]
    read = [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines()]
    assert sorted(read, key=lambda r: r["id"]) == records
    m = manifest(out)
    assert m["records"] == 500 and m["job_id"] == env.job.job_id
    assert {f["name"]: (f["records"], f["bytes"]) for f in m["files"]} == {
        f.name: (len(f.read_text(encoding="utf-8").splitlines()), f.stat().st_size) for f in files}
    assert sorted(os.listdir(out)) == ["_SUCCESS", *[f.name for f in files]]   # no staging left
    assert {stat.S_IMODE(f.stat().st_mode) for f in [*files, out / "_SUCCESS"]} == {0o600}
    assert stat.S_IMODE(out.stat().st_mode) == 0o700


@pytest.mark.backends(*ALL_LOCAL, "inline")
def test_every_format_round_trips_with_spawn_too(backend, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [{"id": i, "name": f"n{i}"} for i in range(60)]
    env = backend.make_env()
    stream = env.from_batch(rows)
    stream.write_text(tmp_path / "txt", parallelism=2).write_jsonl(tmp_path / "jsonl")
    stream.write_csv(tmp_path / "csv", parallelism=3).write_parquet(tmp_path / "parquet", parallelism=2)
    stream.map(lambda r: np.array([r["id"], r["id"] * 2], dtype=np.int32)).write_npy(tmp_path / "npy", parallelism=2)
    env.submit()
    import csv

    def csv_rows(f):
        with open(f, newline="") as fh:
            return [{"id": int(r["id"]), "name": r["name"]} for r in csv.DictReader(fh)]

    got = {
        "txt": sorted(line for f in parts(tmp_path / "txt") for line in f.read_text().splitlines()),
        "jsonl": [json.loads(line) for f in parts(tmp_path / "jsonl") for line in f.read_text().splitlines()],
        "csv": [r for f in parts(tmp_path / "csv") for r in csv_rows(f)],
        "parquet": [r for f in parts(tmp_path / "parquet") for r in pq.read_table(f).to_pylist()],
    }
    assert got["txt"] == sorted(str(r) for r in rows)
    for fmt in ("jsonl", "csv", "parquet"):
        assert sorted(got[fmt], key=lambda r: r["id"]) == rows, fmt
        assert manifest(tmp_path / fmt)["records"] == 60
    arrays = np.concatenate([np.load(f) for f in parts(tmp_path / "npy")])
    assert sorted(arrays[:, 0].tolist()) == list(range(60)) and (arrays[:, 1] == 2 * arrays[:, 0]).all()


class FailAfterStaged(SinkFunction):
    """Fails at end of input, once every instance of the other sink of the job has written and closed its
    part (observed from outside: their reports in the staging folder), so that the job fails after the
    sinks wrote all their data. Notes in `seen` how many it saw (inline runs tasks one step at a time in
    one thread, so there it does not wait)."""

    def __init__(self, out: str, seen: str, wait: float, instances: int) -> None:
        self.out, self.seen, self.wait, self.instances = out, seen, wait, instances

    def execute(self, record):
        pass

    def close(self):
        def staged():
            return list(pathlib.Path(self.out).glob("_staging-*/_instance-*.json"))
        deadline, delay = time.monotonic() + self.wait, 0.005
        while len(staged()) < self.instances and time.monotonic() < deadline:
            time.sleep(delay)   # observing another process's files, with backoff
            delay = min(2 * delay, 0.1)
        pathlib.Path(self.seen).write_text(str(len(staged())))
        raise RuntimeError("failing after the other sink wrote")


def test_a_failed_job_leaves_no_parts_and_no_staging(backend, tmp_path):
    out, seen = tmp_path / "out", tmp_path / "seen"
    env = backend.make_env()
    stream = env.from_batch(range(2000))
    stream.write_jsonl(out, parallelism=2)
    stream.sink(FailAfterStaged, str(out), str(seen), 0.0 if backend.in_driver else 30.0, 2)
    with pytest.raises(JobFailedError, match="failing after the other sink wrote"):
        env.submit()
    if not backend.in_driver:
        assert int(seen.read_text()) == 2, "the job should have failed after both parts were staged"
    assert list(out.iterdir()) == []


@pytest.mark.backends(*CONCURRENT)
def test_a_stopped_job_leaves_nothing(backend, tmp_path):
    out = tmp_path / "out"
    env = backend.make_env()
    env.from_source(Endless).write_jsonl(out)
    job = env.submit(autostop=False)
    wait_for(lambda: list(out.glob("_staging-*/part-*")), 60, "a staged part")
    env.stop()
    assert job.status == "stopped"
    assert list(out.iterdir()) == []


@pytest.mark.backends(*NO_RAY)
def test_a_non_empty_folder_refuses_the_job_before_any_process(backend, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    env = backend.make_env()
    env.from_batch(range(10)).map(lambda r: r, name="work").write_jsonl(out)
    with pytest.raises(OutputExistsError, match=r'mode="overwrite"') as info:
        env.submit()
    assert str(out) in str(info.value)
    assert sorted(os.listdir(out)) == ["old.txt"]
    # Refused before any task existed: no task wrote its log.
    logs = [name for job in os.listdir(backend.env_dir) for name in os.listdir(os.path.join(backend.env_dir, job))]
    assert not [n for n in logs if n.startswith("work")], logs


def test_overwrite_replaces_the_previous_output_once_the_job_succeeds(backend, tmp_path):
    out = tmp_path / "out"
    first = backend.make_env("first")
    first.from_batch(range(30), parallelism=1).write_jsonl(out, parallelism=3)   # a part per instance
    first.submit()
    assert len(parts(out)) == 3
    second = backend.make_env("second")
    second.from_batch(range(5)).write_jsonl(out, parallelism=1, mode="overwrite")
    second.submit()
    assert [f.name for f in parts(out)] == ["part-00000-of-00001.jsonl"]
    assert [json.loads(x) for x in parts(out)[0].read_text().splitlines()] == list(range(5))
    assert manifest(out)["job_id"] == second.job.job_id


@pytest.mark.backends("local-shm", "inline")
def test_a_failed_overwrite_keeps_the_previous_output(backend, tmp_path):
    out = tmp_path / "out"
    first = backend.make_env("first")
    first.from_batch(range(10)).write_jsonl(out)
    first.submit()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    second = backend.make_env("second")
    second.from_batch(range(10)).map(lambda r: 1 // (r - 7)).write_jsonl(out, mode="overwrite")
    with pytest.raises(JobFailedError, match="ZeroDivisionError"):
        second.submit()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
