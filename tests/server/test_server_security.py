"""What the server exposes and to whom: private files, a socket only its user reaches, log names that
cannot leave the job's folder, and requests that cannot hurt it (oversized, malformed)."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys

import pytest

from procflow.server.protocol import MAX_REQUEST, Client, RequestError

from .conftest import procflow


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def raw_exchange(path: str, payload: bytes, replies: int = 1) -> list[dict]:
    """Send raw bytes, read `replies` reply lines."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(path)
        sock.sendall(payload)
        data = b""
        while data.count(b"\n") < replies:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


@pytest.mark.timeout(180)
def test_private_files_and_a_log_request_cannot_escape(start_server, tmp_path):
    server = start_server("--max-jobs", "2", "--cores", "64")
    job_id = server.submit("chatty")
    assert server.cli("wait", job_id).returncode == 0
    state = server.state_dir
    job_dir = os.path.join(state, "jobs", job_id)
    assert stat.S_ISSOCK(os.lstat(server.socket).st_mode) and mode(server.socket) == 0o600
    assert mode(state) == 0o700 and mode(job_dir) == 0o700 and mode(os.path.join(job_dir, "logs")) == 0o700
    for name in ("jobs.sqlite", "server.lock", f"jobs/{job_id}/live.json", f"jobs/{job_id}/summary.json",
                 f"jobs/{job_id}/logs/driver.log"):
        assert mode(os.path.join(state, name)) == 0o600, name

    # A secret outside the log folder, and a symlink planted inside it that points there.
    secret = tmp_path / "secret.txt"
    secret.write_text("do not show")
    os.symlink(secret, os.path.join(job_dir, "logs", "planted.log"))
    names = server.call("logs", id=job_id)
    assert "driver.log" in names and "planted.log" not in names
    for name in ("../live.json", "../../jobs.sqlite", "/etc/passwd", str(secret), "..", ".", "",
                 "planted.log", "driver.log/../../live.json", "a\0b", f"logs/../{job_id}/../live.json"):
        with pytest.raises(RequestError) as caught:
            server.call("read_log", id=job_id, name=name)
        assert caught.value.kind in ("bad_request",), name
        assert "do not show" not in str(caught.value)
    text = server.call("read_log", id=job_id, name="driver.log")["text"]
    assert "succeeded" in text
    # Through the CLI, a --task that is a path matches no log.
    sneaky = server.cli("logs", job_id, "--task", "../../../etc/passwd")
    assert sneaky.returncode == 2 and "root:" not in sneaky.stdout


@pytest.mark.timeout(180)
def test_oversized_and_malformed_requests_get_errors_and_harm_no_running_job(start_server):
    server = start_server("--max-jobs", "2", "--cores", "64", "--stop-grace", "6")
    job_id = server.submit("crawl_long")
    server.wait_running(job_id)

    huge = b'{"op": "list", "pad": "' + b"x" * (2 * MAX_REQUEST) + b'"}\n'
    over, after = raw_exchange(server.socket, huge + b'{"op": "ping"}\n', replies=2)
    assert over["ok"] is False and over["kind"] == "too_large"
    assert after["ok"] is True      # the same connection carries on after the oversized line
    no_newline = raw_exchange(server.socket, b"y" * (MAX_REQUEST + 10))
    assert no_newline[0]["kind"] == "too_large"
    malformed = [b"not json\n", b"[1, 2]\n", b'{"op": "format_disk"}\n', b'{"op": "status"}\n',
                 b'{"op": "status", "id": 7}\n', b'{"op": "submit", "target": 5}\n',
                 b'{"op": "submit", "target": "x:y", "parallelism": {"map": -1}}\n',
                 b'{"op": "submit", "target": "x:y", "cwd": "relative"}\n',
                 b'{"op": "read_log", "id": "' + job_id.encode() + b'", "name": "driver.log", "offset": -5}\n',
                 b"\xff\xfe\n"]
    replies = raw_exchange(server.socket, b"".join(malformed), replies=len(malformed))
    assert len(replies) == len(malformed)
    for request, reply in zip(malformed, replies):
        assert reply["ok"] is False and reply["kind"] in ("bad_request", "unknown_job"), (request, reply)

    # Nothing was submitted, the job still runs, and the server answers.
    assert [row["id"] for row in server.call("list")] == [job_id]
    assert server.status(job_id)["status"] == "running"
    server.cli("stop", job_id)
    assert server.cli("wait", job_id).returncode == 130


