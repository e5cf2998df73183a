"""A pipeline for the dashboard's end-to-end test (and its README screenshot): a split source, a
chained parse, a slow parallel enrich step behind a ring, a keyed count and a sink; about a minute of work
unless stopped, which its test does."""

from __future__ import annotations

import time

from procflow import MapFunction

N_CLICKS = 100_000
ENRICH_SECONDS = 0.002


class Parse(MapFunction):
    def execute(self, record):
        return {"user": record % 97, "click": record}


class Enrich(MapFunction):
    """2 ms a record, on purpose: the bottleneck the dashboard marks."""

    def execute(self, record):
        time.sleep(ENRICH_SECONDS)
        return {**record, "segment": record["user"] % 5}


class CountPerUser(MapFunction):
    def open(self) -> None:
        self.counts: dict[int, int] = {}

    def execute(self, record):
        self.counts[record["user"]] = self.counts.get(record["user"], 0) + 1
        return (record["user"], self.counts[record["user"]])


def clickstream(env):
    (env.from_batch(range(N_CLICKS), parallelism=2)
        .map(Parse, name="parse", parallelism=2)       # chained with the source: one task each
        .map(Enrich, name="enrich", parallelism=3)
        .keyby(lambda r: r["user"])
        .map(CountPerUser, name="count", parallelism=2)
        .sink(lambda r: None, name="sink", parallelism=2))
