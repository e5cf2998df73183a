"""Where the server keeps its socket, its database and its jobs' folders; all private to this user.

    state dir    --state-dir, else $XDG_STATE_HOME/procflow, else ~/.local/state/procflow (0700, checked)
      jobs.sqlite            the job table (0600; SQLite's -wal and -shm files too)
      server.lock            flock held by the server that uses this state dir
      jobs/<id>/             one folder per job (0700): live.json, summary.json (0600)
      jobs/<id>/logs/        the job's log folder: driver.log, and <runtime job id>/<task>_*.log
    socket       --socket, else $XDG_RUNTIME_DIR/procflow/server.sock (folder 0700), else
                 <state dir>/server.sock; the socket itself is 0600
"""

from __future__ import annotations

import os
import stat

from procflow.core.errors import UnsafePathError
from procflow.runtime.private_files import default_state_dir, private_dir

DB_NAME = "jobs.sqlite"
LOCK_NAME = "server.lock"
SOCKET_NAME = "server.sock"
JOBS_DIR = "jobs"
LOGS_DIR = "logs"
LIVE_NAME = "live.json"
SUMMARY_NAME = "summary.json"
DRIVER_LOG = "driver.log"
# sun_path holds 108 bytes with its terminating NUL (Linux).
MAX_SOCKET_PATH = 107


def state_dir(given: str | None = None) -> str:
    """The state folder, created 0700 and checked (ours, a real folder, no group or other bits)."""
    path = os.path.abspath(given) if given else default_state_dir()
    private_dir(path)
    return path


def default_socket_path(state: str | None = None) -> str:
    """$XDG_RUNTIME_DIR/procflow/server.sock where that folder is set, else one in the state folder.

    Not created here: the client uses the same path to find the server.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime):
        return os.path.join(runtime, "procflow", SOCKET_NAME)
    return os.path.join(state if state else default_state_dir(), SOCKET_NAME)


def socket_path(given: str | None) -> str:
    return os.path.abspath(given) if given else default_socket_path()


def prepare_socket_dir(path: str, *, default: bool) -> None:
    """The socket's folder: made 0700 for the default place; a folder the user chose must exist and must
    not let another user swap the socket (owned by us, or sticky like /tmp)."""
    folder = os.path.dirname(path)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ValueError(f"socket path {path} is {len(os.fsencode(path))} bytes long; a Unix socket path "
                         f"may have at most {MAX_SOCKET_PATH}. Pass a shorter --socket")
    if default:
        private_dir(folder)
        return
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        raise ValueError(f"the folder of --socket {path} does not exist; create it (mode 0700) first") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{folder} is not a folder")
    others_write = st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX
    if st.st_uid != os.geteuid() and others_write:
        raise UnsafePathError(f"{folder} belongs to another user and others may write there: they could "
                              "replace the socket. Pick a folder of yours for --socket")


def job_dir(state: str, job_id: str) -> str:
    return os.path.join(state, JOBS_DIR, job_id)


def job_log_dir(state: str, job_id: str) -> str:
    return os.path.join(job_dir(state, job_id), LOGS_DIR)
