"""The HTTP API and web dashboard of `procflow serve --http 127.0.0.1:PORT` (the `procflow[web]` extra).

    procflow serve ─► serve_http(service, host, port, state_dir) as a task on the server's loop
                        listener.py   loopback-only socket (a public host is a ValueError)
                        token.py      <state_dir>/http-token, 0600, random, reused across restarts
                        guard.py      every request: Host, body size, token (Bearer / cookie / ?token=)
                        api.py        JSON API and server-sent events over the JobService
                        static/       the dashboard: one HTML page, vanilla JS and CSS, nothing external
                        app.py        Starlette app, uvicorn on the server's event loop

Everything the page shows comes from GET /api/jobs and the event stream of one job; the only action is
POST /api/jobs/{id}/stop.
"""

from __future__ import annotations

import sys

from procflow.server.web.app import HttpDashboard
from procflow.server.web.service import JobServiceLike

__all__ = ["HttpDashboard", "serve_http"]


async def serve_http(service: JobServiceLike, host: str, port: int, state_dir: str) -> None:
    """Run the HTTP API and dashboard until cancelled.

    Refuses a non-loopback host (ValueError). Creates (or reuses) the random token stored 0600 in
    `state_dir/http-token` and prints the dashboard URL, token included, once on stderr.
    """
    dashboard = HttpDashboard(service, host, port, state_dir)
    print(f"procflow: web dashboard at {dashboard.url}", file=sys.stderr, flush=True)
    await dashboard.run()
