"""Pipelines the CLI tests run, as `procflow run tests/cli/pipelines.py:<name>` or in-process."""

from __future__ import annotations

import os
import time

from procflow import MapFunction, SourceFunction

N_COUNTED = 1000
N_SLOW = 400
SLOW_SECONDS = 0.002


def counted(env):
    """Exact counts: 1000 in, flatmap doubles (2000), filter keeps multiples of 3 (2 * 334 = 668)."""
    return (env.from_batch(range(N_COUNTED), parallelism=1)   # one source: its counts are exact
            .flatmap(lambda x: [x, x], parallelism=2)
            .filter(lambda x: x % 3 == 0)
            .collect())


class Sleepy(MapFunction):
    def execute(self, record):
        time.sleep(SLOW_SECONDS)   # made slow on purpose: this operator is the bottleneck
        return record


def slow(env):
    """Three maps, the middle one ('slow') sleeping 2 ms per record; records are 1 KiB strings so that
    small rings fill up in front of it."""
    return (env.from_batch(["x" * 1024] * N_SLOW)
            .map(lambda s: s, name="fast")
            .map(Sleepy, name="slow")
            .map(len, name="after")
            .collect())


N_CRAWL = 400
CRAWL_SECONDS = 0.005
MARK_ENV = "PROCFLOW_TEST_MARK"
MARK_AFTER = 100


class Crawl(MapFunction):
    """5 ms per record: the job's pace is set here, however fast the source fills the rings in front of
    it. With $PROCFLOW_TEST_MARK set, the file it names appears after MARK_AFTER records, so that a test
    can act (Ctrl-C) once there is work to count."""

    def open(self) -> None:
        self.seen = 0
        self.mark = os.environ.get(MARK_ENV)

    def execute(self, record):
        time.sleep(CRAWL_SECONDS)
        self.seen += 1
        if self.seen == MARK_AFTER and self.mark:
            with open(self.mark, "w"):
                pass
        return record


def crawl(env):
    """N_CRAWL records through a 5 ms map ('work'): about 2 s of work, all of it after the source's
    first few milliseconds."""
    # A task of its own behind a ring (not chained with the source): the source runs ahead of it.
    return env.from_batch(range(N_CRAWL)).map(Crawl, name="work").start_new_chain().collect()


def crawl_long(env):
    """The same map over 20,000 records (100 s): stopped with Ctrl-C by its test."""
    env.from_batch(range(20_000)).map(Crawl, name="work").start_new_chain().sink(lambda x: None, name="sink")


N_LOPSIDED = 200


class OneSlowTask(MapFunction):
    """The task that claims `claim_path` first sleeps 2 ms per record, the other(s) not at all: a core
    half as fast, or records of uneven cost, as round robin meets them. No claim path: all are slow."""

    def __init__(self, claim_path: str | None) -> None:
        self.claim_path = claim_path

    def open(self) -> None:
        self.delay = SLOW_SECONDS
        if self.claim_path is not None:
            try:
                os.close(os.open(self.claim_path, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                self.delay = 0.0

    def execute(self, record):
        time.sleep(self.delay)
        return record


def lopsided(env, claim_path: str | None, balance: bool = False):
    stream = env.from_batch(range(N_LOPSIDED), parallelism=1)   # one source
    stream = stream.balance() if balance else stream.round_robin()   # even counts: one task idles
    return stream.map(OneSlowTask, claim_path, name="work", parallelism=2).collect()


class Explode(MapFunction):
    def execute(self, record):
        if record == 13:
            raise ValueError(f"unlucky record {record}")
        return record


def failing(env):
    env.from_batch(range(100)).map(Explode, name="explode").collect()


class Chatty(MapFunction):
    def execute(self, record):
        self.logger.info("chatty saw record %s", record)
        self.logger.debug("chatty debug detail %s", record)
        return record


def chatty(env):
    return env.from_batch(range(5)).map(Chatty, name="chatty").collect()


class Ticks(SourceFunction):
    def execute(self):
        return 1


def forever(env):
    """An unbounded source: only Ctrl-C (or env.stop()) ends it."""
    env.from_source(Ticks).map(lambda x: x, name="relay").sink(lambda x: None)


def not_a_builder(env):  # noqa: ARG001 - builds nothing: compile() must say the pipeline is empty
    return None
