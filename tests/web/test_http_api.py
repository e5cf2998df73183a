"""The JSON API and the event stream over the fake JobService, through the real HTTP stack."""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Iterator

import httpx

from tests.web.conftest import LoopThread


def client(served) -> httpx.Client:
    return httpx.Client(base_url=served.base, headers=served.auth, timeout=30)


def read_events(lines: Iterator[str], limit: int = 100) -> list[tuple[str, dict]]:
    """(event, data) pairs from the lines of a text/event-stream, until it ends or `limit` events were read."""
    events, name, data = [], "message", []
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and data:
            events.append((name, json.loads("\n".join(data))))
            name, data = "message", []
            if len(events) >= limit:
                break
    return events


def test_jobs_list_and_one_job(served):
    with client(served) as c:
        jobs = c.get("/api/jobs").json()
        assert [j["status"] for j in jobs] == ["queued", "running", "succeeded", "failed"]
        job = c.get("/api/jobs/running1").json()
    assert job["id"] == "running1" and job["summary"] is None
    live = job["live"]
    assert live["bottleneck"] == "enrich"
    assert {n["name"] for n in live["graph"]["nodes"]} == {"source", "parse", "enrich", "count", "sink"}


def test_stop_stops_the_job(served):
    with client(served) as c:
        record = c.post("/api/jobs/running1/stop").json()
        assert record["status"] == "stopped"
        assert c.get("/api/jobs/running1").json()["status"] == "stopped"
    assert ("stop_job", ("running1",)) in served.service.calls


def test_logs_are_listed_and_read_from_an_offset(served):
    with client(served) as c:
        names = c.get("/api/jobs/running1/logs").json()["logs"]
        assert "driver.log" in names and "0a1b2c3d/enrich_0_info.log" in names
        first = c.get("/api/jobs/running1/logs/0a1b2c3d/enrich_0_info.log", params={"limit": 100}).json()
        assert first["offset"] == 0 and first["next_offset"] == 100 and len(first["text"]) == 100
        rest = c.get("/api/jobs/running1/logs/0a1b2c3d/enrich_0_info.log", params={"offset": 100}).json()
    assert (first["text"] + rest["text"]).count("\n") == 50
    assert rest["text"].endswith("batch 49 <script>alert(1)</script>\n")


def test_events_stream_live_snapshots_then_the_final_state(served):
    with client(served) as c, c.stream("GET", "/api/jobs/running1/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        snapshots = []
        while len(snapshots) < 2:
            line = next(lines)
            if line.startswith("data: "):
                snapshots.append(json.loads(line[6:]))
        assert snapshots[1]["live"]["elapsed"] > snapshots[0]["live"]["elapsed"]   # a new snapshot, not a repeat
        with client(served) as other:
            other.post("/api/jobs/running1/stop")
        rest = read_events(lines)
    assert rest[-1][0] == "end"
    assert rest[-2][0] == "job" and rest[-2][1]["status"] == "stopped"


def test_a_finished_job_streams_once_and_ends(served):
    with client(served) as c, c.stream("GET", "/api/jobs/fail0001/events") as response:
        events = read_events(response.iter_lines())
    assert [name for name, _ in events] == ["job", "end"]
    assert events[0][1]["live"]["error"]["task"] == "enrich_1"


def test_non_finite_numbers_become_null(served):
    served.service.jobs["running1"].live = lambda: {"throughput": math.nan, "history": [[1.0, 2, math.inf]]}
    with client(served) as c:
        response = c.get("/api/jobs/running1")
    live = json.loads(response.text)["live"]       # strict JSON: no NaN / Infinity tokens
    assert live == {"throughput": None, "history": [[1.0, 2, None]]}


def test_cancelling_the_server_ends_open_streams_and_frees_the_port(service, tmp_path):
    from procflow.server.web import HttpDashboard

    dashboard = HttpDashboard(service, "127.0.0.1", 0, str(tmp_path / "state"))
    runner = LoopThread(dashboard.run)
    port = dashboard.port
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {dashboard.token}"},
                      timeout=30) as c, c.stream("GET", "/api/jobs/running1/events") as response:
        lines = response.iter_lines()
        assert next(lines).startswith("event: job")
        runner.cancel()                            # joins within the grace period, an open stream included
        for _ in lines:                            # the stream ends rather than hanging
            pass
    probe = socket.socket()
    try:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    finally:
        probe.close()
