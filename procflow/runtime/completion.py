"""Completion: how many source records the whole pipeline has finished with, read off the task counters.

    Job.completed_records() ─► Completion.records(job.metrics) ─► the progress bar (done / total),
                                                                  the summary's and dashboard's rate
    Job.progress()          ─► Completion.units(job.metrics)   ─► the same for an input in bytes (file
                                                                  splits), from the sources' units_done

Counting records that left the sources is no measure of a job's progress: the sources fill the rings
in front of a slow operator at once, so a 7 s CPU-bound job showed 100% from its first frame and its
rate was the sources' (issue 23.1), and a summary after Ctrl-C gave the sources' rate as the job's
(issue 23.2). What counts is work done at the end of the pipeline.

The estimate, per operator in graph order (the whole operator: its tasks' counters summed):

    expected_in(op)  = sum over its inputs of expected_out(upstream) x copies
                       (copies: the instances a broadcast edge sends each record to, else 1)
    expected_out(op) = emitted, for a source
                     = expected_in(op) x records_out / records_in so far, otherwise
                       (the out/in ratio it has shown: a flatmap's 3 per input, a filter's 1 in 3)
    share(op)        = records_in / expected_in, at most 1: the part of the emitted source records
                       whose records this operator has taken in and processed

    completed = emitted x min over operators of share

For a chain of 1:1 operators this is exactly the last operator's input count; records still waiting in
rings count as not done. An operator whose expected input is 0 so far (nothing reached it yet, or its
upstream emits only at the end, like a reduce) is left out until something is due to reach it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from procflow.graph.transformation import BROADCAST
from procflow.runtime.job_control import FIELDS, UNITS_DONE

UNITS_FIELD = FIELDS[UNITS_DONE]


@dataclass(frozen=True)
class Stage:
    operator: str
    feeds: tuple[tuple[str, int], ...]   # (upstream operator, copies of each of its records sent here)


class Completion:
    def __init__(self, stages: list[Stage]) -> None:
        self.stages = stages   # in graph order: every stage after the stages that feed it

    @classmethod
    def of(cls, graph: Any) -> Completion:
        """The stages of an ExecutionGraph's operators; its transformations are listed upstream first."""
        stages = []
        for t in graph.transformations.values():
            feeds = tuple((i.upstream.name, t.parallelism if i.partitioning.strategy == BROADCAST else 1)
                          for i in t.inputs)
            stages.append(Stage(t.name, feeds))
        return cls(stages)

    def records(self, metrics: dict[str, dict]) -> float:
        """Source records whose work the whole pipeline has done, from per-task rows (`Job.metrics`)."""
        ins: dict[str, int] = {}
        outs: dict[str, int] = {}
        for row in metrics.values():
            op = row["operator"]
            ins[op] = ins.get(op, 0) + row["records_in"]
            outs[op] = outs.get(op, 0) + row["records_out"]
        emitted = 0
        share = 1.0
        expected_out: dict[str, float] = {}
        for stage in self.stages:
            op = stage.operator
            got, sent = ins.get(op, 0), outs.get(op, 0)
            if not stage.feeds:
                emitted += sent
                expected_out[op] = float(sent)
                continue
            expected = sum(expected_out.get(up, 0.0) * copies for up, copies in stage.feeds)
            if expected <= 0:
                expected_out[op] = 0.0
                continue
            share = min(share, got / expected)
            expected_out[op] = expected * sent / got if got else 0.0
        return emitted * max(min(share, 1.0), 0.0)

    def units(self, metrics: dict[str, dict]) -> float:
        """Input units (a split source's: bytes, or records) whose work the whole pipeline has done.

        Sources count `units_done` as each split ends; of those, the share done is the share of the
        emitted records that `records()` finds done. Exact at the end (every split read, every record
        done); during the job it trails by at most the split each source is reading.
        """
        sources = {stage.operator for stage in self.stages if not stage.feeds}
        rows = [row for row in metrics.values() if row["operator"] in sources]
        units = sum(row.get(UNITS_FIELD, 0.0) for row in rows)
        emitted = sum(row["records_out"] for row in rows)
        if not emitted:
            return units
        return units * min(self.records(metrics) / emitted, 1.0)
