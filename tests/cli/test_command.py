"""The `procflow` command through a real subprocess: run, graph, --help, --report and the exit codes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from procflow.testing import own_segments, wait_until

from . import pipelines

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = "tests/cli/pipelines.py"


def procflow(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "procflow.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.timeout(60)
def test_help_explains_each_command():
    top = procflow("--help")
    assert top.returncode == 0
    for word in ("run", "graph", "module:function", "exit codes", "130"):
        assert word in top.stdout
    run = procflow("run", "--help")
    assert run.returncode == 0
    for option in ("--backend", "--queue", "--parallelism", "--dashboard", "--report", "--env-dir", "bottleneck"):
        assert option in run.stdout
    assert "busy %" in run.stdout and "%%" not in run.stdout      # issue 23.7: argparse left it doubled
    graph = procflow("graph", "--help")
    assert graph.returncode == 0
    for word in ("--format", "dot", "mermaid", "--output"):
        assert word in graph.stdout
    bare = procflow()
    assert bare.returncode == 2 and "run" in bare.stdout


@pytest.mark.timeout(60)
def test_run_prints_summary_and_writes_exact_report(tmp_path):
    report = tmp_path / "report.json"
    done = procflow("run", f"{PIPELINES}:counted", "--report", str(report), "--env-dir", str(tmp_path / "logs"),
                    "--parallelism", "filter=3")
    assert done.returncode == 0, done.stderr
    assert "finished" in done.stdout and "1,000 records from sources" in done.stdout
    data = json.loads(report.read_text())
    assert data["status"] == "finished" and data["error"] is None
    ops = data["operators"]
    assert ops["batch"]["records_out"] == 1000
    assert (ops["flatmap"]["records_in"], ops["flatmap"]["records_out"]) == (1000, 2000)
    assert (ops["filter"]["tasks"], ops["filter"]["records_in"], ops["filter"]["records_out"]) == (3, 2000, 668)
    assert ops["collect"]["records_in"] == 668
    assert data["collected"] == {"collect": 668}
    assert data["source_records"] == 1000 and data["throughput_rps"] > 0
    assert data["bottleneck"] in ops
    assert Path(data["log_dir"]).parent == tmp_path / "logs"


@pytest.mark.timeout(60)
def test_run_with_mp_queue_and_dashboard(tmp_path):
    done = procflow("run", f"{PIPELINES}:counted", "--queue", "mp", "--dashboard", "--interval", "0.1",
                    "--env-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    for task in ("batch_0", "flatmap_0", "flatmap_1", "filter_0", "collect_0"):
        assert task in done.stderr          # the dashboard's last frame
    assert "<- bottleneck" in done.stderr
    assert "job " in done.stdout


@pytest.mark.timeout(60)
def test_dashboard_on_a_non_terminal_ends_its_table_before_the_summary(tmp_path):
    """Issue 23.7: with stderr merged into stdout, the summary ran on after the table's last border."""
    done = subprocess.run([sys.executable, "-m", "procflow.cli", "run", f"{PIPELINES}:counted", "--dashboard",
                           "--env-dir", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=60)
    assert done.returncode == 0, done.stdout
    assert "└" in done.stdout                                      # the rich table was drawn
    assert re.search(r"^job \w+ finished in ", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"┘\n", done.stdout), done.stdout


@pytest.mark.timeout(60)
def test_failing_pipeline_exits_1_naming_the_task(tmp_path):
    report = tmp_path / "report.json"
    done = procflow("run", f"{PIPELINES}:failing", "--env-dir", str(tmp_path), "--report", str(report))
    assert done.returncode == 1
    assert "explode_0" in done.stderr and "unlucky record 13" in done.stderr
    assert "Traceback" not in done.stderr
    data = json.loads(report.read_text())
    assert data["status"] == "failed" and "explode_0" in data["error"]


@pytest.mark.timeout(60)
def test_usage_errors_exit_2(tmp_path):
    unknown_op = procflow("run", f"{PIPELINES}:counted", "-p", "nosuch=2", "--env-dir", str(tmp_path))
    assert unknown_op.returncode == 2 and "no operator named 'nosuch'" in unknown_op.stderr
    assert "flatmap" in unknown_op.stderr       # lists the operators there are
    assert procflow("run", "no_such_module_xyz:build").returncode == 2
    assert procflow("run", f"{PIPELINES}:nope").returncode == 2
    bad_value = procflow("run", f"{PIPELINES}:counted", "-p", "map=zero")
    assert bad_value.returncode == 2 and "OPERATOR=N" in bad_value.stderr
    empty = procflow("graph", f"{PIPELINES}:not_a_builder")
    assert empty.returncode == 1 and "pipeline is empty" in empty.stderr and "Traceback" not in empty.stderr


@pytest.mark.timeout(60)
def test_graph_text_dot_mermaid(tmp_path):
    text = procflow("graph", f"{PIPELINES}:counted", "-p", "flatmap=3")
    assert text.returncode == 0
    assert "4 operators, 6 tasks" in text.stdout
    assert "flatmap_2" in text.stdout and "filter" in text.stdout
    dot = tmp_path / "g.dot"
    assert procflow("graph", f"{PIPELINES}:counted", "--format", "dot", "--output", str(dot)).returncode == 0
    body = dot.read_text()
    assert body.startswith("digraph procflow {") and '"batch_0" -> "flatmap_1" [label="balance"];' in body
    mermaid = procflow("graph", f"{PIPELINES}:counted", "-f", "mermaid")
    assert mermaid.stdout.startswith("flowchart LR") and "flatmap_0 -->|balance| filter_0" in mermaid.stdout


@pytest.mark.timeout(60)
def test_wordcount_example_runs_through_the_command(tmp_path):
    report = tmp_path / "wc.json"
    done = procflow("run", "examples/wordcount.py:pipeline", "--env-dir", str(tmp_path), "--report", str(report))
    assert done.returncode == 0, done.stderr
    data = json.loads(report.read_text())
    assert data["source_records"] == 20_000
    assert data["operators"]["flatmap"]["records_out"] == data["operators"]["map"]["records_in"] == 240_000
    # the maps pre-reduce for the reduce (a combiner): at most one partial per word and map task crosses
    assert 0 < data["operators"]["reduce"]["records_in"] <= 2 * 20   # the example's vocabulary: 20 words


@pytest.mark.timeout(60)
def _interrupt(proc: subprocess.Popen, signum: int, *, ready: bool, why: str) -> tuple[str, str]:
    """Send `signum` to a `procflow run` that is `ready`, and return its output; never leave it running."""
    try:
        assert ready, why
        proc.send_signal(signum)
        return proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=["ctrl-c", "sigterm", "sighup"])
