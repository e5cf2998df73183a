"""The token file and the listening address: what protects the dashboard before any request arrives."""

from __future__ import annotations

import asyncio
import os
import re
import stat

import pytest

from procflow.core.errors import UnsafePathError
from procflow.server.web import HttpDashboard, serve_http
from procflow.server.web.listener import bind_loopback, loopback_address
from procflow.server.web.token import TOKEN_FILE, load_or_create_token, tokens_match


def test_the_token_file_is_private_and_reused(tmp_path):
    state = str(tmp_path / "state")
    token = load_or_create_token(state)
    path = os.path.join(state, TOKEN_FILE)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert len(token) >= 40
    assert load_or_create_token(state) == token            # a restarted server keeps the bookmark working
    assert load_or_create_token(str(tmp_path / "other")) != token


def test_a_token_file_others_can_read_is_refused(tmp_path):
    state = str(tmp_path / "state")
    load_or_create_token(state)
    os.chmod(os.path.join(state, TOKEN_FILE), 0o644)
    with pytest.raises(UnsafePathError, match="0o644.*Remove the file"):
        load_or_create_token(state)


def test_a_symlinked_token_file_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    planted = tmp_path / "planted"
    planted.write_text("x" * 50)
    os.symlink(planted, state / TOKEN_FILE)
    with pytest.raises(UnsafePathError, match="symlink"):
        load_or_create_token(str(state))


def test_a_short_token_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    fd = os.open(state / TOKEN_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"1234\n")
    os.close(fd)
    with pytest.raises(UnsafePathError, match="too short"):
        load_or_create_token(str(state))


def test_tokens_match_only_the_exact_token():
    assert tokens_match("a" * 43, "a" * 43)
    assert not tokens_match("a" * 42, "a" * 43)
    assert not tokens_match("", "a" * 43)
    assert not tokens_match(None, "a" * 43)
    assert not tokens_match("é" * 43, "a" * 43)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.10", "10.1.2.3", "example.com", "127.0.0.1.nip.io"])
def test_a_host_that_is_not_loopback_is_refused(host):
    with pytest.raises(ValueError, match="loopback|not an IP address"):
        loopback_address(host)


@pytest.mark.parametrize("host, address", [("127.0.0.1", "127.0.0.1"), ("localhost", "127.0.0.1"),
                                           ("127.8.9.1", "127.8.9.1"), ("::1", "::1"), ("[::1]", "::1")])
def test_loopback_hosts_are_accepted(host, address):
    assert loopback_address(host) == address


def test_serve_http_refuses_a_public_host_before_binding_or_making_a_token(tmp_path):
    state = tmp_path / "state"
    for host in ("0.0.0.0", "192.0.2.10"):
        with pytest.raises(ValueError, match="not a loopback address"):
            asyncio.run(serve_http(object(), host, 0, str(state)))   # type: ignore[arg-type]
    assert not state.exists()


def test_the_socket_listens_on_loopback_only(tmp_path, service):
    dashboard = HttpDashboard(service, "127.0.0.1", 0, str(tmp_path / "state"))
    try:
        address, port = dashboard.socket.getsockname()[:2]
        assert address == "127.0.0.1" and port > 0
        assert dashboard.url == f"http://127.0.0.1:{port}/?token={dashboard.token}"
    finally:
        dashboard.socket.close()


def test_a_busy_port_is_a_clear_error():
    first = bind_loopback("127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match="another server using it"):
            bind_loopback("127.0.0.1", first.getsockname()[1])
    finally:
        first.close()


def test_serve_http_prints_the_url_once_and_serves_until_cancelled(service, tmp_path, capsys):
    import httpx

    from procflow.testing import wait_until
    from tests.web.conftest import LoopThread

    state = str(tmp_path / "state")
    runner = LoopThread(lambda: serve_http(service, "127.0.0.1", 0, state))
    try:
        printed: list[str] = []
        found = wait_until(lambda: printed.append(capsys.readouterr().err) or re.search(
            r"web dashboard at (http://127\.0\.0\.1:\d+/\?token=(\S+))", "".join(printed)), 30)
        assert found, printed
        assert found.group(2) == load_or_create_token(state)
        with httpx.Client(timeout=30, follow_redirects=True) as client:
            page = client.get(found.group(1))
        assert page.status_code == 200 and "<title>procflow</title>" in page.text
    finally:
        runner.cancel()
    assert "".join(printed).count("web dashboard at") == 1
