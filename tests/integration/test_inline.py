"""The inline executor against the process executor: the same pipelines give the same records.

Every conformance case runs under both executors (and checks a plain-Python expectation); a second test
runs each case under both and compares the multisets directly.
"""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest

from procflow import (
    BatchFunction,
    CoMapFunction,
    FlatMapFunction,
    JobFailedError,
    JoinFunction,
    LocalEnvironment,
    MapFunction,
    SinkFunction,
    StopSignal,
)
from procflow.core.errors import RemoteTraceback

EXECUTORS = ("process", "inline")
pytestmark = pytest.mark.timeout(60)


class TagIndex(MapFunction):
    def execute(self, record):
        return (self.ctx.parallel_index, record)


class PairJoin(JoinFunction):
    """Symmetric hash join: emits (left, right) whenever a record meets the other side's records."""

    def open(self):
        self.sides = (collections.defaultdict(list), collections.defaultdict(list))

    def execute(self, payload, key, tag):
        self.sides[tag][key].append(payload)
        others = self.sides[1 - tag][key]
        return [(payload, o) if tag == 0 else (o, payload) for o in others]


class TwoWay(CoMapFunction):
    def map0(self, record):
        return ("left", record)

    def map1(self, record):
        return ("right", record * 10)


class KeyedCounter(FlatMapFunction):
    """Counts records per key and emits the counts only at end of input (handle_stop_signal)."""

    def open(self):
        self.counts = collections.Counter()

    def execute(self, record):
        self.counts[self.ctx.get_key()] += 1
        return []

    def handle_stop_signal(self, signal):
        assert isinstance(signal, StopSignal)
        return sorted(self.counts.items())


class FileSink(SinkFunction):
    def __init__(self, directory):
        self.directory = directory

    def open(self):
        self.file = open(os.path.join(self.directory, f"{self.ctx.name}.txt"), "w")

    def execute(self, record):
        self.file.write(f"{record!r}\n")

    def close(self):
        self.file.close()


class Trailer(BatchFunction):
    """A batch source that emits one more record from handle_stop_signal."""

    def __init__(self, n):
        self.n, self.i = n, 0

    def execute(self):
        self.i += 1
        return self.i if self.i <= self.n else None

    def handle_stop_signal(self, signal):
        return ["trailer"]


def fails_on_multiples_of_ten(x):
    if x % 10 == 0:
        raise ValueError(f"bad {x}")
    return x + 1


def _mixed(x):
    """Records of every shape the codec handles: plain, tuples, None, dicts, arrays, objects."""
    kind = x % 5
    if kind == 0:
        return None
    if kind == 1:
        return (x, str(x))
    if kind == 2:
        return {"x": x, "l": [x, x]}
    if kind == 3:
        return np.arange(x % 7, dtype=np.int32)
    return complex(x, 1)   # not msgpack-able: pickled


# Each case: build(env, tmp) -> {label: CollectResult or callable}, and expected(tmp-free) -> {label: list}
def case_map(env, tmp):
    return {"out": env.from_batch(range(300)).map(lambda x: x * 2, parallelism=2).collect()}


def case_balance(env, tmp):
    # inline channels report no progress: balance() is round robin there, with the same records
    return {"out": env.from_batch(range(300)).balance().map(lambda x: x * 2, parallelism=3)
            .balance().filter(lambda x: x % 3, parallelism=2).collect()}


def case_filter(env, tmp):
    return {"out": env.from_batch(range(300)).filter(lambda x: x % 3 == 0, parallelism=3).collect()}


def case_flatmap(env, tmp):
    return {"out": env.from_batch(range(100), parallelism=2).flatmap(lambda x: [x] * (x % 3), parallelism=2)
            .collect()}


def case_keyby_hash(env, tmp):
    stream = env.from_batch(range(200)).keyby(lambda x: x % 11).map(TagIndex, parallelism=3)
    return {"out": stream.collect()}


def case_keyed_stays_keyed(env, tmp):
    stream = (env.from_batch(range(200)).keyby(lambda x: x % 5).map(lambda x: x + 1, parallelism=2)
              .map(TagIndex, parallelism=3))
    return {"out": stream.collect()}


