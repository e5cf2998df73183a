"""Fixtures of the web tests: the HTTP dashboard over a fake JobService, served by uvicorn on an event
loop in a thread of the test process (as the job server serves it on its own loop), on a free port."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

pytest.importorskip("starlette", reason="the web extra is not installed: pip install 'procflow[web]'")
pytest.importorskip("uvicorn", reason="the web extra is not installed: pip install 'procflow[web]'")

from procflow.server.web import HttpDashboard  # noqa: E402
from tests.web.fake_jobs import FakeJobService  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


@dataclass
class Served:
    dashboard: HttpDashboard
    service: FakeJobService
    state_dir: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.dashboard.port}"

    @property
    def token(self) -> str:
        return self.dashboard.token

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class LoopThread:
    """Runs one coroutine on a fresh event loop in a thread; `cancel()` cancels it and joins the thread."""

    def __init__(self, make_coroutine) -> None:
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task | None = None
        self.error: BaseException | None = None
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(make_coroutine,), name="web-test-loop")
        self.thread.start()
        assert self._started.wait(30), "the event loop thread did not start"

    def _main(self, make_coroutine) -> None:
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(make_coroutine())
        self._started.set()
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # reported by cancel()
            self.error = exc
        finally:
            self.loop.close()

    def cancel(self, timeout: float = 30) -> None:
        if self.thread.is_alive():
            assert self.task is not None
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the HTTP server did not stop within its grace period"
        if self.error is not None:
            raise self.error


@pytest.fixture
def service(tmp_path) -> FakeJobService:
    return FakeJobService(str(tmp_path / "jobs"))


@pytest.fixture
def served(service, tmp_path) -> Iterator[Served]:
    state_dir = str(tmp_path / "state")
    dashboard = HttpDashboard(service, "127.0.0.1", 0, state_dir)
    runner = LoopThread(dashboard.run)
    try:
        yield Served(dashboard, service, state_dir)
    finally:
        runner.cancel()


@pytest.fixture
def chromium_path() -> str:
    """Debian's Chromium (Playwright's own browser download is not reachable here). Missing: skipped
    locally, but a failure in CI, where .ci/run installs it."""
    in_ci = os.environ.get("CI", "").lower() == "true"
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it)"
        if in_ci:
            pytest.fail(message)
        pytest.skip(message)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        message = "playwright is not installed: pip install 'procflow[dev]'"
        if in_ci:
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture
def browser(chromium_path) -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, headless=True)
        try:
            yield browser
        finally:
            browser.close()
