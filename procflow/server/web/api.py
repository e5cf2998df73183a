"""The JSON API and the server-sent events, as Starlette routes over a JobService.

    GET  /api/jobs                          list_jobs()
    GET  /api/jobs/{id}                     get_job(id): the record, "live" and "summary"
    POST /api/jobs/{id}/stop                stop_job(id)
    GET  /api/jobs/{id}/logs                {"logs": list_logs(id)}
    GET  /api/jobs/{id}/logs/{name}?offset=&limit=   {"text", "offset", "next_offset"}
    GET  /api/jobs/{id}/events              text/event-stream: an `job` event with get_job(id) every
                                            EVENT_INTERVAL s while it runs, then the final state and `end`

An unknown job is a 404, a bad log name or offset a 400. Service methods are synchronous and quick
(SQLite reads, small files) and the SQLite connection belongs to the server's thread: they are called
right here on the event loop, never in a thread pool.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from procflow.server.web.service import FINAL_STATES, JobServiceLike

EVENT_INTERVAL = 0.5
MAX_LOG_CHUNK = 256 * 1024
DEFAULT_LOG_CHUNK = 64 * 1024
_JOB_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")

Endpoint = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def finite(value: Any) -> Any:
    """`value` with NaN and infinities as None: JSON has no spelling for them, and a browser's
    JSON.parse rejects Python's `NaN`."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def to_json(value: Any) -> str:
    return json.dumps(finite(value), allow_nan=False, separators=(",", ":"), default=str)


def json_response(value: Any, status: int = 200) -> Response:
    return Response(to_json(value), status_code=status, media_type="application/json")


class JobApi:
    """The routes, bound to one service; `stopping` ends the event streams when the server shuts down."""

    def __init__(self, service: JobServiceLike, stopping: asyncio.Event) -> None:
        self.service = service
        self.stopping = stopping

    def routes(self) -> list[Route]:
        return [
            Route("/api/jobs", _handled(self.list_jobs)),
            Route("/api/jobs/{job_id}", _handled(self.get_job)),
            Route("/api/jobs/{job_id}/stop", _handled(self.stop_job), methods=["POST"]),
            Route("/api/jobs/{job_id}/logs", _handled(self.list_logs)),
            Route("/api/jobs/{job_id}/logs/{name:path}", _handled(self.read_log)),
            Route("/api/jobs/{job_id}/events", _handled(self.events)),
        ]

    async def list_jobs(self, request: Request) -> Response:
        return json_response(self.service.list_jobs())

    async def get_job(self, request: Request) -> Response:
        return json_response(self.service.get_job(_job_id(request)))

    async def stop_job(self, request: Request) -> Response:
        return json_response(self.service.stop_job(_job_id(request)))

    async def list_logs(self, request: Request) -> Response:
        return json_response({"logs": self.service.list_logs(_job_id(request))})

    async def read_log(self, request: Request) -> Response:
        job_id = _job_id(request)
        name = request.path_params["name"]
        _check_log_name(name)
        offset = _int_param(request, "offset", 0, 0, 2**62)
        limit = _int_param(request, "limit", DEFAULT_LOG_CHUNK, 1, MAX_LOG_CHUNK)
        if name not in self.service.list_logs(job_id):
            raise ApiError(404, f"job {job_id} has no log {name!r}; GET /api/jobs/{job_id}/logs lists them")
        try:
            text, next_offset = self.service.read_log(job_id, name, offset, limit)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        return json_response({"name": name, "text": text, "offset": offset, "next_offset": next_offset})

    async def events(self, request: Request) -> Response:
        job_id = _job_id(request)
        self.service.get_job(job_id)   # an unknown job is a 404 now, not an empty stream
        return StreamingResponse(self._event_stream(job_id), media_type="text/event-stream",
                                 headers={"x-accel-buffering": "no"})

    async def _event_stream(self, job_id: str) -> AsyncIterator[str]:
        while not self.stopping.is_set():
            try:
                job = self.service.get_job(job_id)
            except KeyError:
                yield "event: end\ndata: {}\n\n"
                return
            yield f"event: job\ndata: {to_json(job)}\n\n"
            if job.get("status") in FINAL_STATES:
                yield "event: end\ndata: {}\n\n"
                return
            try:
                await asyncio.wait_for(self.stopping.wait(), EVENT_INTERVAL)
            except asyncio.TimeoutError:
                pass


def _handled(endpoint: Endpoint) -> Endpoint:
    """Maps the service's errors to HTTP answers: KeyError (UnknownJobError) -> 404, ApiError -> its status."""

    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ApiError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        except KeyError:
            job_id = request.path_params.get("job_id", "")
            return JSONResponse({"error": f"no job {job_id!r} on this server; GET /api/jobs lists them"},
                                status_code=404)

    return wrapped


def _job_id(request: Request) -> str:
    job_id: str = request.path_params["job_id"]
    if not _JOB_ID.fullmatch(job_id):
        raise ApiError(404, f"no job {job_id[:80]!r} on this server; GET /api/jobs lists them")
    return job_id


def _check_log_name(name: str) -> None:
    """Refuse names that could leave the job's log folder before the service sees them (it checks too,
    symlinks included: this is the first of two locks)."""
    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or "\0" in name or any(p in ("", ".", "..") for p in parts):
        raise ApiError(400, f"log name {name[:200]!r} is not a plain path inside the job's log folder")


def _int_param(request: Request, key: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(key)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ApiError(400, f"{key}={raw[:40]!r} must be a whole number from {low} to {high}")
    return int(raw)
