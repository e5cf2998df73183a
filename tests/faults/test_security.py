"""Segments are private (mode 0600) with unguessable names; a local job opens no network socket; log
folders and files are private; the orphan sweep touches only this user's dead drivers (issue 22)."""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from procflow import JobFailedError, LocalEnvironment
from procflow.core.errors import UnsafePathError
from procflow.runtime import dispatcher as dispatcher_module
from procflow.runtime.communication.shm import SHM_DIR, sweep_orphans
from procflow.runtime.communication.shm_owner import driver_key, release_driver_key
from procflow.testing import DriverProcess, Endless, FaultAt, child_pids, inet_sockets_of, own_segments, repo_env

pytestmark = pytest.mark.timeout(150)


def test_segments_are_private_with_unguessable_names(env_dir):
    names = []
    for _ in range(2):
        env = LocalEnvironment("sec", env_dir=env_dir)
        env.from_source(Endless).map(lambda r: r, parallelism=2).sink(lambda r: None)
        job = env.submit(autostop=False)
        try:
            segments = own_segments()
            assert len(segments) >= 3   # the job segment and one inbox per consuming task
            for name in segments:
                mode = stat.S_IMODE(os.stat(os.path.join(SHM_DIR, name)).st_mode)
                assert mode == 0o600, f"{name} has mode {oct(mode)}"
                # procflow_<owner pid>_<owner token>_<job id>_<role>_<48 random bits>
                assert re.fullmatch(rf"{driver_key()}_{job.job_id}_[a-z]+_[0-9a-f]{{12}}", name), name
            names += segments
        finally:
            env.stop()
    secrets_part = [n.rsplit("_", 1)[1] for n in names]
    assert len(set(secrets_part)) == len(secrets_part)


DRIVER = """
import sys
from procflow import LocalEnvironment
from procflow.testing import AnnounceOnce, Endless

env = LocalEnvironment("net", {"queue": sys.argv[2]}, env_dir=sys.argv[1], start_method=sys.argv[3])
env.from_source(Endless).map(lambda r: r, parallelism=2).keyby(lambda r: r % 7).map(lambda r: r, parallelism=2) \\
    .sink(AnnounceOnce)
env.submit()
"""


