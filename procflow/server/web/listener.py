"""The listening socket of the HTTP API: loopback addresses only.

The dashboard can stop jobs and shows their logs; DESIGN §7 says nothing of procflow listens beyond
loopback, so a host that names any other interface is refused before anything is bound. The socket is
bound here, not by uvicorn, so that a busy port is a clear error (uvicorn would `sys.exit` inside the
job server) and port 0 can be used (the kernel picks a free one; `.getsockname()` tells which).
"""

from __future__ import annotations

import ipaddress
import socket

_LOCALHOST_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def loopback_address(host: str) -> str:
    """The IP literal to bind for `host`; ValueError unless it is a loopback address (or 'localhost').

    A host name other than localhost is refused rather than resolved: what it resolves to can change
    after the check (and /etc/hosts may point it anywhere).
    """
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name in _LOCALHOST_NAMES:
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        raise ValueError(f"--http host {host!r} is not an IP address; the dashboard listens on loopback "
                         "only: use 127.0.0.1 (or ::1, or localhost)") from None
    if not address.is_loopback:
        raise ValueError(f"--http host {host!r} is not a loopback address: procflow's HTTP API never "
                         "listens where other machines can reach it. Use 127.0.0.1 (or ::1), and reach it "
                         "from elsewhere through an SSH tunnel (ssh -L PORT:127.0.0.1:PORT this-host)")
    return str(address)


def is_loopback_host(host: str) -> bool:
    """Whether a Host header's host part names this machine's loopback (DNS-rebinding guard)."""
    try:
        loopback_address(host)
    except ValueError:
        return False
    return True


def bind_loopback(host: str, port: int) -> socket.socket:
    """A listening TCP socket on the loopback address `host`, port `port` (0: any free port)."""
    address = loopback_address(host)
    if not 0 <= port <= 65535:
        raise ValueError(f"--http port {port} is out of range; pick one in 1..65535 (or 0 for any free port)")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        return socket.create_server((address, port), family=family, backlog=64, reuse_port=False)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {address} port {port} ({exc.strerror}); is another "
                                 "server using it? Pick another port with --http 127.0.0.1:PORT") from exc
