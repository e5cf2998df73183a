"""Public helpers for testing pipelines and procflow itself: leak checks and fault-injecting functions."""

from __future__ import annotations

import os
import platform
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import IO, Any

from procflow.core.functions import BatchFunction, MapFunction, SinkFunction, SourceFunction
from procflow.runtime.communication.shm import list_segments


def child_pids(pid: int | None = None) -> set[int]:
    """Live (non-zombie) direct children of `pid` (default: this process), read from /proc."""
    pid = os.getpid() if pid is None else pid
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.update(int(p) for p in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    alive = set()
    for child in found:
        try:
            with open(f"/proc/{child}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            continue
        if state != "Z":
            alive.add(child)
    return alive


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, children of children too (under forkserver the tasks are the fork
    server's children)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        children = child_pids(todo.pop()) - found
        found |= children
        todo.extend(children)
    return found


def mp_helper_pids() -> set[int]:
    """Pids of multiprocess's own long-lived helpers (the resource tracker that spawn starts, the fork
    server): children of this process by design, living until it exits, so never a leak."""
    found = set()
    from multiprocess import forkserver, resource_tracker

    for pid in (getattr(resource_tracker._resource_tracker, "_pid", None),
                getattr(forkserver._forkserver, "_forkserver_pid", None)):
        if pid:
            found.add(pid)
    return found


def own_segments(pid: int | None = None) -> set[str]:
    """procflow shared-memory segments created by `pid` (default: this process), not counting the
    driver's lock file (it lives as long as the driver; see shm_owner.py)."""
    prefix = f"procflow_{os.getpid() if pid is None else pid}_"
    return {name for name in list_segments() if name.startswith(prefix)}


# -- fault injection ------------------------------------------------------------------------------------
#
# Each injector can leave a timestamp (time.monotonic(), which is system-wide on Linux) in a `stamp` file
# just before the fault, so a test can measure the time from the fault to the driver's error.

FAULTS = ("raise", "sigkill", "abort", "exit", "sigsegv")
EXIT_CODE = 3  # what how="exit" passes to os._exit


class InjectedFault(RuntimeError):
    """The exception procflow.testing's injectors raise with how="raise"."""


def inject(how: str, where: str = "", stamp: str | None = None) -> None:
    """Fail now: raise InjectedFault, or kill this process by SIGKILL, abort(), os._exit or SIGSEGV."""
    if how not in FAULTS:
        raise ValueError(f"how must be one of {FAULTS}, got {how!r}")
    if stamp is not None:
        with open(stamp, "w") as f:
            f.write(repr(time.monotonic()))
    if how == "raise":
        raise InjectedFault(f"injected fault {where}".rstrip())
    sys.stdout.flush()
    sys.stderr.flush()
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "sigsegv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif how == "abort":
        os.abort()
    os._exit(EXIT_CODE)


def read_stamp(stamp: str) -> float:
    """The time.monotonic() an injector wrote just before its fault."""
    with open(stamp) as f:
        return float(f.read())


class FaultAt:
    """A plain callable for map / flatmap / sink / filter / join that faults on the record equal to `at`.

    It triggers on a value, not a count, so exactly one task instance hits it whatever the parallelism.
    `returns`: "record" (map, sink, filter), "list" (flatmap, join: `[record]`). Under spawn it ships by
    reference (this module is importable), like any top-level class.
    """

    def __init__(self, at: Any, how: str = "raise", *, returns: str = "record", stamp: str | None = None) -> None:
        if how not in FAULTS:
            raise ValueError(f"how must be one of {FAULTS}, got {how!r}")
        self.at, self.how, self.returns, self.stamp = at, how, returns, stamp

    def __call__(self, record: Any, *rest: Any) -> Any:
        if record == self.at:
            inject(self.how, f"at record {record!r}", self.stamp)
        return [record] if self.returns == "list" else record

    def __repr__(self) -> str:
        return f"FaultAt({self.at!r}, {self.how!r})"


class FailingSource(BatchFunction):
    """A bounded source emitting 0, 1, 2, ... that faults (see `inject`) instead of emitting record `at`."""

    def __init__(self, at: int, how: str = "raise", *, stamp: str | None = None) -> None:
        self.at, self.how, self.stamp = at, how, stamp
        self.next = 0

    def execute(self) -> Any:
        if self.next == self.at:
            inject(self.how, f"after {self.at} records", self.stamp)
        self.next += 1
        return self.next - 1


class Endless(SourceFunction):
    """An unbounded source of 0, 1, 2, ...; ends only when the job is stopped."""

    def __init__(self) -> None:
        self.next = 0

    def execute(self) -> Any:
        self.next += 1
        return self.next - 1


class Unencodable:
    """A record neither msgpack nor pickle (nor dill) can encode."""

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("Unencodable records refuse to be pickled")

    def __repr__(self) -> str:
        return "Unencodable()"


class EmitUnencodable:
    """A map callable that returns an Unencodable instead of record `at` (the router then cannot encode it)."""

    def __init__(self, at: Any) -> None:
        self.at = at

    def __call__(self, record: Any) -> Any:
        return Unencodable() if record == self.at else record

    def __repr__(self) -> str:
        return f"EmitUnencodable({self.at!r})"


class Unshippable(MapFunction):
    """A map function whose state cannot be pickled: it cannot be shipped to a spawned process."""

    def __init__(self) -> None:
        self.resource = Unencodable()

    def execute(self, record: Any) -> Any:
        return record


class AnnounceOnce(SinkFunction):
    """A sink that prints `line` to stdout (flushed) when its first record arrives, then swallows records.

    Driver scripts in tests use it to say "the job is running" without polling."""

    def __init__(self, line: str = "running") -> None:
        self.line = line
        self.done = False

    def execute(self, record: Any) -> None:
        if not self.done:
            self.done = True
            print(self.line, flush=True)


# -- observing processes from outside -------------------------------------------------------------------

def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def wait_until(predicate: Callable[[], Any], timeout: float) -> Any:
    """Poll OS state with backoff until `predicate()` is truthy; returns its last value (falsy on timeout).

    For observing what the OS does on its own (a pid reaped, a file gone), never for synchronisation."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def wait_gone(pids: Iterable[int], timeout: float) -> set[int]:
    """Wait until every pid has exited; returns those still alive after `timeout`."""
    pids = set(pids)
    wait_until(lambda: not any(pid_alive(p) for p in pids), timeout)
    return {p for p in pids if pid_alive(p)}


_FUTEX_SYSCALL = {"x86_64": 202, "aarch64": 98}.get(platform.machine())


def blocked_in_futex(pid: int) -> bool:
    """True when `pid`'s main thread is asleep in futex(2): a ring writer waiting for space, for one."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            first = f.read().split()[0]
    except (OSError, IndexError):
        return False
    return _FUTEX_SYSCALL is not None and first == str(_FUTEX_SYSCALL)


def socket_inodes(pid: int) -> set[int]:
    """Inodes of every socket `pid` has open (from its /proc/<pid>/fd links `socket:[inode]`)."""
    found: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, PermissionError):
        return found
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def inet_socket_inodes(pid: int | None = None) -> set[int]:
    """Inodes of the TCP, UDP and raw (IPv4 and IPv6) sockets in `pid`'s network namespace."""
    found = set()
    base = f"/proc/{pid}/net" if pid is not None else "/proc/net"
    for table in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6", "udplite", "udplite6"):
        try:
            with open(os.path.join(base, table)) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9:
                found.add(int(cols[9]))
    return found


def inet_sockets_of(pid: int) -> set[int]:
    """The internet (not unix) sockets `pid` holds open."""
    return socket_inodes(pid) & inet_socket_inodes(pid)


# -- driver subprocesses ------------------------------------------------------------------------------

def repo_env() -> dict[str, str]:
    """The environment for a subprocess that must import this same procflow (a worktree, not a wheel)."""
    import procflow

    root = os.path.dirname(os.path.dirname(os.path.abspath(procflow.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


class DriverProcess:
    """A driver script run as a subprocess in its own session (so a signal reaches only what we aim at).

    Read its stdout line by line with `expect()`; always `close()` it (it kills and reaps the driver)."""

    def __init__(self, code: str, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=repo_env(), start_new_session=True)
        self.pid = self.proc.pid
        assert self.proc.stdout is not None and self.proc.stderr is not None   # both are pipes (PIPE above)
        self._stdout: IO[bytes] = self.proc.stdout
        self._stderr: IO[bytes] = self.proc.stderr
        self._buffer = b""
        self.lines: list[str] = []

    def expect(self, line: str, timeout: float = 30.0) -> str:
        """Block until the driver prints a line starting with `line`; returns that line."""
        deadline = time.monotonic() + timeout
        fd = self._stdout.fileno()
        while True:
            while b"\n" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\n", 1)
                text = raw.decode(errors="replace")
                self.lines.append(text)
                if text.startswith(line):
                    return text
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"driver did not print {line!r} within {timeout}s; "
                                   f"stdout so far: {self.lines}; stderr: {self.stderr_now()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise EOFError(f"driver exited (rc={self.proc.wait()}) before printing {line!r}; "
                                   f"stdout: {self.lines}; stderr: {self.stderr_now()}")
                self._buffer += chunk

    def stderr_now(self) -> str:
        if self.proc.poll() is None:
            return "<still running>"
        return self._stderr.read().decode(errors="replace")[-4000:]

    def signal(self, signum: int) -> float:
        """Send `signum` to the driver; returns the time.monotonic() it was sent at."""
        sent = time.monotonic()
        os.kill(self.pid, signum)
        return sent

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Interrupt the driver (so it frees its tasks and segments), SIGKILL it if that takes over 10 s."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait()
        for stream in (self._stdout, self._stderr):
            stream.close()

    def __enter__(self) -> DriverProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
