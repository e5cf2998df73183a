"""Private log folders and files (issue 22, items 1-2 and log pruning): no process is started here."""

from __future__ import annotations

import logging
import os
import stat
import tempfile

import pytest

from procflow import LocalEnvironment
from procflow.core.errors import UnsafePathError
from procflow.runtime.private_files import (
    PrivateDir,
    PrivateFileHandler,
    default_log_dir,
    default_state_dir,
    make_job_dir,
    prune_job_dirs,
)

IS_ROOT = os.geteuid() == 0


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def no_xdg(monkeypatch, tmp_path):
    """No XDG_STATE_HOME, a home that is not ours, and $TMPDIR in tmp_path: the procflow-<uid> fallback."""
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", "/")   # owned by root: not ours unless we are root
    if IS_ROOT:
        home = tmp_path / "someone_elses_home"
        home.mkdir()
        os.chown(home, 65534, 65534)
        monkeypatch.setenv("HOME", str(home))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def test_default_env_dir_is_per_user_and_private(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    env = LocalEnvironment("wordcount")
    assert env.env_dir == str(tmp_path / "state" / "procflow" / "logs" / "wordcount")
    for path in (tmp_path / "state" / "procflow", tmp_path / "state" / "procflow" / "logs", env.env_dir):
        assert os.path.isdir(path) and mode(str(path)) == 0o700, path


def test_default_under_home_only_when_home_is_ours(monkeypatch, tmp_path, no_xdg):
    assert default_state_dir() == os.path.join(str(no_xdg), f"procflow-{os.geteuid()}")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    assert default_state_dir() == str(home / ".local" / "state" / "procflow")


def test_temp_fallback_must_be_ours_and_0700(no_xdg):
    base = no_xdg / f"procflow-{os.geteuid()}"
    base.mkdir(mode=0o700)
    os.chmod(base, 0o777)   # pre-created by an attacker's umask, or chmod'ed open
    with pytest.raises(UnsafePathError, match=r"mode 0o777.*chmod 700"):
        default_log_dir("job")
    os.rmdir(base)
    os.symlink(str(no_xdg), str(base))
    with pytest.raises(UnsafePathError, match="symlink"):
        default_log_dir("job")
    os.unlink(base)
    assert default_log_dir("job") == str(base / "logs" / "job")
    assert mode(str(base)) == 0o700


@pytest.mark.skipif(not IS_ROOT, reason="making a folder owned by another user needs root")
def test_temp_fallback_owned_by_another_user_is_refused(no_xdg):
    base = no_xdg / f"procflow-{os.geteuid()}"
    base.mkdir(mode=0o700)
    os.chown(base, 65534, 65534)
    with pytest.raises(UnsafePathError, match="belongs to uid 65534"):
        LocalEnvironment("job")


def test_env_name_cannot_escape_the_log_folder(no_xdg):
    with pytest.raises(ValueError, match="env_dir"):
        LocalEnvironment("../elsewhere")


def test_job_dir_is_fresh_and_private(tmp_path):
    env_dir = str(tmp_path / "env")
    job_dir = make_job_dir(env_dir, "0123abcd", keep_logs=None)
    assert mode(job_dir) == 0o700
    with pytest.raises(UnsafePathError, match="already exists"):
        make_job_dir(env_dir, "0123abcd", keep_logs=None)


def test_private_files_are_0600_and_never_follow_symlinks(tmp_path):
    job_dir = make_job_dir(str(tmp_path / "env"), "0123abcd", keep_logs=None)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.symlink(victim, os.path.join(job_dir, "planted.log"))
    with PrivateDir(job_dir) as d:
        for exclusive in (True, False):
            with pytest.raises(UnsafePathError):
                d.open_file("planted.log", exclusive=exclusive)
        with d.open_text("Error.log", exclusive=False) as f:
            f.write("a record\n")
        with pytest.raises(UnsafePathError, match="already exists"):
            d.open_file("Error.log", exclusive=True)
        os.link(victim, os.path.join(job_dir, "hardlinked.log"))
        with pytest.raises(UnsafePathError, match="single link"):
            d.open_file("hardlinked.log", exclusive=False)
    assert victim.read_text() == "precious"
    assert mode(os.path.join(job_dir, "Error.log")) == 0o600


def test_a_job_dir_that_is_not_private_is_refused(tmp_path):
    job_dir = make_job_dir(str(tmp_path / "env"), "0123abcd", keep_logs=None)
    os.chmod(job_dir, 0o755)
    with pytest.raises(UnsafePathError, match="mode 0o755"):
        PrivateDir(job_dir)


def test_log_handler_drops_records_after_close(tmp_path):
    job_dir = make_job_dir(str(tmp_path / "env"), "0123abcd", keep_logs=None)
    handler = PrivateFileHandler(job_dir, "x_info.log")
    logger = logging.Logger("private-handler-test")
    logger.addHandler(handler)
    logger.warning("kept")
    handler.close()
    logger.warning("late")   # logging.FileHandler would reopen the file here, and leak it
    assert handler.stream is None
    with open(os.path.join(job_dir, "x_info.log")) as f:
        assert f.read() == "kept\n"
    assert mode(os.path.join(job_dir, "x_info.log")) == 0o600


def _job_folders_and_a_planted_link(tmp_path, n: int):
    """`n` job folders, oldest first, and a symlink named like a job that points at a folder outside."""
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    jobs = [f"{i:08x}" for i in range(n)]
    for i, job in enumerate(jobs):
        (env_dir / job).mkdir()
        (env_dir / job / "Dispatcher.log").write_text(job)
        os.utime(env_dir / job, ns=(i * 10**9, i * 10**9))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not procflow's")
    os.symlink(outside, env_dir / "deadbeef")       # named like a job, but a symlink: never followed
    return env_dir, jobs, outside


def test_pruning_keeps_the_newest_job_folders_and_nothing_else(tmp_path):
    env_dir, jobs, outside = _job_folders_and_a_planted_link(tmp_path, 6)
    (env_dir / "notes").mkdir()                      # not a job folder
    (env_dir / "0000000f").write_text("a file")      # not a folder
    removed = prune_job_dirs(str(env_dir), 3, current=jobs[0])
    assert sorted(removed) == jobs[1:4]
    assert sorted(os.listdir(env_dir)) == sorted([jobs[0], *jobs[4:], "deadbeef", "notes", "0000000f"])
    assert (outside / "keep.txt").read_text() == "not procflow's"


def test_pruning_works_on_python_3_10_whose_rmtree_has_no_dir_fd(tmp_path, monkeypatch):
    """Found by mypy (python_version 3.10): `shutil.rmtree(..., dir_fd=)` is 3.11+, so on 3.10 pruning
    raised TypeError. Here the interpreter version and rmtree's signature are those of 3.10."""
    import shutil
    import types

    from procflow.io import safe_paths  # where rmtree_at lives (shared with the file sinks)

    real_rmtree = shutil.rmtree

    def rmtree_310(path, ignore_errors=False, onerror=None):   # 3.10's signature: no dir_fd
        real_rmtree(path, ignore_errors, onerror)

    monkeypatch.setattr(shutil, "rmtree", rmtree_310)
    monkeypatch.setattr(safe_paths, "sys", types.SimpleNamespace(version_info=(3, 10, 14)), raising=False)
    env_dir, jobs, outside = _job_folders_and_a_planted_link(tmp_path, 4)
    removed = prune_job_dirs(str(env_dir), 2)
    assert sorted(removed) == jobs[:2]
    assert sorted(os.listdir(env_dir)) == sorted([*jobs[2:], "deadbeef"])
    assert (outside / "keep.txt").read_text() == "not procflow's"
