"""read_jsonl (procflow/io/jsonl.py): the same values as a plain Python loop, whatever the splits, and
a bad line named by file, line number and parser message, also in a split that starts mid-file."""

from __future__ import annotations

import json
import random

import pytest

from procflow.core.errors import InputFormatError
from procflow.io.jsonl import JsonlSource


def read_all(source, parallelism=3):
    return [r for split in source.plan_splits(parallelism) for r in source.read_split(split)]


def write_logs(path, n=500, seed=7):
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8", newline="") as f:
        for i in range(n):
            rec = {"id": i, "user": f"user{rng.randrange(20)}", "v": rng.random(), "tags": ["é", "€"][: i % 3],
                   "nested": {"ok": i % 2 == 0, "none": None}}
            f.write(json.dumps(rec, ensure_ascii=bool(i % 2)) + ("\r\n" if i % 5 == 0 else "\n"))
            if i % 97 == 0:
                f.write("\n")      # blank lines are skipped


def reference(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize("split_size", [None, 1, 100, 4096])
def test_same_values_as_plain_python(tmp_path, split_size):
    path = tmp_path / "logs.jsonl"
    write_logs(path)
    assert read_all(JsonlSource(str(path), split_size=split_size)) == reference(path)


def test_a_bad_line_names_file_line_and_parser_message(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = [json.dumps({"i": i}) for i in range(40)]
    lines = good[:30] + ['{"i": 30,,}'] + good[30:]
    path.write_text("\n".join(lines) + "\n")
    # Small splits: the bad line (line 31) is read by a split that starts far into the file.
    source = JsonlSource(str(path), split_size=50)
    assert source.plan_splits(1)[-1].descriptor.start > 0
    with pytest.raises(InputFormatError) as info:
        read_all(source)
    err = info.value
    assert (err.path, err.line, err.text) == (str(path), 31, '{"i": 30,,}')
    assert str(err).startswith(f"{path}, line 31: invalid JSON: Expecting property name enclosed in double quotes")
    assert "on_error='skip'" in str(err)


def test_line_numbers_stay_exact_past_the_first_bad_line(tmp_path):
    """Set-aside lines (the task's on_error) do not stop the split; each bad line has its own number."""
    path = tmp_path / "bad.jsonl"
    path.write_text("1\nx\n2\n\n{\ny\n3\n")

    class Ctx:
        aside: list = []

        def set_aside(self, record, error):
            self.aside.append((record, error.line))

    source = JsonlSource(str(path), split_size=3)
    source.ctx = Ctx()
    assert read_all(source, 2) == [1, 2, 3]
    assert Ctx.aside == [("x", 2), ("{", 5), ("y", 6)]


def test_a_custom_parser(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("1\n2\n")
    assert read_all(JsonlSource(str(path), loads=lambda s: int(s) * 10)) == [10, 20]
    with pytest.raises(TypeError, match="loads must be a callable"):
        JsonlSource(str(path), loads="json")  # type: ignore[arg-type]
