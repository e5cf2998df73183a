"""StallWatch's verdict inside one process, on fake counters and input probes: when it calls a job
stalled, and whom it blames."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from procflow.runtime.job_control import FIELDS
from procflow.runtime.job_manager import TaskState
from procflow.runtime.stall_watch import StallWatch

TASKS = ("src_0", "a_0", "b_0")
GRAPH = SimpleNamespace(edges=[SimpleNamespace(src="src_0", dst="a_0"), SimpleNamespace(src="a_0", dst="b_0")])


class Probe:
    counts_bytes = True

    def __init__(self, queued=0, unfinished=0):
        self.queued, self.unfinished = queued, unfinished

    def backlog(self):
        return self.queued, self.unfinished


def make(probes, stopped=()):
    counters = np.zeros((len(TASKS), len(FIELDS)))
    tasks = {t: TaskState(t, t[:-2], i, pid=100 + i, stopped=t in stopped) for i, t in enumerate(TASKS)}
    return StallWatch("j", 2.0, GRAPH, probes, lambda: counters, tasks), counters


def test_no_verdict_while_anything_moves_or_before_the_timeout():
    watch, counters = make({"a_0": Probe(100), "b_0": Probe(100)})
    assert watch.check(0.0) is None
    assert watch.check(1.9) is None                       # quiet, but not for 2 s yet
    counters[2, FIELDS.index("records_in")] += 1          # b took a record: progress
    assert watch.check(2.5) is None
    assert watch.check(4.4) is None
    assert watch.check(4.6) is not None                   # 2.1 s without progress since 2.5


def test_quiet_with_nothing_waiting_is_idle_not_stalled():
    watch, _ = make({"a_0": Probe(), "b_0": Probe()})
    assert watch.check(0.0) is None
    assert watch.check(100.0) is None


def test_the_task_everything_waits_behind_is_blamed():
    # b stopped with records waiting; a (blocked on b's full ring) also has input waiting: blame b only.
    watch, _ = make({"a_0": Probe(queued=500), "b_0": Probe(queued=4096)})
    watch.check(0.0)
    error = watch.check(3.0)
    assert error is not None and error.task == "b_0"
    message = str(error)
    assert message.startswith("job j stalled: no task made progress for 3.0s (config stall_timeout=2)")
    assert "task b_0 (pid 102): 4096 byte(s) wait in its input" in message and "task a_0" not in message


def test_a_task_stuck_mid_batch_is_blamed_even_with_an_empty_ring():
    watch, _ = make({"a_0": Probe(unfinished=7), "b_0": Probe()})
    watch.check(0.0)
    error = watch.check(3.0)
    assert error is not None and error.task == "a_0"
    assert "it took 7 record(s) out and has not finished them" in str(error)


def test_a_task_that_reported_stopped_has_no_work_left():
    # Its last batch ended its input: the ring shows records taken and never marked done (the task did
    # not ask for more), which is not work left undone.
    watch, _ = make({"a_0": Probe(unfinished=3), "b_0": Probe()}, stopped=("a_0",))
    watch.check(0.0)
    assert watch.check(100.0) is None
