"""read_csv (procflow/io/csvfile.py): the same rows as the csv module's own reader, whole files by
default (quoted line breaks), byte-range splits with multiline=False, and errors that name the line."""

from __future__ import annotations

import csv
import gzip

import pytest

from procflow.core.errors import InputFormatError
from procflow.io.csvfile import CsvSource


def read_all(source, parallelism=3):
    return [r for split in source.plan_splits(parallelism) for r in source.read_split(split)]


def write_rows(path, rows, **fmt):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, **fmt).writerows(rows)


def reference_dicts(path, **fmt):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, **fmt))


ROWS = [["id", "user", "value", "text"]] + [[str(i), f"user{i % 7}", str(i * 1.5), f"t,é \"{i}\""]
                                            for i in range(300)]


@pytest.mark.parametrize("multiline", [True, False])
@pytest.mark.parametrize("split_size", [None, 1, 200])
def test_dicts_as_the_csv_module_reads_them(tmp_path, multiline, split_size):
    path = tmp_path / "a.csv"
    write_rows(path, ROWS)
    source = CsvSource(str(path), multiline=multiline, split_size=split_size)
    if multiline:
        assert len(source.plan_splits(4)) == 1   # a whole file is one split
    elif split_size:
        assert len(source.plan_splits(4)) > 1    # every split after the first knows the header
    assert read_all(source) == reference_dicts(path)


def test_quoted_line_breaks_read_whole_by_default(tmp_path):
    rows = [["k", "note"], ["1", "two\nlines"], ["2", "crlf\r\ninside"], ["3", "plain"]]
    path = tmp_path / "multi.csv"
    write_rows(path, rows)
    assert read_all(CsvSource(str(path))) == reference_dicts(path)
    assert read_all(CsvSource(str(path)))[1]["note"] == "crlf\r\ninside"


def test_multiline_false_names_a_row_that_spans_lines(tmp_path):
    rows = [["k", "note"], ["1", "a"], ["2", "b"], ["3", "two\nlines"], ["4", "c"]]
    path = tmp_path / "multi.csv"
    write_rows(path, rows)
    with pytest.raises(InputFormatError, match=r"multi.csv, line 4: a quoted field runs over the end of the "
                                               r"line.*multiline=True") as info:
        read_all(CsvSource(str(path), multiline=False))
    assert info.value.text == '3,"two'


def test_multiline_false_never_misreads_a_spanning_row_at_any_split_size(tmp_path):
    """Wherever the split (and block) boundaries fall, also right after the line that opens the quote,
    a row that spans lines fails with its line number; it is never silently cut in two."""
    rows = [["k", "note"]] + [[str(i), "x"] for i in range(6)] + [["6", "two\nlines"], ["7", "y"]]
    path = tmp_path / "multi.csv"
    write_rows(path, rows)
    for size in range(1, path.stat().st_size + 1):
        with pytest.raises(InputFormatError, match=r"line 8: a quoted field runs over"):
            read_all(CsvSource(str(path), multiline=False, split_size=size), 2)


def test_tuples_without_header_and_dialect_options(tmp_path):
    rows = [["a", "b;c", "d"], ["1", "", "x"]]
    path = tmp_path / "semi.csv"
    write_rows(path, rows, delimiter=";", quotechar="'")
    assert read_all(CsvSource(str(path), header=False, delimiter=";", quotechar="'")) == [tuple(r) for r in rows]
    with pytest.raises(TypeError, match="bad csv option"):
        CsvSource(str(path), delimiter=";;")


def test_a_row_with_the_wrong_field_count(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("a,b\n1,2\n\n3\n4,5\n")
    with pytest.raises(InputFormatError, match=r"short.csv, line 4: the row has 1 field\(s\), the header 2"):
        read_all(CsvSource(str(path), multiline=False, split_size=6))
    with pytest.raises(InputFormatError, match=r"short.csv, line 4: the row has 1 field\(s\), the header 2"):
        read_all(CsvSource(str(path)))


def test_compressed_and_several_files(tmp_path):
    plain = tmp_path / "a.csv"
    write_rows(plain, ROWS[:50])
    packed = tmp_path / "b.csv.gz"
    with gzip.open(packed, "wt", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([ROWS[0]] + ROWS[50:])
    for multiline in (True, False):
        got = read_all(CsvSource([str(plain), str(packed)], multiline=multiline, split_size=100))
        assert got == reference_dicts(plain) + [dict(zip(ROWS[0], r)) for r in ROWS[50:]]