@pytest.mark.timeout(120)
def test_one_server_per_socket_and_a_stale_socket_is_cleared(start_server, short_dir, tmp_path):
    server = start_server()
    second = procflow("serve", "--socket", server.socket, "--state-dir", str(tmp_path / "other"), timeout=60)
    assert second.returncode == 1 and "already runs at" in second.stderr
    same_state = procflow("serve", "--socket", f"{short_dir}/t.sock", "--state-dir", server.state_dir, timeout=60)
    assert same_state.returncode == 1 and "uses the state folder" in same_state.stderr
    assert server.answers()
    server.stop()
    # A socket file left by a server that died: nobody listens, so the next server replaces it.
    stale = os.path.join(short_dir, "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(stale)
    restarted = start_server(state_dir=str(tmp_path / "fresh"))
    assert restarted.answers()
    assert mode(restarted.socket) == 0o600


def test_http_needs_the_web_extra_and_loopback(monkeypatch, tmp_path):
    from procflow.server.socket_server import ServeError, ServeOptions, parse_http, serve

    monkeypatch.setitem(sys.modules, "procflow.server.web", None)   # as if the extra were not installed
    with pytest.raises(ServeError, match=r"pip install 'procflow\[web\]'"):
        serve(ServeOptions(state_dir=str(tmp_path / "state"), http=("127.0.0.1", 0)))
    assert not os.path.exists(tmp_path / "state")    # refused before anything was made
    assert parse_http("127.0.0.1:8765") == ("127.0.0.1", 8765)
    assert parse_http("[::1]:80") == ("::1", 80)
    for text in ("0.0.0.0:8765", "192.168.1.5:80", "example.com:80", "127.0.0.1", "127.0.0.1:99999"):
        with pytest.raises(ValueError):
            parse_http(text)
    refused = procflow("serve", "--http", "0.0.0.0:8765", timeout=60)
    assert refused.returncode == 2 and "loopback only" in refused.stderr


def test_the_client_reports_a_reply_it_cannot_read(short_dir):
    path = os.path.join(short_dir, "fake.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        client = Client(path)
        peer, _ = listener.accept()
        with client, peer:
            peer.sendall(b'"just a string"\n')
            with pytest.raises(RequestError, match="does not understand"):
                client.call("ping")


def test_http_runs_the_web_app_on_the_servers_loop_with_the_service(monkeypatch, tmp_path, short_dir):
    """The web helper's `serve_http(service, host, port, state_dir)` runs as a task of the server's loop;
    here a stand-in records its arguments, answers through the service, then fails: serve exits 1."""
    import types

    from procflow.server.jobs import JobService
    from procflow.server.socket_server import ServeOptions, serve

    seen = {}

    async def serve_http(service, host, port, state_dir):
        seen.update(service=service, host=host, port=port, state_dir=state_dir, jobs=service.list_jobs())
        raise OSError("address already in use")

    monkeypatch.setitem(sys.modules, "procflow.server.web", types.SimpleNamespace(serve_http=serve_http))
    socket_path = os.path.join(short_dir, "h.sock")
    code = serve(ServeOptions(socket=socket_path, state_dir=str(tmp_path / "state"), http=("127.0.0.1", 8765)))
    assert code == 1
    assert isinstance(seen["service"], JobService) and seen["jobs"] == []
    assert (seen["host"], seen["port"], seen["state_dir"]) == ("127.0.0.1", 8765, str(tmp_path / "state"))
    assert not os.path.exists(socket_path)    # removed on the way out
