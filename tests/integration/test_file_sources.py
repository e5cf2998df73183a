"""The file sources end to end: env.read_text / read_jsonl / read_csv / read_npy / read_parquet through a
real job, the same records as a plain Python read of the files, on the backends named per test."""

from __future__ import annotations

import bz2
import csv
import gzip
import json
from collections import Counter

import numpy as np
import pytest

from procflow import JobFailedError

TEXT_FILES = {
    "a.txt": "alpha\nbeta\r\ngamma é\n" * 40,
    "b.txt": "",                                       # empty
    "c.txt": "no final newline\n€ 𝄞\nlast",            # no final newline, multi-byte characters
    "d.txt.gz": "zipped\r\n" * 30,
    "e.txt.bz2": "packed\n" * 7,
}


def write_text_files(folder):
    for name, text in TEXT_FILES.items():
        opener = gzip.open if name.endswith(".gz") else bz2.open if name.endswith(".bz2") else open
        with opener(folder / name, "wb") as f:
            f.write(text.encode())


def expected_lines():
    out = []
    for text in TEXT_FILES.values():
        out += text.replace("\r\n", "\n").split("\n")[: None if not text.endswith("\n") else -1] if text else []
    return out


@pytest.mark.backends("local-shm", "local-mp", "inline", "local-shm-spawn", "ray")
def test_read_text_every_line_once(backend, tmp_path):
    write_text_files(tmp_path)
    env = backend.make_env()
    # A glob, small splits: the plain files split many times, each compressed file is one split.
    lines = env.read_text(str(tmp_path / "*.txt*"), parallelism=3, split_size=16).collect()
    env.submit()
    assert sorted(lines.results()) == sorted(expected_lines())
    assert len(lines.results()) == 40 * 3 + 3 + 30 + 7


@pytest.mark.backends("local-shm", "inline")
def test_read_text_feeds_a_word_count(backend, tmp_path):
    text = "".join(f"w{i % 13} w{i % 5}\n" for i in range(2000))
    (tmp_path / "words.txt").write_text(text)
    env = backend.make_env()
    counts = (env.read_text(tmp_path / "words.txt", parallelism=2, split_size=1000, name="words")
              .flatmap(str.split, parallelism=2)
              .keyby(lambda w: w)
              .map(lambda w: 1)
              .reduce(lambda total, one: total + one, parallelism=2)
              .collect())
    env.submit()
    assert env.operator_names[0] == "words"
    assert dict(counts.results()) == dict(Counter(text.split()))


@pytest.mark.backends("local-shm", "inline", "ray")
def test_read_jsonl_sets_bad_lines_aside(backend, tmp_path):
    path = tmp_path / "logs.jsonl"
    lines = [json.dumps({"i": i, "user": f"u{i % 3}"}) for i in range(200)]
    lines[57] = '{"i": 57, oops}'
    lines[150] = "not json"
    path.write_text("\n".join(lines) + "\n")
    env = backend.make_env()
    records = env.read_jsonl(path, parallelism=2, split_size=500, on_error="dead_letter").collect()
    job = env.submit()
    assert sorted(r["i"] for r in records.results()) == [i for i in range(200) if i not in (57, 150)]
    dead = sorted(job.dead_letters, key=lambda d: d["record"])
    assert [d["record"] for d in dead] == ['not json', '{"i": 57, oops}']
    assert "logs.jsonl, line 151: invalid JSON" in dead[0]["error"]
    assert "logs.jsonl, line 58: invalid JSON" in dead[1]["error"]
    assert job.metrics is not None


@pytest.mark.backends("local-shm", "inline")
def test_read_jsonl_fails_naming_file_and_line(backend, tmp_path):
    path = tmp_path / "logs.jsonl"
    path.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(100)) + "{broken\n")
    env = backend.make_env()
    env.read_jsonl(path, parallelism=2, split_size=300).collect()
    with pytest.raises(JobFailedError, match=r"logs.jsonl, line 101: invalid JSON: Expecting property name"):
        env.submit()
    env = backend.make_env("skip")
    kept = env.read_jsonl(path, parallelism=2, split_size=300, on_error="skip").collect()
    job = env.submit()
    assert len(kept.results()) == 100 and job.dead_letters == []


@pytest.mark.backends("local-shm", "inline")
def test_read_csv_npy_parquet_as_plain_python_reads_them(backend, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    with open(tmp_path / "rows.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "note"]] + [[str(i), f"n,{i}\n" if i % 10 == 0 else "x"] for i in range(100)])
    with open(tmp_path / "rows.csv", newline="") as f:
        csv_expected = list(csv.DictReader(f))
    array = np.arange(500 * 4, dtype=np.int32).reshape(500, 4)
    np.save(tmp_path / "rows.npy", array)
    table = pa.table({"id": list(range(300)), "s": [str(i) for i in range(300)]})
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=64)

    env = backend.make_env()
    rows = env.read_csv(tmp_path / "rows.csv", parallelism=2).collect()
    vectors = env.read_npy(tmp_path / "rows.npy", parallelism=3, split_rows=40).map(lambda a: a.tolist()).collect()
    blocks = env.read_npy(tmp_path / "rows.npy", parallelism=2, rows_per_record=64).map(lambda a: a.sum()).collect()
    records = env.read_parquet(tmp_path / "rows.parquet", parallelism=2).collect()
    env.submit()
    assert sorted(rows.results(), key=lambda r: int(r["id"])) == csv_expected
    assert sorted(vectors.results()) == array.tolist()
    assert sorted(blocks.results()) == sorted(int(array[i:i + 64].sum()) for i in range(0, 500, 64))
    assert sorted(records.results(), key=lambda r: r["id"]) == table.to_pylist()
    assert {"read_csv", "read_npy", "read_npy2", "read_parquet"} <= set(env.operator_names)   # default names


def test_mistakes_fail_at_the_call_before_any_process(tmp_path):
    from procflow import LocalEnvironment

    with LocalEnvironment("t", env_dir=str(tmp_path / "env")) as env:
        with pytest.raises(FileNotFoundError, match="no such file"):
            env.read_text(tmp_path / "missing.txt")
        with pytest.raises(FileNotFoundError, match="matches no file"):
            env.read_jsonl(str(tmp_path / "*.jsonl"))
        (tmp_path / "a.csv").write_text("a\n1\n")
        with pytest.raises(ValueError, match="on_error must be one of"):
            env.read_csv(tmp_path / "a.csv", on_error="ignore")
        assert env.job is None