def case_broadcast(env, tmp):
    return {"out": env.from_batch(range(50)).keyby(lambda x: x, strategy="broadcast")
            .map(TagIndex, parallelism=3).collect()}


def case_join(env, tmp):
    left = env.from_batch([(k, f"l{k}") for k in range(30)])
    right = env.from_batch([(k % 15, f"r{k}") for k in range(45)], parallelism=2)
    joined = left.connect(right).keyby(lambda r: r[0]).join(PairJoin, parallelism=3)
    return {"out": joined.collect()}


def case_comap(env, tmp):
    a = env.from_batch(range(40))
    b = env.from_batch(range(25), parallelism=2)
    return {"out": a.connect(b).comap(TwoWay, parallelism=2).collect()}


def case_union_map(env, tmp):
    a = env.from_batch(range(40))
    b = env.from_batch(range(100, 125))
    return {"out": a.connect(b).map(lambda x: -x, parallelism=2).collect()}


def case_reduce_final(env, tmp):
    return {"out": env.from_batch(range(500), parallelism=2).keyby(lambda x: x % 13)
            .reduce(lambda a, b: a + b, parallelism=3).collect()}


def case_reduce_running(env, tmp):
    return {"out": env.from_batch(range(200)).keyby(lambda x: x % 4)
            .reduce(lambda a, b: max(a, b), emit="running", parallelism=2).collect()}


def case_collect_and_sink(env, tmp):
    stream = env.from_batch(range(120)).map(lambda x: x * x, parallelism=2)
    stream.sink(FileSink, tmp, parallelism=3)
    return {"out": stream.collect(), "sink": lambda: _read_lines(tmp)}


def case_mixed_records(env, tmp):
    return {"out": env.from_batch(range(60)).map(_mixed, parallelism=2).collect()}


def case_on_error_skip(env, tmp):
    return {"out": env.from_batch(range(100)).map(fails_on_multiples_of_ten, parallelism=2, on_error="skip")
            .collect()}


def case_on_error_dead_letter(env, tmp):
    return {"out": env.from_batch(range(100)).map(fails_on_multiples_of_ten, parallelism=2,
                                                  on_error="dead_letter").collect(),
            "dead": lambda: [d["record"] for d in env.job.dead_letters]}


def case_handle_stop_signal(env, tmp):
    counted = env.from_batch(range(300), parallelism=2).keyby(lambda x: x % 6).flatmap(KeyedCounter,
                                                                                        parallelism=2)
    return {"out": counted.collect(), "trailer": env.from_batch(Trailer, 5).collect()}


def case_generator_source(env, tmp):
    return {"out": env.from_batch((i * 3 for i in range(100)), parallelism=2).map(TagIndex).collect()}


def case_partitioners(env, tmp):
    ranged = env.from_batch(range(100)).keyby(lambda x: x, strategy=lambda k, n: k * n // 100)
    fanned = env.from_batch(range(30)).keyby(lambda x: x, strategy=lambda k, n: [k % n, (k + 1) % n])
    return {"range": ranged.map(TagIndex, parallelism=4).collect(),
            "fan": fanned.map(TagIndex, parallelism=3).collect()}


def _read_lines(directory):
    lines = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name)) as f:
            lines.extend(f.read().splitlines())
    return lines


def _reduce(pairs, fn):
    state = {}
    for k, v in pairs:
        state[k] = fn(state[k], v) if k in state else v
    return sorted(state.items())