def test_socket_helper_sees_inet_sockets():
    """The check below would notice: an inet socket shows up, a unix one does not."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as u:
        s.bind(("127.0.0.1", 0))
        s.listen()
        found = inet_sockets_of(os.getpid())
        assert os.fstat(s.fileno()).st_ino in found
        assert os.fstat(u.fileno()).st_ino not in found


@pytest.mark.parametrize("queue, start_method", [("shm", "fork"), ("mp", "fork"), ("shm", "spawn")])
def test_local_environment_opens_no_network_socket(env_dir, queue, start_method):
    # A fresh driver process, so that no socket inherited from this test process can blur the result.
    with DriverProcess(DRIVER, env_dir, queue, start_method) as driver:
        driver.expect("running", timeout=90)
        pids = {driver.pid, *child_pids(driver.pid)}
        assert len(pids) >= 6
        for pid in pids:
            assert inet_sockets_of(pid) == set(), f"pid {pid} holds an internet socket"


# -- log folders (issue 22, items 1 and 2) ----------------------------------------------------------------

IS_ROOT = os.geteuid() == 0
THIRD_USER = 65533   # owns nothing else on the machine; only ever a file owner here
NOBODY = 65534
needs_root = pytest.mark.skipif(not IS_ROOT, reason="dropping to another uid (65534) needs root")


def test_a_planted_job_folder_of_symlinks_is_refused(env_dir, tmp_path, monkeypatch):
    # The attack of issue 22: whoever can write to env_dir makes the job's folder first and fills it
    # with symlinks named like its log files, all pointing at a file only the job's user may write.
    monkeypatch.setattr(dispatcher_module, "new_job_id", lambda: "0badc0de")
    victim = tmp_path / "victim"
    victim.write_text("root-only contents\n")
    planted = os.path.join(env_dir, "0badc0de")
    os.makedirs(planted)
    for task in ("source_0", "map_0", "sink_0"):
        for suffix in ("crash", "info", "debug"):
            os.symlink(victim, os.path.join(planted, f"{task}_{suffix}.log"))
    for name in ("Dispatcher.log", "Error.log"):
        os.symlink(victim, os.path.join(planted, name))
    env = LocalEnvironment("planted", env_dir=env_dir)
    env.from_batch(range(10)).map(lambda r: r).sink(lambda r: None)
    with pytest.raises(UnsafePathError, match="0badc0de already exists"):
        env.submit()
    assert victim.read_text() == "root-only contents\n"


def test_every_log_file_is_private_error_log_included(env_dir):
    env = LocalEnvironment("private", env_dir=env_dir)
    env.from_batch(range(10)).map(FaultAt(5), parallelism=2).sink(lambda r: None)
    with pytest.raises(JobFailedError):
        env.submit()
    job_dir = env.job.log_dir
    assert stat.S_IMODE(os.stat(job_dir).st_mode) == 0o700
    names = sorted(os.listdir(job_dir))
    assert {"Dispatcher.log", "Error.log", "map_0_info.log", "map_1_debug.log"} <= set(names)
    for name in names:
        assert stat.S_IMODE(os.stat(os.path.join(job_dir, name)).st_mode) == 0o600, name


def run_as(uid: int, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Run `fn()` in a forked child that has dropped to `uid` (group too, no supplementary groups);
    returns what it returned, or raises AssertionError with the child's traceback.

    Forked, not exec'd: the interpreter and procflow are already loaded, so the other user needs no
    access to where they are installed (often under root's home, mode 0700)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            message = json.dumps({"result": fn()})
            code = 0
        except BaseException:
            message = json.dumps({"error": traceback.format_exc()})
        finally:
            try:
                release_driver_key()   # os._exit skips atexit, which removes it otherwise
                with os.fdopen(write_end, "w") as f:
                    f.write(message)
            finally:
                os._exit(code)
    os.close(write_end)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([read_end], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"the child running as uid {uid} did not finish in {timeout}s")
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    answer = json.loads(b"".join(chunks) or b'{"error": "the child wrote nothing"}')
    if "error" in answer:
        raise AssertionError(f"as uid {uid}: {answer['error']}")
    return answer["result"]


def user_job(shared_tmp: str) -> Callable[[], Any]:
    """A job with the default env_dir, as a user whose home is unusable: its logs go under $TMPDIR."""
    def run() -> Any:
        os.environ["HOME"] = "/nonexistent"
        os.environ.pop("XDG_STATE_HOME", None)
        tempfile.tempdir = shared_tmp
        env = LocalEnvironment("shared")
        result = env.from_batch(range(100)).map(lambda r: r + 1, parallelism=2).collect()
        env.submit()
        return {"sum": sum(result.results()), "env_dir": env.env_dir}
    return run


@pytest.fixture
def shared_tmp():
    """A world-writable temporary directory, like /tmp, that other users can reach."""
    path = tempfile.mkdtemp(prefix="procflow-shared-tmp-", dir="/tmp")
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path)


@needs_root
def test_another_users_job_is_not_locked_out_of_the_default_log_folder(shared_tmp, monkeypatch):
    # Root runs a job with the default env_dir first; on a shared default folder that made root its owner.
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")
    monkeypatch.setattr(tempfile, "tempdir", shared_tmp)
    env = LocalEnvironment("shared")
    env.from_batch(range(10)).sink(lambda r: None)
    env.submit()
    theirs = run_as(NOBODY, user_job(shared_tmp))
    assert theirs["sum"] == sum(range(1, 101))
    assert os.stat(theirs["env_dir"]).st_uid == NOBODY and not theirs["env_dir"].startswith(env.env_dir)


# -- the shared-memory orphan sweep (issue 22, item 3) -----------------------------------------------------


def stale_segment(owner_uid: int) -> str:
    """A segment of a dead driver (pid 999999, no lock file), owned by `owner_uid`."""
    name = f"procflow_999999_{secrets.token_hex(8)}_stale_in_{secrets.token_hex(6)}"
    path = os.path.join(SHM_DIR, name)
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
    os.chown(path, owner_uid, owner_uid)
    return path


@needs_root
def test_another_users_stale_segment_does_not_fail_a_job(env_dir, shared_tmp):
    # A third user's, not root's: root's own jobs in parallel test workers rightly sweep a dead root
    # driver's segment, which made this test flaky under `pytest -n`.
    stale = stale_segment(THIRD_USER)
    try:
        assert run_as(NOBODY, user_job(shared_tmp))["sum"] == sum(range(1, 101))
        assert os.path.exists(stale), "a sweep removed a segment of another user"
    finally:
        os.unlink(stale)


@needs_root
def test_the_sweep_leaves_other_users_segments_alone():
    stale = stale_segment(THIRD_USER)   # not NOBODY: its jobs in parallel workers may sweep its own
    try:
        assert os.path.basename(stale) not in sweep_orphans()
        assert os.path.exists(stale)
    finally:
        os.unlink(stale)


def test_the_sweep_removes_own_dead_drivers_segments_and_lock():
    dead = f"procflow_999999_{secrets.token_hex(8)}"
    # ...and the half-made lock file of a driver killed while it started (see shm_owner.py)
    unborn = f"procflow_999998_{secrets.token_hex(8)}.new"
    names = [f"{dead}_stale_in_{secrets.token_hex(6)}", f"{dead}.lock", unborn]
    for name in names:
        os.close(os.open(os.path.join(SHM_DIR, name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
    assert names[0] in sweep_orphans()
    assert not any(os.path.exists(os.path.join(SHM_DIR, n)) for n in names)


SWEEP = "import json; from procflow.runtime.communication.shm import sweep_orphans; print(json.dumps(sweep_orphans()))"


def test_a_sweep_in_another_pid_namespace_spares_a_running_job(env_dir):
    if shutil.which("unshare") is None:
        pytest.skip("the unshare command is not installed")
    env = LocalEnvironment("pidns", env_dir=env_dir)
    env.from_source(Endless).map(lambda r: r, parallelism=2).sink(lambda r: None)
    job = env.submit(autostop=False)
    try:
        segments = own_segments()
        assert segments
        # In a new PID namespace this driver's pid does not exist: by pid, its segments look orphaned.
        swept = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c", SWEEP], env=repo_env(),
                               capture_output=True, text=True, timeout=60)
        if swept.returncode != 0 and "unshare" in swept.stderr:
            pytest.skip(f"cannot make a PID namespace here: {swept.stderr.strip()}")
        assert swept.returncode == 0, swept.stderr
        assert set(json.loads(swept.stdout)) & segments == set()
        assert all(os.path.exists(os.path.join(SHM_DIR, s)) for s in segments)
        assert job.status == "running"
    finally:
        env.stop()
    assert job.status == "stopped"


EXITING_DRIVER = """
from procflow import LocalEnvironment
env = LocalEnvironment("exit", env_dir=__import__("sys").argv[1])
env.from_batch(range(10)).map(lambda r: r, parallelism=2).sink(lambda r: None)
env.submit()
print("done", flush=True)
"""


def test_a_driver_leaves_nothing_in_dev_shm_when_it_exits(env_dir):
    with DriverProcess(EXITING_DRIVER, env_dir) as driver:
        driver.expect("done", timeout=60)
        assert driver.wait(30) == 0
    left = [n for n in os.listdir(SHM_DIR) if n.startswith(f"procflow_{driver.pid}_")]
    assert left == [], "the driver's lock file or segments outlived it"
