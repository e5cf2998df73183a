"""Statuses and requests are enums, yet compare equal to the strings users and tools already use."""

from __future__ import annotations

import json

import pytest

from procflow.core.enums import ControlRequest, JobStatus
from procflow.core.errors import JobFailedError
from procflow.runtime.job_manager import JobManager


def test_a_status_is_its_string():
    assert JobStatus.FINISHED == "finished"
    assert str(JobStatus.KILLED) == "killed"
    assert f"{JobStatus.STOPPED}" == "stopped"
    assert json.dumps({"status": JobStatus.FAILED}) == '{"status": "failed"}'
    assert ControlRequest("kill") is ControlRequest.KILL


@pytest.mark.parametrize("status", list(JobStatus))
def test_terminal_statuses(status):
    assert status.terminal == (status not in (JobStatus.CREATED, JobStatus.RUNNING))


def test_the_job_manager_speaks_in_statuses():
    manager = JobManager("j", [("map_0", "map")])
    assert manager.status is JobStatus.CREATED
    manager.mark_running()
    assert manager.status is JobStatus.RUNNING
    manager.stop_requested = True
    manager.finish()
    assert manager.status is JobStatus.STOPPED
    assert not manager.fail(JobFailedError("late"), JobStatus.FAILED)   # the job already ended