EXPECTED = {
    case_map: {"out": [x * 2 for x in range(300)]},
    case_filter: {"out": [x for x in range(300) if x % 3 == 0]},
    case_flatmap: {"out": [x for x in range(100) for _ in range(x % 3)]},
    case_broadcast: {"out": [(i, x) for x in range(50) for i in range(3)]},
    case_join: {"out": [((k, f"l{k}"), (k, f"r{j}")) for k in range(30) for j in range(45) if j % 15 == k]},
    case_comap: {"out": [("left", x) for x in range(40)] + [("right", x * 10) for x in range(25)]},
    case_union_map: {"out": [-x for x in [*range(40), *range(100, 125)]]},
    case_reduce_final: {"out": [(k, sum(x for x in range(500) if x % 13 == k)) for k in range(13)]},
    case_reduce_running: {"out": [(x % 4, x) for x in range(200)]},
    case_collect_and_sink: {"out": [x * x for x in range(120)], "sink": [repr(x * x) for x in range(120)]},
    case_on_error_skip: {"out": [x + 1 for x in range(100) if x % 10]},
    case_on_error_dead_letter: {"out": [x + 1 for x in range(100) if x % 10], "dead": list(range(0, 100, 10))},
    case_handle_stop_signal: {"out": [(k, 50) for k in range(6)], "trailer": [1, 2, 3, 4, 5, "trailer"]},
    case_generator_source: {"out": [(0, i * 3) for i in range(100)]},
    case_balance: {"out": [x * 2 for x in range(300) if (x * 2) % 3]},
    case_partitioners: {"range": [(x * 4 // 100, x) for x in range(100)],
                        "fan": [(i, x) for x in range(30) for i in (x % 3, (x + 1) % 3)]},
}
CASES = [case_map, case_balance, case_filter, case_flatmap, case_keyby_hash, case_keyed_stays_keyed, case_broadcast,
         case_join, case_comap, case_union_map, case_reduce_final, case_reduce_running, case_collect_and_sink,
         case_mixed_records, case_on_error_skip, case_on_error_dead_letter, case_handle_stop_signal,
         case_generator_source, case_partitioners]


def run_case(case, executor, tmp_path):
    tmp = tmp_path / f"sink-{executor}"
    tmp.mkdir()
    with LocalEnvironment(f"conf-{executor}", executor=executor, env_dir=tmp_path / f"env-{executor}") as env:
        handles = case(env, str(tmp))
        env.submit()
        return {label: (h() if callable(h) else h.results()) for label, h in handles.items()}


def multiset(records):
    return collections.Counter(repr(r) for r in records)


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("case", [c for c in CASES if c in EXPECTED], ids=lambda c: c.__name__[5:])
def test_case_gives_the_plain_python_result(case, executor, tmp_path):
    got = run_case(case, executor, tmp_path)
    for label, expected in EXPECTED[case].items():
        assert multiset(got[label]) == multiset(expected), label


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
def test_inline_agrees_with_process(case, tmp_path):
    process = run_case(case, "process", tmp_path)
    inline = run_case(case, "inline", tmp_path)
    assert process.keys() == inline.keys()
    for label in process:
        assert process[label], f"{label}: the case produced nothing"
        assert multiset(inline[label]) == multiset(process[label]), label


def test_keyed_cases_partition_alike():
    """hash keyby sends a key to the same instance under both executors (stable hash)."""
    def owner(records):
        return {r[1] % 11: r[0] for r in records}

    outs = []
    for executor in EXECUTORS:
        with LocalEnvironment("alike", executor=executor) as env:
            result = case_keyby_hash(env, "")["out"]
            env.submit()
        outs.append(owner(result.results()))
    assert outs[0] == outs[1] and len(set(outs[0].values())) > 1


def test_inline_is_deterministic(tmp_path):
    """Two inline runs give the same records in the same order, even through fan-in and fan-out."""
    runs = []
    for i in range(2):
        with LocalEnvironment("det", executor="inline", env_dir=tmp_path / str(i)) as env:
            a = env.from_batch(range(3000), parallelism=2).flatmap(lambda x: [x, -x], parallelism=3)
            b = env.from_batch(range(500)).map(lambda x: x * 7, parallelism=2)
            out = a.connect(b).map(lambda x: x + 1, parallelism=2).keyby(lambda x: x % 3).map(TagIndex).collect()
            env.submit()
        runs.append(out.results())
    assert runs[0] == runs[1] and len(runs[0]) == 6500


def test_inline_runs_in_the_driver_process():
    seen = []
    with LocalEnvironment("pid", executor="inline") as env:
        env.from_batch(range(5)).map(lambda x: os.getpid(), parallelism=2).sink(seen.append)
        job = env.submit()
    assert seen == [os.getpid()] * 5   # the sink appended to this very list: same process
    assert job.status == "finished"
    assert all(m["pid"] == os.getpid() for m in job.metrics.values())


@pytest.mark.parametrize("executor", EXECUTORS)
def test_failure_names_task_and_record(executor):
    with LocalEnvironment("fail", executor=executor) as env:
        env.from_batch(range(100)).map(fails_on_multiples_of_ten, parallelism=2, name="boom").collect()
        with pytest.raises(JobFailedError) as info:
            env.submit()
    err = info.value
    assert err.task in ("boom_0", "boom_1")
    assert err.record == "0" or err.record == "10"
    assert "fails_on_multiples_of_ten" in str(err) and "ValueError" in str(err) and err.task in str(err)
    assert "raise ValueError" in err.remote_traceback
    if executor == "inline":
        assert isinstance(err.__cause__, ValueError)   # the live exception: pdb.post_mortem works on it
        assert err.__cause__.__traceback__ is not None
    else:
        assert isinstance(err.__cause__, RemoteTraceback)
    assert env.job.status == "failed"


def test_inline_failure_downstream_of_a_source_is_blamed_on_the_right_task():
    """A map failing while the source is mid-batch (the scheduler runs it inside the source's emit)."""
    with LocalEnvironment("blame", executor="inline") as env:
        env.from_batch(range(5000), name="src").map(lambda x: 1 // (x - 3000), name="div").collect()
        with pytest.raises(JobFailedError) as info:
            env.submit()
    assert info.value.task == "div_0" and info.value.record == "3000"
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_inline_source_failure_names_the_source_record():
    def explode(x):
        if x == 7:
            raise KeyError("seven")
        return x

    class Bad(BatchFunction):
        def __init__(self):
            self.i = 0

        def execute(self):
            self.i += 1
            return explode(self.i)

    with LocalEnvironment("srcfail", executor="inline") as env:
        env.from_batch(Bad).collect()
        with pytest.raises(JobFailedError) as info:
            env.submit()
    assert info.value.task == "batch_0" and "KeyError" in str(info.value)


def test_executor_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"unknown executor 'threads'.*'process', 'inline'"):
        LocalEnvironment("x", executor="threads")
    from procflow.backends.local.process_factory import ProcessFactory

    with pytest.raises(ValueError, match="task_factory= and executor='inline'"):
        LocalEnvironment("x", executor="inline", task_factory=ProcessFactory())
    from procflow import BaseService

    class Echo(BaseService):
        def process(self, x):
            return x

    with LocalEnvironment("x", executor="inline") as env:
        env.register_service("echo", Echo)
        env.from_batch([1]).collect()
        with pytest.raises(ValueError, match=r"executor='inline' cannot run services.*\['echo'\]"):
            env.submit()


def test_inline_metrics_count_records():
    with LocalEnvironment("metrics", executor="inline") as env:
        env.from_batch(range(100)).filter(lambda x: x % 2, parallelism=2).collect()
        job = env.submit()
    m = job.metrics
    assert m["batch_0"]["records_out"] == 100 and m["batch_0"]["processed_count"] == 100
    assert m["filter_0"]["records_in"] + m["filter_1"]["records_in"] == 100
    assert m["collect_0"]["records_in"] == m["collect_0"]["processed_count"] == 50
    # every task ran in the driver's one thread: none reports that thread's CPU as its own
    assert all(row["cpu_s"] == 0 for row in m.values())
    # ...so summaries say "not measured" (None, as Job.summary documents), rather than 0 %.
    assert all(op["cpu_pct"] is None for op in job.summary()["operators"].values())


def test_inline_jobs_are_run_by_the_same_dispatcher(env_dir):
    """Issue 17: the inline backend goes through the one Dispatcher, so its job folder tells the same
    story as a process job's (Dispatcher.log; Error.log with the task's traceback)."""
    with LocalEnvironment("same", executor="inline", env_dir=env_dir) as env:
        env.from_batch(range(50)).map(lambda x: 1 // (x - 40)).collect()
        with pytest.raises(JobFailedError):
            env.submit()
        job_dir = env.job.log_dir
    with open(os.path.join(job_dir, "Dispatcher.log")) as f:
        log = f.read()
    assert "prepared on the inline backend" in log and "sources released" in log
    with open(os.path.join(job_dir, "Error.log")) as f:
        assert "ZeroDivisionError" in f.read()
