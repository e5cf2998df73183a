"""The dashboard end to end: a real `procflow serve --http 127.0.0.1:0` (subprocess, tmp socket and
state folder) running a real job, watched and stopped from headless Chromium, then a failing job whose
error and remote traceback the page shows; the API's guards checked on the real server too; nothing left
behind once the server is stopped."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

import httpx
import pytest

from procflow.testing import own_segments, wait_until
from tests.server.conftest import ServerProcess, procflow, wait_dead
from tests.web.test_dashboard_browser import WAIT_MS, save_screenshot

CLI_PIPELINES = str(Path(__file__).resolve().parents[1] / "cli" / "pipelines.py")


@pytest.fixture
def server(tmp_path):
    short = tempfile.mkdtemp(prefix="pf-")     # a Unix socket path has at most 107 bytes
    process = ServerProcess(os.path.join(short, "s.sock"), str(tmp_path / "state"), tmp_path / "serve.log",
                            "--http", "127.0.0.1:0")
    try:
        yield process
    finally:
        process.close()
        shutil.rmtree(short, ignore_errors=True)


def dashboard_url(server: ServerProcess) -> str:
    found = wait_until(lambda: re.search(r"web dashboard at (http://127\.0\.0\.1:\d+/\?token=\S+)", server.log()), 60)
    assert found, f"no dashboard URL on the server's stderr:\n{server.log()}"
    return found.group(1)


def exact_get(base: str, path: str, token: str) -> int:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.timeout(300)
def test_a_real_job_watched_and_stopped_in_the_browser(server, browser, tmp_path):
    url = dashboard_url(server)
    base, token = url.split("/?token=")
    auth = {"Authorization": f"Bearer {token}"}
    assert (Path(server.state_dir) / "http-token").stat().st_mode & 0o777 == 0o600

    # relative to the repository root, where procflow() runs the client
    submitted = procflow("submit", "tests/web/pipelines.py:clickstream", "--name", "clickstream <etl>",
                         "--socket", server.socket)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()

    with httpx.Client(base_url=base, timeout=30) as api:
        def enriching() -> bool:
            live = api.get(f"/api/jobs/{job_id}", headers=auth).json()["live"] or {}
            return any(op["name"] == "enrich" and op["records_out"] > 0 for op in live.get("operators", ()))

        assert wait_until(enriching, 120), server.log()
        graph = api.get(f"/api/jobs/{job_id}", headers=auth).json()["live"]["graph"]
        # the real server behind the same guards: no token, no stop; traversal and unknown ids refused
        assert api.post(f"/api/jobs/{job_id}/stop").status_code == 401
        assert api.post(f"/api/jobs/{job_id}/stop", headers={"Authorization": "Bearer x" * 9}).status_code == 401
        assert api.get(f"/api/jobs/{job_id}", headers=auth).json()["status"] == "running"
        assert exact_get(base, f"/api/jobs/{job_id}/logs/../../http-token", token) in (400, 404)
        assert exact_get(base, f"/api/jobs/{job_id}/logs/..%2F..%2Fhttp-token", token) in (400, 404)
        assert exact_get(base, "/api/jobs/00000000", token) == 404

    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector('#graph .op[data-op="enrich"]')
    assert page.inner_text("#job-name") == "clickstream <etl>"
    assert page.inner_text("#job-status") == "running"
    # the page draws the graph the job reports: one box per chain, its operators, its instances
    chains: dict[int, list[dict]] = {}
    for node in graph["nodes"]:
        chains.setdefault(node["chain"], []).append(node)
    assert page.locator("#graph .chain").count() == len(chains) >= 3
    for nodes in chains.values():
        box = page.locator(f'#graph .chain:has(.op[data-op="{nodes[0]["name"]}"])')
        assert box.locator(".op").count() == len(nodes)
        assert box.locator(".instance").count() == max(n["parallelism"] for n in nodes)
    enrich_chain = page.locator('#graph .chain:has(.op[data-op="enrich"])')
    assert enrich_chain.locator(".instance").count() == 3
    page.wait_for_selector('#operators tr.bottleneck[data-op="enrich"]')
    before = page.inner_text("#progress-text")
    page.wait_for_function("before => document.getElementById('progress-text').textContent !== before", arg=before)
    # a few seconds of history in the plot (this page is the README's screenshot)
    page.wait_for_function("() => (document.querySelector('#plot polyline')?.getAttribute('points') || '')"
                           ".split(' ').length >= 8")
    page.wait_for_function("() => document.getElementById('log-tail').textContent.length > 0")
    save_screenshot(page, tmp_path, publish=True)

    page.click("#stop")
    page.wait_for_function("() => document.getElementById('job-status').textContent === 'stopped'", timeout=120_000)

    # a job that fails: its error and the remote traceback are on the page
    submitted = procflow("submit", f"{CLI_PIPELINES}:failing", "--socket", server.socket)
    assert submitted.returncode == 0, submitted.stderr
    failing = submitted.stdout.strip()
    assert procflow("wait", failing, "--socket", server.socket).returncode == 1
    page.goto(f"{base}/#job={failing}")
    page.wait_for_function("() => document.getElementById('job-status').textContent === 'failed'")
    assert "unlucky record 13" in page.inner_text("#error-where")
    assert "ValueError" in page.inner_text("#error-traceback")
    assert errors == []
    page.close()

    job = server.call("status", id=job_id)
    assert job["status"] == "stopped" and job["exit_code"] == 130
    assert server.stop(signal.SIGTERM) == 0
    assert wait_dead([job["pid"]]), "the job's driver outlived the server"
    assert "Traceback" not in server.log()
    assert not own_segments(job["pid"])
