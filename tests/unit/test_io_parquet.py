"""read_parquet (procflow/io/parquet.py): row groups as splits, rows as dicts or RecordBatches, as
pyarrow reads them; and without pyarrow, an error that names the extra to install."""

from __future__ import annotations

import sys

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from procflow.io.parquet import ParquetSource  # noqa: E402


def read_all(source, parallelism=3):
    return [r for split in source.plan_splits(parallelism) for r in source.read_split(split)]


@pytest.fixture
def files(tmp_path):
    paths = []
    schema = pa.schema([("id", pa.int64()), ("user", pa.string()), ("v", pa.float64())])
    for n, rows in enumerate((95, 0, 30)):
        table = pa.table({"id": list(range(rows)), "user": [f"u{i % 7}" for i in range(rows)],
                          "v": [i * 0.5 for i in range(rows)]}, schema=schema)
        path = tmp_path / f"part-{n}.parquet"
        pq.write_table(table, path, row_group_size=20)
        paths.append(str(path))
    return paths


def test_dicts_as_pyarrow_reads_them(files):
    source = ParquetSource(files)
    plan = source.plan_splits(2)
    assert [s.size for s in plan] == [20, 20, 20, 20, 15, 20, 10]   # row groups; the empty file has none
    assert read_all(source) == [row for p in files for row in pq.read_table(p).to_pylist()]


def test_batches_and_columns(files):
    batches = read_all(ParquetSource(files, batch=True, columns=["user", "v"]))
    assert all(isinstance(b, pa.RecordBatch) and b.schema.names == ["user", "v"] for b in batches)
    got = pa.Table.from_batches(batches)
    expected = pa.concat_tables([pq.read_table(p, columns=["user", "v"]) for p in files])
    assert got.equals(expected)
    with pytest.raises(TypeError, match="columns must be a list"):
        ParquetSource(files, columns="user")


def test_without_pyarrow_the_error_names_the_extra(files, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)          # `import pyarrow` now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"ParquetSource needs pyarrow, which is not installed: "
                                          r"pip install 'procflow\[arrow\]'"):
        ParquetSource(files)
