"""Combiners on every backend (issue 19): a keyed reduce's senders pre-reduce, only partials cross the
shuffle, and the results are those of reducing every record."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from procflow import JobFailedError, ReduceFunction

from .conftest import CORE, NO_RAY

pytestmark = pytest.mark.timeout(60)

N_KEYS = 50


def csv_lines(n):
    return [f"{i},user{(i * 7) % N_KEYS},{i % 97},text {i}" for i in range(n)]


def parse(line):
    _, user, value, _ = line.split(",")
    return user, int(value)


def add_values(a, b):
    return a[0], a[1] + b[1]


def python_totals(lines):
    totals: dict = {}
    for line in lines:
        user, value = parse(line)
        totals[user] = totals.get(user, 0) + value
    return totals


def reduced_in(job, operator, parallelism):
    """Records the reduce's tasks received: partials where its senders combine."""
    return sum(job.metrics[f"{operator}_{i}"]["records_in"] for i in range(parallelism))


def group_by(env, lines, combine):
    return (env.from_batch(lines).map(parse, parallelism=2).keyby(lambda r: r[0])
            .reduce(add_values, parallelism=2, combine=combine, name="total").collect())


@pytest.mark.backends(*CORE, "local-shm-spawn")   # spawn: each sending task unpickles its own copy
@pytest.mark.parametrize("combine", [True, False], ids=["combined", "every-record"])
def test_the_group_by_gives_the_plain_python_answer_and_combining_sends_partials(backend, combine):
    lines = csv_lines(3000)
    env = backend.make_env()
    result = group_by(env, lines, combine)
    job = env.submit()
    assert {key: total for key, (_, total) in result.results()} == python_totals(lines)
    assert len(result.results()) == N_KEYS   # one (key, value) per key
    if combine:   # at most one partial per key from each of the two parse tasks
        assert N_KEYS <= reduced_in(job, "total", 2) <= 2 * N_KEYS
    else:         # combine=False really sends every record
        assert reduced_in(job, "total", 2) == len(lines)


class Offset(ReduceFunction):
    """A reduce class with state set up in open(): its combining copy is opened in the sending task."""

    def open(self):
        self.zero = 0

    def execute(self, accumulated, record):
        return accumulated + record + self.zero


@pytest.mark.backends(*NO_RAY)
def test_a_reduce_class_is_opened_where_it_combines(backend):
    env = backend.make_env()
    result = (env.from_batch(range(1000), parallelism=2).keyby(lambda r: r % 3)
              .reduce(Offset, parallelism=2, name="offset").collect())
    job = env.submit()
    assert dict(result.results()) == {k: sum(r for r in range(1000) if r % 3 == k) for k in range(3)}
    assert reduced_in(job, "offset", 2) <= 2 * 3   # combined in the two source tasks


def test_a_key_carried_from_upstream_combines_too(backend):
    # the word count's shape: keyby, a map that keeps the key, then the reduce
    words = [f"w{i % 13}" for i in range(2000)]
    env = backend.make_env()
    result = (env.from_batch(words).keyby(lambda w: w).map(lambda w: 1, parallelism=2)
              .reduce(lambda a, b: a + b, parallelism=3, name="count").collect())
    job = env.submit()
    assert dict(result.results()) == {f"w{k}": len(range(k, 2000, 13)) for k in range(13)}
    assert reduced_in(job, "count", 3) <= 2 * 13


@pytest.mark.backends(*NO_RAY)
def test_arrays_combine_to_the_same_sums(backend):
    env = backend.make_env()
    result = (env.from_batch(range(60)).map(lambda i: (i % 4, np.full(1000, float(i))), parallelism=2)
              .keyby(lambda r: r[0]).map(lambda r: r[1])
              .reduce(lambda a, b: a + b, parallelism=2, name="sum").collect())
    job = env.submit()
    got = {key: total.tolist() for key, total in result.results()}
    assert got == {k: [float(sum(range(k, 60, 4)))] * 1000 for k in range(4)}
    assert reduced_in(job, "sum", 2) <= 4


@pytest.mark.backends(*NO_RAY)
def test_a_record_whose_key_fails_is_skipped_by_its_sender_and_the_rest_combine(backend):
    def user_of(record):
        if record[1] == 13:
            raise ValueError("no user in record 13")
        return record[0]

    env = backend.make_env()
    records = [(f"u{i % 5}", i) for i in range(200)]
    result = (env.from_batch(records).map(lambda r: r, parallelism=2, on_error="skip", name="parse")
              .keyby(user_of).reduce(add_values, parallelism=2, name="total").collect())
    job = env.submit()
    expected = {f"u{k}": sum(i for i in range(k, 200, 5) if i != 13) for k in range(5)}
    assert {key: total for key, (_, total) in result.results()} == expected
    assert reduced_in(job, "total", 2) <= 2 * 5
    assert job.metrics["parse_0"]["errors"] + job.metrics["parse_1"]["errors"] == 1


@pytest.mark.backends(*NO_RAY)
def test_a_fold_that_fails_while_combining_names_the_sending_task_and_its_record(backend):
    def picky(a, b):
        if b[1] == 77:
            raise ValueError("cannot add 77")
        return add_values(a, b)

    env = backend.make_env()
    records = [("k", i) for i in range(100)]
    env.from_batch(records).map(lambda r: r, name="parse").keyby(lambda r: r[0]).reduce(picky).collect()
    with pytest.raises(JobFailedError, match="cannot add 77") as failed:
        env.submit()
    err = failed.value
    assert err.task == "parse_0" and "77" in (err.record or "")
    if sys.version_info >= (3, 11):   # exception notes
        assert "run as a combiner in the sending task" in (err.remote_traceback or "")
