"""Metrics, the bottleneck, the dashboard, the progress bar and the log files, in-process."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import time

import pytest
from rich.console import Console

from procflow import JobFailedError, LocalEnvironment
from procflow.cli import format_summary
from procflow.dashboard import BOTTLENECK_MARK, Dashboard, Frame, Sampler, TaskRow, bottleneck_of, render_plain
from procflow.graph.render import render_graph
from procflow.runtime.communication.queue_descriptor.shm_queue import ShmInbox
from procflow.runtime.communication.shm import segment_name
from procflow.runtime.progress import known_total, progress_wanted, render
from procflow.testing import wait_until

from . import pipelines

# Small rings in front of the slow operator, so that they fill and the fill shows.
# Rings that fill up in front of a slow operator: one task per operator (chained operators pass records
# by call, with no ring between them to fill).
SMALL_RINGS = {"ring_bytes": 16 << 10, "batch_bytes": 4 << 10, "chaining": False}


@pytest.mark.timeout(60)
def test_metrics_agree_with_exact_record_counts(env_dir):
    with LocalEnvironment("counted", env_dir=env_dir) as env:
        result = pipelines.counted(env)
        job = env.submit()
    assert len(result.results()) == 668
    m = job.metrics
    assert m["batch_0"]["records_out"] == 1000
    assert m["flatmap_0"]["records_in"] + m["flatmap_1"]["records_in"] == 1000
    assert m["flatmap_0"]["records_out"] == 2 * m["flatmap_0"]["records_in"]
    assert (m["filter_0"]["records_in"], m["filter_0"]["records_out"]) == (2000, 668)
    assert m["collect_0"]["records_in"] == 668
    assert all(row["errors"] == 0 and row["finished"] >= row["started"] > 0 for row in m.values())
    s = job.summary()
    assert s["source_records"] == 1000 and s["status"] == "finished"
    assert s["operators"]["flatmap"]["tasks"] == 2 and s["operators"]["flatmap"]["records_out"] == 2000
    assert json.loads(job.to_json())["operators"]["filter"]["records_out"] == 668


@pytest.mark.timeout(60)
def test_summary_points_at_round_robin_leaving_a_task_idle(env_dir, tmp_path):
    with LocalEnvironment("lopsided", env_dir=env_dir) as env:
        result = pipelines.lopsided(env, str(tmp_path / "claim"))
        job = env.submit()
    assert sorted(result.results()) == list(range(pipelines.N_LOPSIDED))
    s = job.summary()
    # 100 records each: one task slept 0.2 s, the other finished at once.
    assert s["uneven"] == ["work"]
    assert s["operators"]["work"]["finish_spread_s"] >= 0.1
    assert "drop the round robin before work" in format_summary(s)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("balance, claim", [(True, "claim"), (False, None)], ids=["balanced", "even-tasks"])
def test_summary_says_nothing_of_balanced_or_even_operators(env_dir, tmp_path, balance, claim):
    with LocalEnvironment("even", env_dir=env_dir) as env:
        result = pipelines.lopsided(env, claim and str(tmp_path / claim), balance=balance)
        job = env.submit()
    assert len(result.results()) == pipelines.N_LOPSIDED
    s = job.summary()
    assert s["uneven"] == []
    assert "uneven" not in format_summary(s)


@pytest.mark.timeout(60)
def test_summary_names_the_slow_operator_as_bottleneck(env_dir):
    with LocalEnvironment("slow", config=SMALL_RINGS, env_dir=env_dir) as env:
        result = pipelines.slow(env)
        job = env.submit()
    assert result.results() == [1024] * pipelines.N_SLOW
    s = job.summary()
    assert s["bottleneck"] == "slow"
    ops = s["operators"]
    # 400 records * 2 ms: the slow map worked for most of the job, the others hardly at all.
    assert ops["slow"]["busy_s"] >= pipelines.N_SLOW * pipelines.SLOW_SECONDS * 0.9
    # ...but it slept: CPU time tells a task that waits inside user code from one that computes
    assert 0 < ops["slow"]["cpu_s"] < ops["slow"]["busy_s"] / 4
    assert ops["slow"]["cpu_pct"] < ops["slow"]["busy_pct"] / 4
    assert ops["slow"]["busy_pct"] > 3 * max(ops[o]["busy_pct"] for o in ("fast", "after", "collect"))
    # The collect runs in the driver: its CPU share is a number too, not None (issue 23.7).
    assert all(isinstance(op["cpu_pct"], float) and round(op["cpu_pct"]) >= 0 for op in ops.values())
    assert ops["collect"]["records_in"] == pipelines.N_SLOW and ops["collect"]["busy_s"] > 0
    # Its upstream was held back by the full ring in front of it.
    assert ops["fast"]["blocked_s"] > 0
    text = format_summary(s)
    assert "bottleneck: slow" in text
    assert [line for line in text.splitlines() if line.startswith("slow ")][0].endswith(BOTTLENECK_MARK)
    header = [line for line in text.splitlines() if line.startswith("operator ")][0]
    end = header.index("cpu %") + len("cpu %")
    slow_line = [line for line in text.splitlines() if line.startswith("slow ")][0]
    cpu_shown = slow_line[:end].split()[-1]          # values are right-aligned under their header
    assert cpu_shown == f"{ops['slow']['cpu_pct']:.1f}"


@pytest.mark.timeout(60)
def test_dashboard_in_a_recorded_console_marks_the_bottleneck(env_dir):
    console = Console(record=True, width=120, file=io.StringIO(), force_terminal=True)
    frames = []
    with LocalEnvironment("slow", config=SMALL_RINGS, env_dir=env_dir) as env:
        pipelines.slow(env)
        job = env.submit(autostop=False)
        board = Dashboard(job, console=console, interval=0.05, plain=False)
        sample = board.sampler.sample
        board.sampler.sample = lambda cumulative=False: frames.append(sample(cumulative)) or frames[-1]
        final = board.run()
        job.wait()
    text = console.export_text()
    for task in ("batch_0", "fast_0", "slow_0", "after_0", "collect_0"):
        assert task in text
    last = text.rsplit(f"procflow job {job.job_id}", 1)[1]     # the final frame, with whole-job figures
    assert "finished" in last.splitlines()[0]
    marked = [line.split()[1] for line in last.splitlines() if BOTTLENECK_MARK in line]
    assert marked == ["slow_0"]
    assert final.bottleneck == "slow" and final.status == "finished" and final.source_records == pipelines.N_SLOW
    # Live frames: the slow operator's input rings were seen filling up while it ran.
    live = [f for f in frames[:-1] if f.status == "running"]
    assert live, "the job ended before a live frame was drawn"
    fills = [r.fill_pct for f in live for r in f.rows if r.task == "slow_0"]
    assert max(fills) > 50.0
    named = [f.bottleneck for f in live if f.elapsed > 0.5]
    assert max(set(named), key=named.count) == "slow", named


@pytest.mark.timeout(60)
def test_dashboard_rate_is_the_jobs_not_the_sources(env_dir):
    """Issue 23.2: the source puts all its records in the rings at once; the title's rate must follow
    the records that went through the 5 ms map, as the summary's does."""
    with LocalEnvironment("crawl", env_dir=env_dir) as env:
        pipelines.crawl(env)
        job = env.submit(autostop=False)
        sampler = Sampler(job)
        # Observe the live counters until the map has done a quarter of the records.
        assert wait_until(lambda: job.metrics["work_0"]["records_in"] >= pipelines.N_CRAWL // 4, 30)
        frame = sampler.sample()
        job.wait()
    assert frame.status == "running" and frame.source_records == pipelines.N_CRAWL
    assert 0 < frame.completed < pipelines.N_CRAWL
    assert frame.throughput == pytest.approx(frame.completed / frame.elapsed)
    assert frame.throughput < 1 / pipelines.CRAWL_SECONDS    # what a 5 ms map can do at most
    assert f"{frame.completed:,}/{pipelines.N_CRAWL:,} records done" in render_plain(frame)


@pytest.mark.timeout(60)
def test_dashboard_plain_text_fallback(env_dir):
    stream = io.StringIO()
    with LocalEnvironment("counted", env_dir=env_dir) as env:
        pipelines.counted(env)
        job = env.submit(autostop=False)
        Dashboard(job, stream=stream, interval=0.05, plain=True).run()
        job.wait()
    text = stream.getvalue()
    assert text.startswith(f"procflow job {job.job_id}  finished")
    assert "\x1b[" not in text      # not a terminal: one final frame, no cursor movement
    header = text.splitlines()[1].split()
    assert header[:3] == ["task", "state", "in"]
    filter_row = [line.split() for line in text.splitlines() if line.startswith("filter_0")][0]
    assert filter_row[1:4] == ["done", "2,000", "668"]


def test_render_plain_redraw_and_bottleneck_rule():
    rows = [TaskRow("src_0", "src", "run", 0, 10, 10.0, 5.0, 0.0),
            TaskRow("work_0", "work", "run", 10, 10, 10.0, 90.0, 75.0),
            TaskRow("work_1", "work", "run", 10, 10, 10.0, 60.0, 80.0)]
    assert bottleneck_of(rows) == "work"
    assert bottleneck_of([TaskRow("a_0", "a", "init", 0, 0, 0.0, 0.0, 0.0)]) is None
    text = render_plain(Frame("j1", "running", 1.0, 10, 10.0, rows, "work"))
    lines = text.splitlines()
    assert lines[0].startswith("procflow job j1  running")
    assert lines[2].split()[0] == "src_0" and BOTTLENECK_MARK not in lines[2]
    assert lines[3].endswith(BOTTLENECK_MARK) and "75.0" in lines[3]


def test_input_gate_reports_ring_fill():
    inbox = ShmInbox(segment_name("t", "in"), (0, 0), 4096, batch_bytes=64)
    owner = inbox.create()
    try:
        gate = inbox.open_gate()
        writer = inbox.edge(1).open_writer()
        assert gate.fill() == 0.0
        for _ in range(20):
            writer.send_record(b"\xa3abc", None)    # a msgpack str; batches of 64 bytes
        writer.flush()
        fill = gate.fill()
        assert 0 < fill < 0.5           # one of two 4 KiB rings holds a few hundred bytes
        assert sum(len(batch) for batch in gate.read(0)) == 20
        assert gate.fill() == 0.0
        writer.close()
        gate.close()
    finally:
        from procflow.runtime.communication.queue_descriptor import shm_queue

        shm_queue.detach_all()
        owner.close()
        owner.unlink()


@pytest.mark.timeout(60)
def test_progress_bar_forced_on(env_dir, capsys):
    with LocalEnvironment("progress", config={"progress": True}, env_dir=env_dir) as env:
        env.from_batch(range(1000)).map(lambda x: x).collect()
        env.submit()
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\r")[-1]
    assert "100%" in last and "1,000/1,000 records" in last and last.rstrip().endswith("done")


class TimedStream(io.StringIO):
    """A non-terminal stream that notes the wall-clock time of every write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        self.writes.append((time.time(), text))
        return super().write(text)


@pytest.mark.timeout(60)
def test_progress_bar_counts_work_done_not_records_emitted(env_dir, monkeypatch):
    """Issue 23.1: the source emits every record at once; the bar must follow the 5 ms map instead."""
    stream = TimedStream()
    monkeypatch.setattr(sys, "stderr", stream)
    with LocalEnvironment("crawl", config={"progress": True}, env_dir=env_dir) as env:
        pipelines.crawl(env)
        job = env.submit()
    monkeypatch.undo()
    work = job.metrics["work_0"]
    frames = [(t, int(m.group(1))) for t, text in stream.writes if (m := re.search(r"(\d+)%", text))]
    assert frames, stream.getvalue()
    # Half-way through the map's work (its own start and end stamps), the bar is near half-way too.
    middle = (work["started"] + work["finished"]) / 2
    when, pct = min(frames, key=lambda f: abs(f[0] - middle))
    assert abs(when - middle) < 0.3, (frames, middle)
    assert 20 <= pct <= 80, (pct, frames)
    last = stream.getvalue().rstrip("\n").split("\r")[-1].rstrip()
    assert last.startswith("[" + "#" * 30 + "] 100%") and last.endswith("done"), last
    # The rate shown is the job's: a 5 ms map cannot go faster than 200 records/s.
    rate = int(re.search(r"([\d,]+) rec/s", last).group(1).replace(",", ""))
    assert 0 < rate < 1 / pipelines.CRAWL_SECONDS


@pytest.mark.timeout(60)
def test_progress_bar_off_under_pytest_and_for_unsized_sources(env_dir, capsys):
    assert progress_wanted(None) is False          # PYTEST_CURRENT_TEST is set
    assert progress_wanted(True) and not progress_wanted(False)
    with LocalEnvironment("progress", env_dir=env_dir) as env:
        env.from_batch(range(100)).map(lambda x: x).collect()
        env.submit()
        assert known_total(env.compile()) == 100
    assert capsys.readouterr().err == ""
    with LocalEnvironment("unsized") as env:
        env.from_batch(x for x in range(3)).map(lambda x: x).collect()
        assert known_total(env.compile()) is None
    assert "50%" in render(50, 100, 1.0) and "ETA 0:01" in render(50, 100, 1.0)


@pytest.mark.timeout(60)
def test_task_logs_hold_the_functions_messages(tmp_path):
    with LocalEnvironment("logs", env_dir=tmp_path) as env:
        pipelines.chatty(env)
        job = env.submit()
    info = (tmp_path / job.job_id / "chatty_0_info.log").read_text()
    debug = (tmp_path / job.job_id / "chatty_0_debug.log").read_text()
    assert "chatty saw record 3" in info and "chatty debug detail" not in info
    assert "chatty debug detail 4" in debug and "chatty saw record 4" in debug
    assert f"pid={job.metrics['chatty_0']['pid']}" in info
    dispatcher = (tmp_path / job.job_id / "Dispatcher.log").read_text()
    assert "sources released" in dispatcher
    assert os.path.exists(tmp_path / job.job_id / "batch_0_info.log")
    with LocalEnvironment("logs", config={"log_level": "DEBUG"}, env_dir=tmp_path) as env:
        pipelines.chatty(env)
        job = env.submit()
    assert "chatty debug detail" in (tmp_path / job.job_id / "chatty_0_info.log").read_text()


@pytest.mark.timeout(60)
def test_failure_goes_to_error_log_and_summary(env_dir):
    with LocalEnvironment("fails", env_dir=env_dir) as env:
        pipelines.failing(env)
        with pytest.raises(JobFailedError, match="explode_0"):
            env.submit()
        job = env.job
    with open(os.path.join(job.log_dir, "Error.log")) as f:
        error_log = f.read()
    assert "explode_0" in error_log and "unlucky record 13" in error_log
    s = job.summary()
    assert s["status"] == "failed" and "unlucky record 13" in s["error"]
    # Counters of the tasks that never reported Stopped survive the job's cleanup.
    assert s["tasks"]["batch_0"]["records_out"] >= 0 and s["tasks"]["explode_0"]["records_in"] >= 13


def test_graph_renderings_without_running():
    with LocalEnvironment("graph") as env:
        pipelines.counted(env)
        env.set_parallelism("filter", 2)
        graph = env.compile()
    text = render_graph(graph, "text")
    # flatmap_i and filter_i share a task (a chain); the collect runs in the driver
    assert text.startswith("4 operators, 4 tasks, 4 channels")
    assert "  flatmap_0 -> filter_0\n  flatmap_1 -> filter_1\n" in text and "from flatmap[chained]" in text
    dot = render_graph(graph, "dot")
    assert dot.count(" -> ") == 6 and 'subgraph "cluster_filter"' in dot
    assert '"flatmap_1" -> "filter_1" [label="chained", style=bold];' in dot
    mermaid = render_graph(graph, "mermaid")
    assert mermaid.count("-->") == 4 and "filter_1 -->|balance| collect_0" in mermaid
    assert "flatmap_0 ==>|chained| filter_0" in mermaid
    with pytest.raises(ValueError, match="format"):
        render_graph(graph, "png")
    with pytest.raises(ValueError, match="no operator named"):
        env.set_parallelism("nosuch", 2)
    with pytest.raises(ValueError, match="parallelism"):
        env.set_parallelism("filter", 0)
