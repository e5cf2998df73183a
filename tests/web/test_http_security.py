"""The HTTP API refuses what it must, through the real stack (uvicorn + Starlette + the Guard):
no or wrong token -> 401 and nothing runs; traversal, oversized and malformed requests -> 4xx, and the
server keeps serving the running job."""

from __future__ import annotations

import http.client
import socket

import httpx
import pytest


def exact_get(served, path: str) -> tuple[int, str]:
    """GET `path` byte for byte as given, with the token."""
    conn = http.client.HTTPConnection("127.0.0.1", served.dashboard.port, timeout=30)
    try:
        conn.request("GET", path, headers=served.auth)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


ROUTES = [("GET", "/"), ("GET", "/static/dashboard.js"), ("GET", "/api/jobs"), ("GET", "/api/jobs/running1"),
          ("POST", "/api/jobs/running1/stop"), ("GET", "/api/jobs/running1/logs"),
          ("GET", "/api/jobs/running1/logs/driver.log"), ("GET", "/api/jobs/running1/events")]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-" + "x" * 30},
                                     {"Authorization": "Basic dXNlcjpwYXNz"}, {"Cookie": "procflow_token_1=nope"}],
                         ids=["none", "wrong-bearer", "basic", "wrong-cookie"])
def test_without_the_token_every_route_is_401_and_runs_nothing(served, headers):
    with httpx.Client(base_url=served.base, timeout=30) as client:
        for method, path in ROUTES:
            response = client.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, response.text)
            assert "token" in response.json()["error"]
    assert served.service.calls == []
    assert served.service.jobs["running1"].status == "running"


def test_a_wrong_token_in_the_url_or_cookie_is_401(served):
    port = served.dashboard.port
    with httpx.Client(base_url=served.base, timeout=30) as client:
        assert client.get("/", params={"token": served.token[:-1] + "?"}).status_code == 401
        assert client.get("/api/jobs", params={"token": ""}).status_code == 401
        assert client.get("/api/jobs", headers={"Cookie": f"procflow_token_{port}={served.token}x"}).status_code == 401
        # the right token twice in the URL is not a login either (which one would count?)
        assert client.get(f"/?token={served.token}&token=x").status_code == 401
    assert served.service.calls == []


def test_the_url_token_cannot_stop_a_job(served):
    """?token= is for the first page visit (GET) only: a link or form must not be able to stop a job."""
    with httpx.Client(base_url=served.base, timeout=30) as client:
        response = client.post("/api/jobs/running1/stop", params={"token": served.token})
    assert response.status_code == 401
    assert served.service.calls == []
    assert served.service.jobs["running1"].status == "running"


def test_first_visit_turns_the_url_token_into_a_strict_cookie(served):
    with httpx.Client(base_url=served.base, timeout=30) as client:
        response = client.get("/", params={"token": served.token, "x": "1"})
        assert response.status_code == 303
        assert response.headers["location"] == "/?x=1"           # the token leaves the address bar
        cookie = response.headers["set-cookie"]
        assert f"procflow_token_{served.dashboard.port}={served.token}" in cookie
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        page = client.get("/")                                   # the cookie alone now opens the page
        assert page.status_code == 200 and "<title>procflow</title>" in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["referrer-policy"] == "no-referrer"
        assert client.get("/api/jobs").status_code == 200


def test_the_login_redirect_stays_on_this_server(served):
    conn = http.client.HTTPConnection("127.0.0.1", served.dashboard.port, timeout=30)
    try:
        conn.request("GET", f"//evil.example/?token={served.token}")
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert response.status == 303 and response.getheader("location") == "/evil.example/"


def test_bearer_token_opens_the_api(served):
    response = httpx.get(served.base + "/api/jobs", headers=served.auth, timeout=30)
    assert response.status_code == 200
    assert [job["id"] for job in response.json()] == ["queued01", "running1", "done0001", "fail0001"]


def test_a_foreign_host_header_is_refused_even_with_the_token(served):
    """A DNS-rebinding page reaches 127.0.0.1 under its own host name; the Host header gives it away."""
    response = httpx.get(served.base + "/api/jobs", headers={**served.auth, "Host": "evil.example:80"}, timeout=30)
    assert response.status_code == 400
    assert served.service.calls == []


def test_a_cross_origin_stop_is_refused(served):
    response = httpx.post(served.base + "/api/jobs/running1/stop",
                          headers={**served.auth, "Origin": "http://evil.example"}, timeout=30)
    assert response.status_code == 403
    assert ("stop_job", ("running1",)) not in served.service.calls
    assert served.service.jobs["running1"].status == "running"


