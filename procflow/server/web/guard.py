"""The gate in front of every HTTP request: nothing behind it runs unless the request holds the token.

    request ─► Host is a loopback name?          no: 400 (a DNS-rebinding page names another host)
            ─► body within MAX_BODY bytes?         no: 413; a chunked body (no length): 411
            ─► ?token= in the URL (first visit)?   right token and GET: 303 to the same URL without it,
                                                   setting an HttpOnly, SameSite=Strict cookie; else 401
            ─► Bearer header or the cookie?        no, or not the token: 401
            ─► POST from another Origin?           403 (belt and braces: the cookie is SameSite=Strict)
            ─► the app; every response gets a Content-Security-Policy that loads nothing external,
               no-store caching and no Referer (the first URL held the token)

Tokens are compared in constant time (token.tokens_match). A pure ASGI middleware, not Starlette's
BaseHTTPMiddleware, so that the server-sent events stream through it unbuffered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse, RedirectResponse

from procflow.server.web.listener import is_loopback_host
from procflow.server.web.token import tokens_match

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY = 64 * 1024   # nothing the API accepts has a body; a stop request has none at all
SAFE_METHODS = frozenset({"GET", "HEAD"})

SECURITY_HEADERS = {
    "content-security-policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


def cookie_name(port: int) -> str:
    """Cookies are not kept apart by port: two servers on 127.0.0.1 must not overwrite each other's."""
    return f"procflow_token_{port}"


class Guard:
    """ASGI middleware: authenticates every HTTP request (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, token: str, port: int, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.token = token
        self.cookie = cookie_name(port)
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":   # no websockets, and lifespan is off
            return
        send = _with_security_headers(send)
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> Any:
        """The response that refuses this request, or None to let it through."""
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if not is_loopback_host(_host_part(host)):
            return _error(400, "unexpected Host header: the dashboard answers only to 127.0.0.1, ::1 or localhost")
        length = headers.get("content-length")
        if "transfer-encoding" in headers:   # no endpoint takes a body: a streamed one is not read at all
            return _error(411, "a request body must come with a Content-Length (chunked bodies are refused)")
        if length is not None:
            if not length.isdigit():
                return _error(400, "malformed Content-Length")
            if int(length) > self.max_body:
                return _error(413, f"request body larger than {self.max_body} bytes")
        method = scope["method"]
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        url_tokens = [value for key, value in query if key == "token"]
        if url_tokens:
            if method == "GET" and len(url_tokens) == 1 and tokens_match(url_tokens[0], self.token):
                return self._login(scope, [(k, v) for k, v in query if k != "token"])
            return _unauthorized()
        if not (tokens_match(_bearer(headers), self.token) or tokens_match(_cookie(headers, self.cookie), self.token)):
            return _unauthorized()
        if method not in SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and origin not in _own_origins(host):
                return _error(403, f"cross-origin request from {origin!r} refused")
        return None

    def _login(self, scope: Scope, rest: list[tuple[str, str]]) -> RedirectResponse:
        """First visit with ?token=: keep the token in a cookie and drop it from the address bar."""
        path = "/" + (scope.get("path") or "/").lstrip("/")   # never '//host/...', a link to another site
        target = path + ("?" + urlencode(rest) if rest else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", path="/")
        return response


def _host_part(host: str) -> str:
    """'127.0.0.1:8080' -> '127.0.0.1'; '[::1]:8080' -> '::1'."""
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _own_origins(host: str) -> set[str]:
    return {f"http://{host}"}


def _bearer(headers: Headers) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _cookie(headers: Headers, name: str) -> str | None:
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _unauthorized() -> JSONResponse:
    response = _error(401, "missing or wrong token: open the URL that `procflow serve --http` printed (it ends "
                           "in ?token=...), or send 'Authorization: Bearer <the token in STATE_DIR/http-token>'")
    response.headers["www-authenticate"] = 'Bearer realm="procflow"'
    return response


def _with_security_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            for key, value in SECURITY_HEADERS.items():
                if key not in headers:
                    headers[key] = value
        await send(message)

    return wrapped
