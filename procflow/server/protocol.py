"""The socket's request / reply format, and the client side of it.

One JSON object per line, each way. A request names an operation and its arguments:

    {"op": "ping"}                                        -> {"pid", "version", "state_dir", "socket"}
    {"op": "submit", "target", "name"?, "parallelism"?, "checkpoint_dir"?, "cores"?, "cwd"?} -> JobRecord
    {"op": "list"}                                        -> [JobRecord, ...], newest first
    {"op": "status", "id"}                                -> JobRecord + live + summary (+ server details)
    {"op": "stop", "id"}                                  -> JobRecord
    {"op": "logs", "id"}                                  -> [log name, ...]
    {"op": "read_log", "id", "name", "offset"?, "limit"?} -> {"text", "offset"}
    {"op": "wait", "id"}                                  -> JobRecord, once the job has ended

    reply: {"ok": true, "result": ...}  or  {"ok": false, "error": message, "kind": KIND}

A request longer than MAX_REQUEST bytes, or one that is not a JSON object naming a known operation, gets
an error reply (kind "too_large" / "bad_request"); the server carries on.
"""

from __future__ import annotations

import json
import socket
from typing import Any

MAX_REQUEST = 64 * 1024
VERSION = 1
OPS = ("ping", "submit", "list", "status", "stop", "logs", "read_log", "wait")
BAD_REQUEST, TOO_LARGE, UNKNOWN_JOB, FAILED = "bad_request", "too_large", "unknown_job", "failed"


class ServerUnavailable(Exception):
    """Nothing answers at the socket path."""


class RequestError(Exception):
    """The server answered with an error."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, default=str, allow_nan=False).encode() + b"\n"


def ok(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def error(message: str, kind: str) -> dict[str, Any]:
    return {"ok": False, "error": message, "kind": kind}


class Client:
    """One connection to the server; `call(op, **args)` sends a request and returns its result."""

    def __init__(self, path: str, *, timeout: float | None = 30.0) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self.sock.close()
            raise ServerUnavailable(f"no procflow server at {path}; start one with `procflow serve`"
                                    f"{'' if path_is_default(path) else f' --socket {path}'}") from exc
        except OSError as exc:
            self.sock.close()
            raise ServerUnavailable(f"cannot reach the procflow server at {path}: {exc.strerror or exc}") from exc
        self._buffer = b""

    def call(self, op: str, *, timeout: float | None = 30.0, **args: Any) -> Any:
        self.sock.settimeout(timeout)
        self.sock.sendall(encode({"op": op, **args}))
        reply = self._read_line()
        if not isinstance(reply, dict) or "ok" not in reply:
            raise RequestError(f"the server sent a reply this client does not understand: {reply!r:.200}",
                               BAD_REQUEST)
        if not reply["ok"]:
            raise RequestError(str(reply.get("error")), str(reply.get("kind", FAILED)))
        return reply.get("result")

    def _read_line(self) -> Any:
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ServerUnavailable(f"the procflow server at {self.path} closed the connection "
                                        "(it stopped?)")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def path_is_default(path: str) -> bool:
    from procflow.server.paths import default_socket_path

    return path == default_socket_path()
