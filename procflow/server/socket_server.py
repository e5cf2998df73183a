"""`procflow serve`: the event loop that owns the socket, the runner and (optionally) the web app.

    serve(options)
      state folder (0700, checked) ─► flock state/server.lock (one server per state folder)
      socket: a live server there -> refuse; a stale socket of ours -> removed; bind, chmod 0600
      runner.start(): rows left "running" by a dead server -> "lost"; queued rows run again
      per connection: read lines (at most MAX_REQUEST bytes each), answer each with one line
      SIGTERM / SIGINT / SIGHUP ─► stop accepting, stop every job (graceful, then kill), remove the
                                   socket, exit 0
"""

from __future__ import annotations

import asyncio
import fcntl
import importlib
import ipaddress
import json
import os
import signal
import socket
import stat
import sys
from dataclasses import dataclass
from typing import Any

from procflow.server import paths
from procflow.server.jobs import JobService, UnknownJobError
from procflow.server.protocol import (
    BAD_REQUEST,
    FAILED,
    MAX_REQUEST,
    OPS,
    TOO_LARGE,
    UNKNOWN_JOB,
    VERSION,
    encode,
    error,
    ok,
)
from procflow.server.runner import Runner
from procflow.server.store import JobStore

WEB_MISSING = ("the web dashboard needs the web extra: pip install 'procflow[web]' (then run "
               "`procflow serve --http 127.0.0.1:PORT` again)")


class ServeError(Exception):
    """The server cannot start; the message says why and what to do."""


@dataclass(frozen=True)
class ServeOptions:
    socket: str | None = None
    state_dir: str | None = None
    max_jobs: int = 1
    cores: int | None = None
    http: tuple[str, int] | None = None
    stop_grace: float = 10.0


def parse_http(text: str) -> tuple[str, int]:
    """`127.0.0.1:8765` -> ("127.0.0.1", 8765); only loopback addresses are accepted."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not sep or not host or not 0 <= port <= 65535:
        raise ValueError(f"--http {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8765")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"--http {text!r}: the dashboard listens on loopback only (127.0.0.1 or ::1); "
                         "reach it from elsewhere through an SSH tunnel (ssh -L PORT:127.0.0.1:PORT host)")
    return host, port


class SocketServer:
    def __init__(self, service: JobService, path: str, *, info: dict[str, Any]) -> None:
        self.service = service
        self.path = path
        self.info = info
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._connection, path=self.path)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        buffer = b""
        discarding = False   # inside a request that was too large: skip to its end
        try:
            while True:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    break
                buffer += chunk
                while True:
                    end = buffer.find(b"\n")
                    if discarding:
                        if end < 0:
                            buffer = b""
                            break
                        buffer, discarding = buffer[end + 1:], False
                        continue
                    if end < 0:
                        if len(buffer) > MAX_REQUEST:
                            buffer, discarding = b"", True
                            await self._reply(writer, _too_large())
                        break
                    line, buffer = buffer[:end], buffer[end + 1:]
                    reply = _too_large() if len(line) > MAX_REQUEST else await self._answer(line)
                    await self._reply(writer, reply)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _reply(self, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        writer.write(encode(reply))
        await writer.drain()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return error("the request is not valid JSON (one JSON object per line)", BAD_REQUEST)
        if not isinstance(request, dict) or request.get("op") not in OPS:
            return error(f"a request is a JSON object with \"op\" one of {', '.join(OPS)}", BAD_REQUEST)
        try:
            return ok(await self._dispatch(request))
        except UnknownJobError as exc:
            return error(str(exc), UNKNOWN_JOB)
        except (ValueError, TypeError, KeyError, FileNotFoundError) as exc:
            return error(str(exc) if not isinstance(exc, KeyError) else f"missing argument {exc}", BAD_REQUEST)
        except Exception as exc:   # the server keeps serving; the client hears what went wrong
            print(f"procflow serve: {request.get('op')} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return error(f"{type(exc).__name__}: {exc}", FAILED)

    async def _dispatch(self, request: dict[str, Any]) -> Any:
        service, op = self.service, request["op"]
        if op == "ping":
            return self.info
        if op == "submit":
            return service.submit_job(request["target"], name=request.get("name"),
                                      parallelism=request.get("parallelism"),
                                      checkpoint_dir=request.get("checkpoint_dir"), cores=request.get("cores"),
                                      cwd=request.get("cwd"))
        if op == "list":
            return service.list_jobs()
        if op == "status":
            return service.job_details(request["id"])
        if op == "stop":
            return service.stop_job(request["id"])
        if op == "logs":
            return service.list_logs(request["id"])
        if op == "read_log":
            offset, limit = request.get("offset", 0), request.get("limit", 65536)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (offset, limit)):
                raise ValueError("offset and limit must be integers")
            text, next_offset = service.read_log(request["id"], request["name"], offset, limit)
            return {"text": text, "offset": next_offset}
        if op == "wait":
            return await service.wait_job(request["id"])
        raise ValueError(f"unknown op {op!r}")


def _too_large() -> dict[str, Any]:
    return error(f"request larger than {MAX_REQUEST} bytes; nothing was done", TOO_LARGE)


# -- start-up ------------------------------------------------------------------------------------


def _lock_state(state: str) -> int:
    fd = os.open(os.path.join(state, paths.LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise ServeError(f"another procflow server (pid {owner or '?'}) uses the state folder {state}; stop it, "
                         "or pass another --state-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _claim_socket(path: str) -> None:
    """Refuse a socket a live server answers on; remove a stale one of ours."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ServeError(f"{path} exists and is not a socket; remove it or pass another --socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(5)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass   # stale: nobody listens
    except OSError as exc:
        raise ServeError(f"cannot tell whether a server owns {path}: {exc}") from None
    else:
        raise ServeError(f"a procflow server already runs at {path}; use it (procflow submit ...), stop it, "
                         "or pass another --socket")
    finally:
        probe.close()
    if st.st_uid != os.geteuid():
        raise ServeError(f"the stale socket {path} belongs to another user; remove it or pass another --socket")
    os.unlink(path)


