"""Each file sink's parts are what a plain Python reader reads back (json.loads per line, the csv module,
np.load, pyarrow), and its _SUCCESS manifest counts them. No processes: the sink is driven as the
runtime drives it (sink_driver.py)."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest

from procflow.io.sinks import CsvSink, JsonlSink, NpySink, ParquetSink, TextSink
from procflow.io.sinks.npy import npy_header
from tests.unit.sink_driver import part_files, write_parts

RECORDS = [{"id": i, "user": f"user{i % 7}", "value": i * 0.5, "text": "héllo, \"wörld\"\n" if i % 5 == 0 else "x"}
           for i in range(200)]


def split(records, n):
    return [records[i::n] for i in range(n)]


def test_jsonl_parts_read_back_with_json_loads(tmp_path):
    out = tmp_path / "out"
    manifest = write_parts(JsonlSink, out, split(RECORDS, 3))
    files = part_files(out)
    assert [f.name for f in files] == [f"part-0000{i}-of-00003.jsonl" for i in range(3)]
    read = [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines()]
    assert sorted(read, key=lambda r: r["id"]) == RECORDS
    assert manifest["records"] == len(RECORDS) == sum(f["records"] for f in manifest["files"])
    assert [f["bytes"] for f in manifest["files"]] == [p.stat().st_size for p in files]
    assert manifest["format"] == "jsonl" and manifest["parallelism"] == 3


def test_jsonl_default_encodes_what_json_cannot(tmp_path):
    out = tmp_path / "out"
    write_parts(JsonlSink, out, [[{"n": np.int64(3)}]], default=int)
    assert json.loads(part_files(out)[0].read_text()) == {"n": 3}


def test_text_parts_hold_one_line_per_record(tmp_path):
    out = tmp_path / "out"
    lines = ["plain", "ünïcode ✓", "", 42, "tab\tseparated"]
    write_parts(TextSink, out, [lines[:2], lines[2:]])
    read = [line for f in part_files(out) for line in f.read_bytes().decode("utf-8").split("\n")[:-1]]
    assert read == ["plain", "ünïcode ✓", "", "42", "tab\tseparated"]


def test_csv_dicts_read_back_with_dictreader(tmp_path):
    out = tmp_path / "out"
    write_parts(CsvSink, out, split(RECORDS, 2))
    read = []
    for f in part_files(out):
        with open(f, newline="", encoding="utf-8") as fh:
            read += list(csv.DictReader(fh))
    expected = [{k: str(v) for k, v in r.items()} for r in RECORDS]
    assert sorted(read, key=lambda r: int(r["id"])) == expected


def test_csv_tuples_with_dialect_options_and_fieldnames(tmp_path):
    out = tmp_path / "out"
    rows = [(1, "a;b", 2.5), (2, "c", -1.0)]
    write_parts(CsvSink, out, [rows], fieldnames=["id", "name", "x"], delimiter=";")
    with open(part_files(out)[0], newline="") as fh:
        assert list(csv.reader(fh, delimiter=";")) == [["id", "name", "x"], ["1", "a;b", "2.5"], ["2", "c", "-1.0"]]


def test_csv_record_with_a_key_the_header_lacks_fails_naming_it(tmp_path):
    with pytest.raises(ValueError, match="surprise"):
        write_parts(CsvSink, tmp_path / "out", [[{"a": 1}, {"a": 2, "surprise": 3}]])
    assert list((tmp_path / "out").iterdir()) == []   # aborted: no part, no staging


def test_csv_bad_dialect_option_fails_in_the_driver(tmp_path):
    with pytest.raises(TypeError):
        CsvSink(tmp_path / "out", delimiter="too long")


def test_npy_rows_read_back_with_np_load(tmp_path):
    out = tmp_path / "out"
    rows = [np.arange(4, dtype=np.float32) * i for i in range(10)]
    manifest = write_parts(NpySink, out, [rows[:7], rows[7:]])
    parts = [np.load(f) for f in part_files(out)]
    assert [p.shape for p in parts] == [(7, 4), (3, 4)]
    np.testing.assert_array_equal(np.concatenate(parts), np.stack(rows))
    assert np.load(part_files(out)[0], mmap_mode="r").dtype == np.float32
    assert manifest["records"] == 10


def test_npy_blocks_of_rows_and_scalars(tmp_path):
    blocks = [np.arange(6, dtype=np.int64).reshape(3, 2) + 10 * i for i in range(4)]
    write_parts(NpySink, tmp_path / "blocks", [blocks], blocks=True)
    np.testing.assert_array_equal(np.load(part_files(tmp_path / "blocks")[0]), np.concatenate(blocks))
    write_parts(NpySink, tmp_path / "scalars", [[1.5, 2.5, 3.5]])
    np.testing.assert_array_equal(np.load(part_files(tmp_path / "scalars")[0]), [1.5, 2.5, 3.5])


def test_npy_strings_and_structured_dtypes(tmp_path):
    rows = [np.array(["ab", "cde"]), np.array(["f", "ghi"])]
    write_parts(NpySink, tmp_path / "s", [rows])
    np.testing.assert_array_equal(np.load(part_files(tmp_path / "s")[0]), np.stack(rows))
    dt = np.dtype([("a", "<i4"), ("b", "<f8")])
    recs = [np.array((i, i / 2), dtype=dt) for i in range(3)]
    write_parts(NpySink, tmp_path / "r", [recs])
    np.testing.assert_array_equal(np.load(part_files(tmp_path / "r")[0]), np.stack(recs))


def test_npy_header_reserves_room_for_any_row_count():
    big = npy_header("<f8", (2**63 - 1, 3))
    assert len(big) % 64 == 0
    small = npy_header("<f8", (5, 3), len(big))
    assert len(small) == len(big) and small.endswith(b"\n")
    with pytest.raises(ValueError, match="reserved"):
        npy_header("<f8", (2**63 - 1, 3), 64)


def test_npy_record_of_another_shape_or_dtype_fails_naming_both(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(3,\).*row shape \(2,\)"):
        write_parts(NpySink, tmp_path / "a", [[np.zeros(2), np.zeros(3)]])
    with pytest.raises(ValueError, match="int64"):
        write_parts(NpySink, tmp_path / "b", [[np.zeros(2), np.zeros(2, dtype=np.int64)]])
    with pytest.raises(TypeError, match="pickled"):
        write_parts(NpySink, tmp_path / "c", [[np.array([object()])]])


def test_npy_large_records_bypass_the_buffer(tmp_path):
    rows = [np.full((1 << 18,), i, dtype=np.float64) for i in range(3)]   # 2 MiB each
    write_parts(NpySink, tmp_path / "out", [rows])
    np.testing.assert_array_equal(np.load(part_files(tmp_path / "out")[0]), np.stack(rows))


def test_parquet_dicts_read_back_with_pyarrow(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "out"
    manifest = write_parts(ParquetSink, out, split(RECORDS, 2), row_group_size=30)
    read = [row for f in part_files(out) for row in pq.read_table(f).to_pylist()]
    assert sorted(read, key=lambda r: r["id"]) == RECORDS
    assert pq.ParquetFile(part_files(out)[0]).num_row_groups == 4   # 100 rows, 30 per group
    assert manifest["records"] == 200


def test_parquet_record_batches(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    batches = [pa.RecordBatch.from_pydict({"k": [i, i + 1], "v": [f"a{i}", "b"]}) for i in range(3)]
    write_parts(ParquetSink, tmp_path / "out", [batches])
    table = pq.read_table(part_files(tmp_path / "out")[0])
    assert table.to_pylist() == pa.Table.from_batches(batches).to_pylist()


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)   # `import pyarrow` now raises ImportError
    with pytest.raises(ImportError, match=r"procflow\[arrow\]"):
        ParquetSink(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_instance_without_records_writes_no_part(tmp_path):
    out = tmp_path / "out"
    manifest = write_parts(JsonlSink, out, [[1, 2], [], [3]])
    assert [f.name for f in part_files(out)] == ["part-00000-of-00003.jsonl", "part-00002-of-00003.jsonl"]
    assert manifest["records"] == 3 and len(manifest["files"]) == 2


@pytest.mark.parametrize("sink", [TextSink, JsonlSink, CsvSink, NpySink])
def test_a_bad_mode_fails_when_the_pipeline_is_built(tmp_path, sink):
    with pytest.raises(ValueError, match="overwrite"):
        sink(tmp_path / "out", "append")


def test_parquet_copies_arrays_it_keeps_until_the_row_group_is_written(tmp_path):
    """A record's array may be a view on ring memory, valid only during the call (issue 19): rows wait
    for their row group, so the sink copies arrays in them. The view here is overwritten after each
    call, as a ring slot would be."""
    pq = pytest.importorskip("pyarrow.parquet")
    from tests.unit.sink_driver import instance

    driver = ParquetSink(tmp_path / "out")
    driver.prepare_output("0badc0de", 1)
    sink = instance(driver, 0, 1)
    slot = np.zeros(3)
    for i in range(5):
        slot[:] = i
        sink.execute({"i": i, "v": slot})
        slot[:] = -1   # the ring reuses the space once the call has returned
    sink.close()
    driver.commit_output()
    rows = pq.read_table(part_files(tmp_path / "out")[0]).to_pylist()
    assert [r["v"] for r in rows] == [[float(i)] * 3 for i in range(5)]
