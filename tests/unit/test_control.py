"""Control messages keep their meaning across the control pipe (the C pickler, or dill for what only it
can pack)."""

from __future__ import annotations

import pickle

from multiprocess.reduction import ForkingPickler

from procflow.backends.local.process_factory import ControlWriter, ProcessFactory
from procflow.runtime.control import DeadLetter, Ready, Results, _results_from_pickle


def through_the_pipe(msg):
    return pickle.loads(ForkingPickler.dumps(msg))


def test_results_travel_as_one_c_pickled_blob():
    msg = Results("collect", list(range(5000)) + [{"a": (1, 2)}, None])
    reduced = msg.__reduce__()
    assert reduced[0] is _results_from_pickle and isinstance(reduced[1][1], bytes)
    assert through_the_pipe(msg) == msg


def test_results_only_dill_can_carry_still_arrive():
    msg = Results("collect", [lambda x: x + 1])
    assert msg.__reduce__()[0] is Results           # the C pickler refused: dill's turn
    got = through_the_pipe(msg)
    assert got.task == "collect" and got.records[0](1) == 2


class RecordingConnection:
    """Stands in for a pipe's write end: records which way each message left."""

    def __init__(self) -> None:
        self.sent: list = []

    def send(self, message):
        self.sent.append(("dill", message))

    def send_bytes(self, data):
        self.sent.append(("bytes", data))


def test_control_messages_leave_through_the_c_pickler_and_dill_only_for_what_it_alone_packs():
    connection = RecordingConnection()
    writer = ControlWriter(connection)
    writer.send(Ready("map_0", 42))
    entries = [{"record": lambda x: x}]        # a record only dill can pickle
    writer.send(DeadLetter("map_0", entries))
    (way1, data), (way2, message) = connection.sent
    assert way1 == "bytes" and pickle.loads(data) == Ready("map_0", 42)
    assert way2 == "dill" and message.entries is entries


def test_what_the_task_sends_the_driver_receives_either_way():
    reader, writer = ProcessFactory().control_pipe()
    try:
        writer.send(Ready("map_0", 42))
        writer.send(DeadLetter("map_0", [{"record": lambda x: x + 1}]))
        assert reader.recv() == Ready("map_0", 42)
        assert reader.recv().entries[0]["record"](1) == 2
    finally:
        writer.close()
        reader.close()