def serve(options: ServeOptions) -> int:
    """Run the server until SIGTERM / SIGINT / SIGHUP; returns the exit code."""
    serve_http = None
    if options.http is not None:
        try:
            serve_http = importlib.import_module("procflow.server.web").serve_http
        except ImportError:
            raise ServeError(WEB_MISSING) from None
    previous_umask = os.umask(0o077)   # every file and socket the server makes is private from the start
    try:
        return _serve_in_state(options, serve_http)
    finally:
        os.umask(previous_umask)


def _serve_in_state(options: ServeOptions, serve_http: Any) -> int:
    state = paths.state_dir(options.state_dir)
    lock = _lock_state(state)
    try:
        path = paths.socket_path(options.socket)
        paths.prepare_socket_dir(path, default=options.socket is None)
        _claim_socket(path)
        store = JobStore(os.path.join(state, paths.DB_NAME))
        try:
            runner = Runner(store, state, max_jobs=options.max_jobs, cores=options.cores,
                            stop_grace=options.stop_grace)
            service = JobService(store, runner, state)
            return asyncio.run(_serve(service, runner, path, state, options, serve_http))
        finally:
            store.close()
    finally:
        os.close(lock)


async def _serve(service: JobService, runner: Runner, path: str, state: str, options: ServeOptions,
                 serve_http: Any) -> int:
    """Serve until a stop signal (exit 0), or until the web app fails (exit 1: e.g. its port is taken)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    info = {"pid": os.getpid(), "version": VERSION, "state_dir": state, "socket": path,
            "max_jobs": runner.max_jobs, "cores": runner.cores}
    server = SocketServer(service, path, info=info)
    await server.start()
    lost = runner.start(loop)
    web = None
    code = 0
    try:
        marked = f"; {len(lost)} job(s) of a previous server marked lost" if lost else ""
        print(f"procflow: serving on {path} (state in {state}; up to {runner.max_jobs} job(s) and "
              f"{runner.cores} cores at once){marked}", file=sys.stderr, flush=True)
        waiters = [asyncio.ensure_future(stop.wait())]
        if serve_http is not None and options.http is not None:
            web = asyncio.ensure_future(serve_http(service, options.http[0], options.http[1], state))
            waiters.append(web)
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            if waiter not in done:
                waiter.cancel()
        if web is not None and web in done and not web.cancelled():
            code = 1
            print(f"procflow serve: error: the web dashboard stopped: {web.exception() or 'it returned'}",
                  file=sys.stderr, flush=True)
        print("procflow: shutting down; stopping running jobs", file=sys.stderr, flush=True)
    finally:
        await runner.shutdown()
        if web is not None and not web.done():
            web.cancel()
            await asyncio.gather(web, return_exceptions=True)
        await server.close()
        print("procflow: server stopped", file=sys.stderr, flush=True)
    return code
