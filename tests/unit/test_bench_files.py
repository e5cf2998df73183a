"""bench.files' pure parts: the generated logs, the Pool baseline's byte ranges, the targets."""

from __future__ import annotations

import json
import os

import pytest

from bench import files


def test_generated_lines_are_json_objects_of_about_150_bytes_and_repeat():
    lines = list(files.jsonl_lines(300, users=4, start=10))
    assert lines == list(files.jsonl_lines(300, users=4, start=10))
    records = [json.loads(line) for line in lines]
    assert [r["ts"] for r in records] == list(range(1_700_000_010, 1_700_000_310))
    assert {r["user"] for r in records} == {"u0", "u1", "u2", "u3"}
    assert 120 <= sum(map(len, lines)) / len(lines) <= 180


def test_write_jsonl_stops_near_the_size_asked(tmp_path):
    path = str(tmp_path / "l.jsonl")
    lines, size = files.write_jsonl(path, mb=0.3)
    assert size == os.path.getsize(path) and 300_000 <= size < 330_000
    assert files.plain_lines(path) == (lines, size)


@pytest.mark.parametrize("size, pieces", [(10, 3), (7, 7), (5, 9), (1000, 8)])
def test_byte_ranges_cover_the_file_once_without_empty_ranges(size, pieces):
    ranges = files.byte_ranges(size, pieces)
    assert ranges[0][0] == 0 and ranges[-1][1] == size
    assert all(lo < hi for lo, hi in ranges) and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


def test_range_lines_read_every_line_exactly_once_whatever_the_cut(tmp_path):
    # Lines of 1 to 6 bytes, one empty, and no final newline: every cut point lands at a line start,
    # inside a line, or on a newline somewhere in here.
    data = b"a\nbb\n\nccc\ndddd\ne\nffffff"
    path = str(tmp_path / "f.txt")
    with open(path, "wb") as f:
        f.write(data)
    want = data.splitlines(keepends=True)
    for cut in range(len(data) + 1):
        got = list(files.range_lines(path, 0, cut)) + list(files.range_lines(path, cut, len(data)))
        assert got == want, cut
    for cut2 in range(len(data) + 1):
        for cut1 in range(cut2 + 1):
            parts = [(0, cut1), (cut1, cut2), (cut2, len(data))]
            assert [line for lo, hi in parts for line in files.range_lines(path, lo, hi)] == want


def test_the_pool_baseline_counts_like_the_plain_loop(tmp_path):
    path = str(tmp_path / "l.jsonl")
    files.write_jsonl(path, mb=0.2, users=9)
    want = files.plain_count(path)
    merged: dict[str, int] = {}
    for lo, hi in files.byte_ranges(os.path.getsize(path), 7):   # the workers' part, in this process
        for user, n in files.count_range(path, lo, hi).items():
            merged[user] = merged.get(user, 0) + n
    assert merged == want and len(want) == 9


def test_targets():
    doc = {"cases": {"count": {"contenders": {"plain": {"median": 4.0}, "mp.Pool": {"median": 2.2},
                                              "procflow": {"median": 2.0}}},
                     "lines": {"contenders": {"plain-lines": {"median": 1.0},
                                              "procflow-read_text": {"median": 2.0}}}}}
    got = {t["name"]: (t["value"], t["met"]) for t in files.targets(doc, w=2)}
    assert got == {"count: procflow vs plain": (2.0, True), "count: procflow vs mp.Pool": (1.1, True),
                   "lines: read_text vs plain loop": (0.5, False)}
