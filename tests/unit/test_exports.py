"""The public names are a contract (DESIGN §1): adding one is a decision, removing one breaks users.
This test pins them; change it on purpose, together with the README."""

from __future__ import annotations

import procflow

PUBLIC = {
    "BaseFunction", "BaseService", "BatchFunction", "CoMapFunction", "CollectResult", "ConnectedStreams",
    "DataStream", "FilterFunction", "FlatMapFunction", "InputFormatError", "JobFailedError", "JoinFunction",
    "KeyByFunction", "LocalEnvironment", "MapFunction", "OutputExistsError", "Partitioner", "ProcflowError",
    "RayEnvironment", "ReduceFunction", "ServiceError", "ServiceTimeoutError", "SinkFunction", "SourceFunction",
    "Split", "SplitSource", "StopSignal", "TaskFactory", "UnknownServiceError", "__version__",
}


def test_all_is_exactly_the_public_contract():
    assert set(procflow.__all__) == PUBLIC
    assert len(procflow.__all__) == len(PUBLIC), "a name is listed twice in __all__"


def test_every_public_name_is_importable():
    missing = [name for name in procflow.__all__ if not hasattr(procflow, name)]
    assert missing == []


def test_the_user_contract_lives_in_core():
    """Function classes, StopSignal, errors and services come from the bottom layer (issue 17)."""
    for name in ("MapFunction", "SinkFunction", "SplitSource", "StopSignal", "JobFailedError", "BaseService",
                 "ProcflowError"):
        assert getattr(procflow, name).__module__.startswith("procflow.core."), name
