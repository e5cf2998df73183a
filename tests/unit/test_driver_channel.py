"""DriverWriter: the edge into a collect run by the driver batches records and ships them as Results."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from procflow.core.signals import StopSignal
from procflow.runtime.communication import codec
from procflow.runtime.communication.queue_descriptor import driver
from procflow.runtime.communication.queue_descriptor.driver import DriverEdge
from procflow.runtime.control import Results


class FakeControl:
    """The task's control pipe: keeps what was sent, pickled as the real pipe would."""

    def __init__(self) -> None:
        self.sent: list = []

    def send(self, msg) -> None:
        self.sent.append(pickle.loads(pickle.dumps(msg)))


@pytest.fixture
def writer():
    w = DriverEdge("out", 0).open_writer()
    w.bind_control(FakeControl())
    return w


def shipped(w) -> list:
    assert all(isinstance(m, Results) and m.task == "out" for m in w.control.sent)
    return [m.records for m in w.control.sent]


def test_records_wait_for_a_full_batch_or_the_send_interval(writer, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(driver.time, "monotonic", lambda: clock[0])
    writer._last_send = clock[0]
    writer.send_many([1, 2])
    writer.send_object(3, None, False)
    writer.flush()                        # too soon: a message per 1 ms flush would cost the workers
    assert shipped(writer) == [] and writer.has_pending and writer.objects_sent == 3
    clock[0] += driver.SEND_INTERVAL + 0.001
    writer.flush()
    assert shipped(writer) == [[1, 2, 3]] and not writer.has_pending
    writer.send_many(list(range(driver.BATCH)))
    assert shipped(writer)[1] == list(range(driver.BATCH))


def test_end_of_input_ships_everything_left(writer):
    writer.send_many(["a", "b"])
    writer.send_control(StopSignal("end"))
    assert shipped(writer) == [["a", "b"]]


def test_encoded_records_from_a_fanning_out_task_arrive_as_records(writer):
    # A task feeding several operators encodes each record once and hands every channel the bytes.
    array = np.arange(6, dtype=np.int32).reshape(2, 3)
    writer.send_record(codec._packb({"k": [1, 2]}), None)
    parts, nbytes = codec.encode(array)
    writer.send_single(parts, nbytes)
    writer.send_control(StopSignal("end"))
    (batch,) = shipped(writer)
    assert batch[0] == {"k": [1, 2]}
    assert np.array_equal(batch[1], array) and batch[1].dtype == np.int32


def test_a_record_that_cannot_reach_the_driver_is_named(writer):
    writer.bind_control(type("Pipe", (), {"send": lambda self, msg: pickle.dumps(msg)})())
    generator = (i for i in range(3))
    writer.send_many([1, generator])
    with pytest.raises(codec.EncodeError, match="cannot be shipped to the driver for collect 'out'") as info:
        writer.send_control(StopSignal("end"))
    assert info.value.record is generator
