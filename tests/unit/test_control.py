"""Control messages keep their meaning across the control pipe (which pickles with dill)."""

from __future__ import annotations

import pickle

from multiprocess.reduction import ForkingPickler

from procflow.runtime.control import Results, _results_from_pickle


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
