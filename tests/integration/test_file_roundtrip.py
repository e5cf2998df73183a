"""Write then read: every file sink's output read back through the matching file source gives the records
that went in (issue 18). The sinks and the sources were built separately; this pins that they agree on
each format, including the folder layout (`_SUCCESS` is skipped when a folder is read)."""

from __future__ import annotations

import numpy as np
import pytest

ROWS = [{"id": i, "name": f"n{i}", "score": i / 4} for i in range(300)]


def _roundtrip(backend, tmp_path, write, read):
    out = tmp_path / "out"
    env = backend.make_env()
    write(env.from_batch(ROWS), out)
    env.submit()
    env2 = backend.make_env()
    result = read(env2, out).collect()
    env2.submit()
    return result.results()


@pytest.mark.backends("local-shm", "inline", "ray")
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_jsonl_and_parquet_round_trip(backend, tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    got = _roundtrip(backend, tmp_path,
                     lambda s, out: getattr(s, f"write_{fmt}")(out, parallelism=2),
                     lambda env, out: getattr(env, f"read_{fmt}")(out, parallelism=2))
    assert sorted(got, key=lambda r: r["id"]) == ROWS


@pytest.mark.backends("local-shm", "inline")
def test_csv_round_trip_gives_strings_by_header(backend, tmp_path):
    got = _roundtrip(backend, tmp_path, lambda s, out: s.write_csv(out, parallelism=3),
                     lambda env, out: env.read_csv(out, parallelism=2))
    expected = [{k: str(v) for k, v in r.items()} for r in ROWS]   # CSV keeps no types
    assert sorted(got, key=lambda r: int(r["id"])) == expected


@pytest.mark.backends("local-shm", "inline")
def test_text_round_trip_keeps_every_line(backend, tmp_path):
    lines = [f"line {i} · ü" if i % 7 else "" for i in range(500)]
    out = tmp_path / "out"
    env = backend.make_env()
    env.from_batch(lines).write_text(out, parallelism=2)
    env.submit()
    env2 = backend.make_env()
    result = env2.read_text(out, parallelism=3).collect()
    env2.submit()
    assert sorted(result.results()) == sorted(lines)


@pytest.mark.backends("local-shm", "inline")
def test_npy_round_trip_gives_the_rows(backend, tmp_path):
    out = tmp_path / "out"
    env = backend.make_env()
    (env.from_batch(range(200)).map(lambda i: np.array([i, i * i], dtype=np.int64))
        .write_npy(out, parallelism=2))
    env.submit()
    env2 = backend.make_env()
    result = env2.read_npy(out, parallelism=2).map(lambda row: row.tolist()).collect()
    env2.submit()
    assert sorted(result.results()) == [[i, i * i] for i in range(200)]
