"""The HTTP server of `procflow serve --http`: the Starlette app behind the Guard, run by uvicorn on the
job server's own event loop.

    HttpDashboard(service, host, port, state_dir)   refuses a non-loopback host, binds the socket,
                                                     loads or creates the token (token.py)
    await dashboard.run()                            serves until cancelled; on cancel the event
                                                     streams end and uvicorn closes its connections

uvicorn.Server.serve() would install its own SIGINT/SIGTERM handlers and raise the signal again after
shutting down; inside the job server, which owns the signals and stops its jobs on them, that would act
twice. `_EmbeddedServer` leaves the signals alone: the job server cancels `run()` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Generator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from procflow.server.web.api import JobApi
from procflow.server.web.guard import Guard
from procflow.server.web.listener import bind_loopback
from procflow.server.web.service import JobServiceLike
from procflow.server.web.token import load_or_create_token

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
SHUTDOWN_GRACE_S = 2


def build_app(service: JobServiceLike, *, token: str, port: int, stopping: asyncio.Event) -> Guard:
    """The whole ASGI app: dashboard page, static files and JSON API, all behind the token."""

    async def index(request: Request) -> Response:
        return FileResponse(os.path.join(STATIC_DIR, "index.html"), media_type="text/html")

    routes = [Route("/", index), *JobApi(service, stopping).routes(),
              Mount("/static", StaticFiles(directory=STATIC_DIR), name="static")]
    return Guard(Starlette(routes=routes), token=token, port=port)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without signal handling of its own (see the module docstring)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpDashboard:
    """The dashboard's listening socket, token and app; `run()` serves them."""

    def __init__(self, service: JobServiceLike, host: str, port: int, state_dir: str) -> None:
        self.socket = bind_loopback(host, port)   # ValueError for a non-loopback host, before anything else
        try:
            self.token = load_or_create_token(state_dir)
        except BaseException:
            self.socket.close()
            raise
        address, self.port = self.socket.getsockname()[:2]
        self.host = f"[{address}]" if ":" in address else address
        self._stopping = asyncio.Event()
        self.app = build_app(service, token=self.token, port=self.port, stopping=self._stopping)

    @property
    def url(self) -> str:
        """The dashboard's address with the token: the first visit turns it into a cookie."""
        return f"http://{self.host}:{self.port}/?token={self.token}"

    async def run(self) -> None:
        """Serve until cancelled (or until the server fails); the socket is closed on return."""
        config = uvicorn.Config(self.app, http="h11", ws="none", lifespan="off", log_config=None,
                                access_log=False, log_level="warning", server_header=False, proxy_headers=False,
                                timeout_graceful_shutdown=SHUTDOWN_GRACE_S, limit_concurrency=100,
                                h11_max_incomplete_event_size=16 * 1024)
        server = _EmbeddedServer(config)
        serving = asyncio.ensure_future(server.serve(sockets=[self.socket]))
        try:
            await asyncio.shield(serving)
        except asyncio.CancelledError:
            self._stopping.set()          # event streams end, so their connections can close
            server.should_exit = True
            await serving
            raise
        finally:
            self.socket.close()
