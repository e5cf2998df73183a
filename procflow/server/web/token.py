"""The HTTP token: a random secret in `<state_dir>/http-token` (0600), the only key to the HTTP API.

The job server can run any code its user can (it imports `module:build`), so whoever can stop or read a
job must be that user: on a shared workstation every local user can reach 127.0.0.1. The token is made
once and reused, so a bookmarked dashboard keeps working across restarts of `procflow serve`.

    load_or_create_token(state_dir)   read the file, or create it (O_EXCL, 0600, no symlink followed);
                                      a file that another user owns or can read is refused
    tokens_match(given, expected)     constant-time comparison (hmac.compare_digest)
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat

from procflow.core.errors import UnsafePathError
from procflow.runtime.private_files import PrivateDir, private_dir

TOKEN_FILE = "http-token"
_TOKEN_BYTES = 32          # 256 bits, urlsafe base64: 43 characters
_MIN_TOKEN_CHARS = 32      # a hand-edited file with a short token is refused, not trusted


def load_or_create_token(state_dir: str) -> str:
    """The token stored in `state_dir` (a private 0700 folder, made if missing), created on first use."""
    private_dir(state_dir)
    with PrivateDir(state_dir) as folder:
        try:
            fd = os.open(TOKEN_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder.fd)
        except FileNotFoundError:
            return _create(folder)
        except OSError as exc:
            raise UnsafePathError(f"cannot read the HTTP token {os.path.join(state_dir, TOKEN_FILE)} ({exc}); "
                                  "if it is a symlink or not a file, remove it and restart") from exc
        with os.fdopen(fd, encoding="ascii", errors="replace") as f:
            _check_private(os.fstat(f.fileno()), os.path.join(state_dir, TOKEN_FILE))
            token = f.read().strip()
    if len(token) < _MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable():
        raise UnsafePathError(f"the HTTP token in {os.path.join(state_dir, TOKEN_FILE)} is not one procflow "
                              "made (too short or not printable); remove the file and restart to get a new one")
    return token


def _create(folder: PrivateDir) -> str:
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    fd = folder.open_file(TOKEN_FILE, exclusive=True)    # O_EXCL | O_NOFOLLOW, mode 0600
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
    return token


def _check_private(st: os.stat_result, path: str) -> None:
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        raise UnsafePathError(f"{path} is not a regular file of this user; remove it and restart to get a new token")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise UnsafePathError(f"{path} has mode {oct(stat.S_IMODE(st.st_mode))}: other users may have read the "
                              "token. Remove the file and restart `procflow serve` to get a new token")


def tokens_match(given: str | None, expected: str) -> bool:
    """True when `given` is the token; the time taken does not depend on where they differ."""
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("ascii"))