def test_ctrl_c_exits_130_and_leaves_nothing(tmp_path, signum):
    # SIGTERM and SIGHUP (a closed terminal) used to end the command at once, leaving the job's shared
    # memory in /dev/shm (issue 23.5); they now stop the job like Ctrl-C.
    report = tmp_path / "report.json"
    proc = subprocess.Popen([sys.executable, "-m", "procflow.cli", "run", f"{PIPELINES}:forever",
                             "--env-dir", str(tmp_path), "--report", str(report)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()     # printed once every task has been started
    out, err = _interrupt(proc, signum, ready="running" in line, why=line)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert "killed" in out          # the summary still prints, with the job's status
    pids = [t["pid"] for t in json.loads(report.read_text())["tasks"].values()]
    assert len(pids) == 3 and all(pids)
    deadline = time.monotonic() + 10
    while (own_segments(proc.pid) or any(_alive(p) for p in pids)) and time.monotonic() < deadline:
        time.sleep(0.05)            # observing OS state, not synchronising
    assert not own_segments(proc.pid)
    assert not [p for p in pids if _alive(p)]


@pytest.mark.timeout(60)
def test_ctrl_c_summary_counts_the_work_done_and_names_the_real_bottleneck(tmp_path):
    """Issue 23.2: a 5 ms map, interrupted; its row must show its work, the bottleneck must be the map,
    and the header's rate the job's (not the source's, which filled the rings at once)."""
    report, mark = tmp_path / "report.json", tmp_path / "mark"
    proc = subprocess.Popen([sys.executable, "-m", "procflow.cli", "run", f"{PIPELINES}:crawl_long",
                             "--env-dir", str(tmp_path), "--report", str(report)], cwd=ROOT,
                            env={**os.environ, pipelines.MARK_ENV: str(mark)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # The map creates `mark` after MARK_AFTER records: observe the file, then interrupt.
    out, err = _interrupt(proc, signal.SIGINT, ready=wait_until(mark.exists, 30),
                          why="the map never reached its mark")
    assert proc.returncode == 130, err
    data = json.loads(report.read_text())
    work = data["operators"]["work"]
    # Counters are published every 50 ms of work (10 records here), so the map's row is current.
    assert work["records_in"] >= pipelines.MARK_AFTER - 15, work
    assert work["busy_s"] >= (pipelines.MARK_AFTER - 15) * pipelines.CRAWL_SECONDS, work
    assert data["bottleneck"] == "work", data["operators"]
    assert "try --parallelism work=2" in out and "parallelism sink" not in out
    # The job's rate: records through the whole pipeline, which a 5 ms map holds under 200/s.
    assert data["completed_records"] <= work["records_in"]
    assert data["throughput_rps"] == pytest.approx(data["completed_records"] / data["elapsed_s"])
    assert data["throughput_rps"] < 1 / pipelines.CRAWL_SECONDS
    assert f"{data['completed_records']:,} through the pipeline" in out.splitlines()[0]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
