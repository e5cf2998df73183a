"""Segments are private (mode 0600) with unguessable names; a local job opens no network socket."""

from __future__ import annotations

import os
import re
import socket
import stat

import pytest

from procflow import LocalEnvironment
from procflow.runtime.communication.shm import SHM_DIR
from procflow.testing import DriverProcess, Endless, child_pids, inet_sockets_of, own_segments

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
                # procflow_<owner pid>_<job id>_<role>_<48 random bits>
                assert re.fullmatch(rf"procflow_{os.getpid()}_{job.job_id}_[a-z]+_[0-9a-f]{{12}}", name), name
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
