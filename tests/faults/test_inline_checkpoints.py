"""Checkpoints on the inline executor (issue 20): the same barriers, alignment and snapshots as in task
processes, run in the driver's thread. A job killed after a checkpoint resumes exactly once, inline or
under the process executor (a checkpoint does not depend on the executor that took it)."""

from __future__ import annotations

import signal
import threading

import pytest

from procflow import JobFailedError, JoinFunction, LocalEnvironment
from procflow.backends.inline.channel import InlineInbox
from procflow.runtime.checkpoint.barrier import Barrier
from procflow.testing import DriverProcess
from tests.faults import checkpoint_pipeline as pipeline
from tests.faults.test_checkpoints import _manifests
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.timeout(240)


def _kill_after(driver: DriverProcess, checkpoint_dir: str, number: int) -> None:
    driver.expect("running", timeout=90)
    wait_for(lambda: any(int(n) >= number for n in _manifests(checkpoint_dir)), 90, f"checkpoint {number}")
    driver.signal(signal.SIGKILL)
    assert driver.wait(10) == -signal.SIGKILL, "the job ended before the kill: make it slower"


@pytest.mark.parametrize("resume_executor", ["inline", "process"])
def test_inline_job_killed_after_a_checkpoint_resumes_exactly_once(env_dir, tmp_path, resume_executor):
    inp = pipeline.write_input(str(tmp_path / "in"))
    out, checkpoint_dir = str(tmp_path / "out"), str(tmp_path / "ckpt")
    with DriverProcess(pipeline.DRIVER, env_dir, inp, out, checkpoint_dir, "inline") as driver:
        _kill_after(driver, checkpoint_dir, 2)

    env = LocalEnvironment("ckpt-resume", env_dir=env_dir, checkpoint_dir=checkpoint_dir,
                           executor=resume_executor, config={"checkpoint_interval": 0.1})
    handles = pipeline.build(env, inp, out)
    env.submit(resume=True)
    pipeline.assert_exactly_once(out, handles)
    assert _manifests(checkpoint_dir) == [], "a finished job keeps no checkpoints"


@pytest.mark.parametrize("join", ["symmetric", "attributes"])
def test_inline_join_aligns_its_inputs_and_resumes_exactly_once(env_dir, tmp_path, join):
    """Inline, the sources run one after another: the right one, not started yet, takes each barrier at
    once, and the join holds its right input until the left's barrier comes. The join's buffers are its
    state, whether its function snapshots them itself or not (its attributes are kept)."""
    left, right = pipeline.write_join_input(str(tmp_path / "in"))
    out, checkpoint_dir = str(tmp_path / "out"), str(tmp_path / "ckpt")
    with DriverProcess(pipeline.JOIN_DRIVER, env_dir, left, right, out, checkpoint_dir, "inline", join) as driver:
        _kill_after(driver, checkpoint_dir, 2)

    env = LocalEnvironment("join-resume", env_dir=env_dir, checkpoint_dir=checkpoint_dir, executor="inline")
    pipeline.build_join(env, left, right, out, join)
    env.submit(resume=True)
    assert pipeline.committed_join(out) == (pipeline.expected_pairs(), list(range(10_000, 10_000 + pipeline.RIGHT)))


def test_inline_gate_holds_an_input_after_its_barrier_and_releases_it_in_order():
    inbox = InlineInbox("inline:t", (0, 1))
    writers = [inbox.edge(0).open_writer(), inbox.edge(1).open_writer()]
    gate = inbox.open_gate()
    writers[0].send_record(b"\x01", None)   # msgpack for 1
    writers[0].send_control(Barrier(1))
    writers[0].send_record(b"\x02", None)                           # behind the barrier: held
    writers[1].send_record(b"\x03", None)
    writers[0].flush()
    writers[1].flush()

    first = gate.read(0)   # ends right after the barrier: nothing behind it is decoded
    assert len(first) == 2 and first[0].records == [1] and first[1].signal == Barrier(1)
    gate.hold(0)
    second = gate.read(0)
    assert [b.records for b in second] == [[3]], "input 0 is held: only input 1's record is read"
    writers[0].send_record(b"\x04", None)
    writers[0].flush()
    assert gate.read(0) == []
    gate.release_all()
    third = gate.read(0)
    assert [(b.records, b.input_index) for b in third] == [([2], 0), ([4], 0)], "held frames come back in order"


class _LockedJoin(JoinFunction):
    """Keeps a lock among its attributes: no checkpoint can pickle them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def execute(self, payload: int, key: int, tag: int) -> list:
        return []


def test_a_join_whose_state_cannot_be_pickled_fails_the_checkpoint_naming_it(env_dir, tmp_path):
    env = LocalEnvironment("locked", env_dir=env_dir, checkpoint_dir=str(tmp_path / "ckpt"), executor="inline",
                           config={"checkpoint_interval": 0.001})
    numbers = env.from_batch(range(20_000), name="numbers")
    numbers.connect(numbers.map(abs, name="same")).keyby(abs).join(_LockedJoin, name="locked").collect()
    with pytest.raises(JobFailedError, match=r"task locked_0 .* state of _LockedJoin cannot be pickled") as failure:
        env.submit()
    assert "the attributes of _LockedJoin" in str(failure.value) and "snapshot_state()" in str(failure.value)