@pytest.mark.parametrize("name", ["../../secret.txt", "..%2F..%2Fsecret.txt", "%2Fetc%2Fpasswd", "/etc/passwd",
                                  "0a1b2c3d/../../../secret.txt", "escape.log", "nothere.log", "..",
                                  "0a1b2c3d//enrich_0_info.log", "driver.log%00.txt"])
def test_a_log_name_cannot_leave_the_log_folder(served, name):
    # http.client sends the path as written (httpx would resolve the dot segments before sending)
    status, body = exact_get(served, f"/api/jobs/running1/logs/{name}")
    assert status in (400, 404), (name, status, body)
    assert "not a log" not in body and "root:" not in body


def test_a_symlink_out_of_the_log_folder_is_a_400_from_the_service(served):
    """escape.log is listed (a symlink in the folder), so the service itself is asked and says no."""
    response = httpx.get(f"{served.base}/api/jobs/running1/logs/escape.log", headers=served.auth, timeout=30)
    assert response.status_code == 400
    assert "leaves the job's log folder" in response.json()["error"]


def test_oversized_bodies_are_refused_before_anything_runs(served):
    with httpx.Client(base_url=served.base, headers=served.auth, timeout=30) as client:
        big = client.post("/api/jobs/running1/stop", content=b"x" * (1024 * 1024))
        assert big.status_code == 413

        def chunks():
            for _ in range(4):
                yield b"y" * 65536

        chunked = client.post("/api/jobs/running1/stop", content=chunks())
        assert chunked.status_code == 411
    assert ("stop_job", ("running1",)) not in served.service.calls
    assert served.service.jobs["running1"].status == "running"


@pytest.mark.parametrize("path, status", [("/api/jobs/nosuchjob", 404), ("/api/jobs/..%2F..", 404),
                                          ("/api/jobs/running1/logs/driver.log?offset=-1", 400),
                                          ("/api/jobs/running1/logs/driver.log?offset=abc", 400),
                                          ("/api/jobs/running1/logs/driver.log?limit=0", 400),
                                          ("/api/jobs/running1/logs/driver.log?limit=99999999", 400),
                                          ("/api/jobs/nosuchjob/events", 404), ("/api/jobs/nosuchjob/logs", 404),
                                          ("/nowhere", 404), ("/static/../app.py", 404)])
def test_bad_requests_get_4xx(served, path, status):
    got, body = exact_get(served, path)
    assert got == status, body


def test_stop_needs_post(served):
    response = httpx.get(served.base + "/api/jobs/running1/stop", headers=served.auth, timeout=30)
    assert response.status_code == 405
    assert ("stop_job", ("running1",)) not in served.service.calls


def raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(data)
        reply = b""
        while not reply.endswith(b"\r\n\r\n") and b"\r\n\r\n" not in reply:
            part = conn.recv(65536)
            if not part:
                break
            reply += part
        return reply


@pytest.mark.parametrize("data", [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n",
                                  b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n",
                                  b"GET /" + b"a" * 40000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                                  b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n"],
                         ids=["garbage", "no-colon", "huge-header", "huge-url", "tls-hello"])
def test_malformed_requests_get_4xx_and_the_server_keeps_serving(served, data):
    reply = raw_exchange(served.dashboard.port, data)
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else None
    assert status is not None and 400 <= status < 500, reply[:200]
    job = httpx.get(served.base + "/api/jobs/running1", headers=served.auth, timeout=30)
    assert job.status_code == 200 and job.json()["status"] == "running"


def test_the_dashboard_serves_on_ipv6_loopback_too(service, tmp_path):
    from procflow.server.web import HttpDashboard
    from tests.web.conftest import LoopThread

    try:
        dashboard = HttpDashboard(service, "::1", 0, str(tmp_path / "state"))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback on this machine ({exc})")
    assert dashboard.url.startswith(f"http://[::1]:{dashboard.port}/?token=")
    runner = LoopThread(dashboard.run)
    try:
        with httpx.Client(timeout=30, follow_redirects=True) as client:
            page = client.get(dashboard.url)
            assert page.status_code == 200 and "<title>procflow</title>" in page.text
            assert client.get(f"http://[::1]:{dashboard.port}/api/jobs").status_code == 200   # by the cookie
    finally:
        runner.cancel()
