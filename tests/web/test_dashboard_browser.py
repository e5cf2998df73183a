"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) over the fake JobService:
it loads, draws the running job's graph, its numbers move, the stop button stops the job, untrusted text
stays text, and nothing loads from outside. A screenshot is saved (test_dashboard_real_server.py's, taken
of a real job, is the README's docs/dashboard.png: PROCFLOW_DASHBOARD_SCREENSHOT=docs/dashboard.png)."""

from __future__ import annotations

import os
import shutil

WAIT_MS = 30_000   # generous: a loaded 2-core CI machine


def open_dashboard(browser, served, errors: list[str], requests: list[str]):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: (errors.append("dialog: " + dialog.message), dialog.dismiss()))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(served.dashboard.url)
    return page


def save_screenshot(page, tmp_path, *, publish: bool = False) -> str:
    """The page as a PNG in tmp_path; with `publish`, also at $PROCFLOW_DASHBOARD_SCREENSHOT if set."""
    path = str(tmp_path / "dashboard.png")
    page.screenshot(path=path, full_page=True)
    assert os.path.getsize(path) > 10_000
    target = os.environ.get("PROCFLOW_DASHBOARD_SCREENSHOT")
    if publish and target:
        shutil.copyfile(path, target)
    return path


def test_the_dashboard_shows_the_running_job_live_and_stops_it(browser, served, tmp_path):
    errors: list[str] = []
    requests: list[str] = []
    page = open_dashboard(browser, served, errors, requests)
    assert "token" not in page.url                                   # the login redirect dropped it

    # the running job is picked, and its graph drawn: 3 tasks (chains) for 5 operators, 4 enrich instances
    page.wait_for_selector("#graph .op >> nth=4")
    assert page.inner_text("#job-name") == "clickstream etl"
    assert page.inner_text("#job-status") == "running"
    assert page.locator("#graph .chain").count() == 3
    assert page.locator('#graph .op[data-op="parse"]').count() == 1
    enrich_chain = page.locator('#graph .chain:has(.op[data-op="enrich"])')
    assert enrich_chain.locator(".instance").count() == 4
    assert page.get_attribute("#graph .op.bottleneck", "data-op") == "enrich"
    assert page.get_attribute("#operators tr.bottleneck", "data-op") == "enrich"
    assert page.locator("#graph-edges line").count() == 2            # chain to chain: balance, hash
    assert set(page.locator("#graph-edges text").all_text_contents()) == {"balance", "hash"}

    # its numbers change while it runs (live updates by server-sent events)
    before = page.inner_text("#progress-text")
    page.wait_for_function("before => document.getElementById('progress-text').textContent !== before", arg=before)
    page.wait_for_selector("#plot polyline")
    assert "ETA" in page.inner_text("#eta")
    page.wait_for_function("() => document.getElementById('log-tail').textContent.includes('batch 49')")
    save_screenshot(page, tmp_path)

    # the stop button stops it
    page.click("#stop")
    page.wait_for_function("() => document.getElementById('job-status').textContent === 'stopped'")
    assert served.service.jobs["running1"].status == "stopped"
    assert ("stop_job", ("running1",)) in served.service.calls
    assert page.is_disabled("#stop")

    assert errors == []
    assert all(url.startswith(served.base + "/") or url.startswith("data:") for url in requests), requests
    page.close()


def test_untrusted_text_stays_text(browser, served):
    errors: list[str] = []
    page = open_dashboard(browser, served, errors, [])
    page.goto(served.base + "/#job=fail0001")
    page.wait_for_function("() => document.getElementById('job-status').textContent === 'failed'")
    assert page.inner_text("#job-name") == "nightly <b>etl</b>"       # shown, not interpreted
    assert page.locator("#job-name b, #job-list b, #log-tail script").count() == 0
    assert page.is_visible("#error-card")
    assert page.inner_text("#error-where") == "in enrich_1: ValueError: bad record {'id': 7}"
    assert 'File "etl.py", line 12' in page.inner_text("#error-traceback")
    assert page.is_disabled("#stop")
    page.wait_for_function("() => document.getElementById('log-tail').textContent"
                           ".includes('<script>alert(1)</script>')")
    assert errors == []                                              # no alert() ran
    page.close()


def test_a_queued_job_shows_that_it_waits(browser, served):
    errors: list[str] = []
    page = open_dashboard(browser, served, errors, [])
    page.goto(served.base + "/#job=queued01")
    page.wait_for_function("() => document.getElementById('job-status').textContent === 'queued'")
    assert page.inner_text("#progress-text") == "waiting for the job to start"
    assert page.locator("#graph .op").count() == 0 and page.is_hidden("#error-card")
    assert page.is_enabled("#stop")                                  # a queued job can be taken off the queue
    assert errors == []
    page.close()


def test_an_unknown_job_in_the_address_says_so(browser, served):
    errors: list[str] = []
    page = open_dashboard(browser, served, errors, [])
    page.goto(served.base + "/#job=nosuchjob")
    page.wait_for_function("() => document.getElementById('connection').textContent === 'cannot follow job nosuchjob'")
    assert errors == []
    page.close()


def test_without_the_token_the_browser_gets_nothing(browser, served):
    page = browser.new_page()
    response = page.goto(served.base + "/")
    assert response is not None and response.status == 401
    assert page.locator("#job-list").count() == 0
    page.close()
    assert served.service.calls == []
