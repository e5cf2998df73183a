"""bench.etl's pure parts: the generated CSV, the job's functions against the plain loops, the targets."""

from __future__ import annotations

import os

from bench import etl


def test_generated_lines_have_four_fields_and_repeat_for_the_same_start():
    lines = list(etl.csv_lines(500, keys=5, start=100))
    assert lines == list(etl.csv_lines(500, keys=5, start=100))
    assert lines != list(etl.csv_lines(500, keys=5, start=101))
    for i, line in enumerate(lines):
        ident, user, value, text = line.rstrip("\n").split(",")
        assert int(ident) == 100 + i and user in {f"user{k}" for k in range(5)}
        assert 0 <= int(value) < 1000 and text


def test_write_csv_by_lines_or_by_size(tmp_path):
    path = str(tmp_path / "a.csv")
    assert etl.write_csv(path, 1234) == (1234, os.path.getsize(path))
    lines, size = etl.write_csv(path, None, mb=0.5)
    with open(path) as f:
        assert size == os.path.getsize(path) >= 500_000 and lines == sum(1 for _ in f)


def test_parse_reads_a_line_with_or_without_its_ending():
    assert etl.parse("7,user3,42,a b c\n") == etl.parse("7,user3,42,a b c") == ("user3", 42)


def test_the_job_functions_give_the_plain_loops_answers(tmp_path):
    path = str(tmp_path / "a.csv")
    etl.write_csv(path, 3000, keys=7)
    natural: dict[str, int] = {}
    staged: dict[str, tuple[str, int]] = {}
    with open(path) as f:
        for line in f:
            user, value = etl.parse(line)
            natural[user] = natural.get(user, 0) + value
            record = (user, value)
            if etl.kept(record):
                w = etl.weigh(record)
                staged[user] = etl.add_weight(staged[user], w) if user in staged else w
    assert etl.answer("natural", list(natural.items())) == etl.plain_natural(path)
    assert etl.answer("5-stage", list(staged.items())) == etl.plain_5stage(path)
    assert len(etl.plain_natural(path)) == 7


def test_targets_are_speed_up_over_plain_per_core():
    case = {"contenders": {"plain": {"median": 2.0}, "procflow-read_text": {"median": 1.0},
                           "procflow-from_batch": {"median": 4.0}}}
    etl.derive(case, w=2)
    assert case["contenders"]["procflow-read_text"]["per_core"] == 1.0
    got = {t["name"]: (t["value"], t["met"]) for t in etl.targets({"shapes": {"natural": case}}, w=2)}
    assert got == {"natural: procflow-read_text vs plain": (2.0, True),
                   "natural: procflow-from_batch vs plain": (0.5, False)}
