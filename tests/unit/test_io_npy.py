"""read_npy (procflow/io/npy.py): rows or blocks of rows of memory-mapped .npy files, split by row ranges,
read as np.load reads them."""

from __future__ import annotations

import numpy as np
import pytest

from procflow.io.npy import NpySource


def read_all(source, parallelism=3):
    return [r for split in source.plan_splits(parallelism) for r in source.read_split(split)]


@pytest.fixture
def arrays(tmp_path):
    a = np.arange(101 * 3, dtype=np.float32).reshape(101, 3)
    b = np.arange(10 * 3, dtype=np.float32).reshape(10, 3) * -1
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    return [str(tmp_path / "a.npy"), str(tmp_path / "b.npy")], np.concatenate([a, b])


@pytest.mark.parametrize("split_rows", [None, 1, 7, 1000])
def test_rows_as_np_load_gives_them(arrays, split_rows):
    paths, expected = arrays
    source = NpySource(paths, split_rows=split_rows)
    plan = source.plan_splits(2)
    assert sum(s.size for s in plan) == len(expected)
    rows = read_all(source)
    assert len(rows) == len(expected)
    assert all(type(r) is np.ndarray and r.shape == (3,) and not r.flags.writeable for r in rows)
    np.testing.assert_array_equal(np.stack(rows), expected)


@pytest.mark.parametrize("split_rows", [None, 5, 8])
def test_blocks_of_rows_never_cut_by_a_split(arrays, split_rows):
    paths, expected = arrays
    source = NpySource(paths, rows_per_record=4, split_rows=split_rows)
    plan = source.plan_splits(3)
    blocks = read_all(source)
    # a.npy: 101 rows = 25 blocks of 4 and one of 1; b.npy: 10 rows = 2 of 4 and one of 2
    assert [len(b) for b in blocks] == [4] * 25 + [1] + [4, 4, 2]
    assert sum(s.size for s in plan) == len(blocks)
    assert all(s.descriptor.start % 4 == 0 for s in plan)
    np.testing.assert_array_equal(np.concatenate(blocks), expected)


def test_a_1d_file_gives_scalars(tmp_path):
    np.save(tmp_path / "v.npy", np.arange(5, dtype=np.int64))
    assert read_all(NpySource(str(tmp_path / "v.npy"), split_rows=2)) == [0, 1, 2, 3, 4]


def test_files_that_cannot_be_mapped_fail_in_the_driver(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="cannot memory-map .*obj.npy.*not object arrays"):
        NpySource(str(tmp_path / "obj.npy"))
    (tmp_path / "not.npy").write_bytes(b"hello")
    with pytest.raises(ValueError, match="cannot memory-map .*not.npy"):
        NpySource(str(tmp_path / "not.npy"))
    np.save(tmp_path / "scalar.npy", np.float64(3.0))
    with pytest.raises(ValueError, match="0-d array"):
        NpySource(str(tmp_path / "scalar.npy"))
    np.save(tmp_path / "ok.npy", np.zeros(3))
    with pytest.raises(ValueError, match="rows_per_record must be a positive int"):
        NpySource(str(tmp_path / "ok.npy"), rows_per_record=0)
