"""procflow: multiprocess dataflow pipelines over shared-memory rings, with a Ray backend.

Layout (the folders draw the architecture; each imports only those listed above it, tests/unit/test_layers.py):
    core/       the user contract: function and service base classes, StopSignal, errors, Config
    io/         file connectors: split sources over files, sinks that commit their parts atomically
    graph/      transformations -> ExecutionGraph; pure data, starts nothing
    runtime/    the task loop, operators, channels, dispatcher and job manager
    backends/   local (one process per task), inline (all in the driver) and ray (one actor per task)
    api/        what users touch: environments and DataStream
This module only re-exports the public names, each imported on first use (PEP 562): a Ray worker or a
spawned task that unpickles one runtime class then imports the runtime alone, not the whole API (the
driver's environments, DataStream, dispatcher, file sinks), which cost each Ray task actor 0.3-0.7 s of
its start on a 2-core machine (issue 24).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:   # the names as the type checker and IDEs see them; at run time __getattr__ imports them
    from procflow.api.datastream import CollectResult, ConnectedStreams, DataStream
    from procflow.api.local_environment import LocalEnvironment
    from procflow.api.ray_environment import RayEnvironment
    from procflow.core.errors import (
                                        InputFormatError,
                                        JobFailedError,
                                        OutputExistsError,
                                        ProcflowError,
                                        ServiceError,
                                        ServiceTimeoutError,
                                        UnknownServiceError,
    )
    from procflow.core.functions import (
                                        BaseFunction,
                                        BatchFunction,
                                        CoMapFunction,
                                        FilterFunction,
                                        FlatMapFunction,
                                        JoinFunction,
                                        KeyByFunction,
                                        MapFunction,
                                        ReduceFunction,
                                        SinkFunction,
                                        SourceFunction,
    )
    from procflow.core.service import BaseService
    from procflow.core.signals import StopSignal
    from procflow.core.splits import Split, SplitSource
    from procflow.graph.transformation import Partitioner
    from procflow.runtime.task.factory import TaskFactory

__version__ = "0.1.0"

# public name -> the module that defines it
_HOMES = {
    **dict.fromkeys(("CollectResult", "ConnectedStreams", "DataStream"), "procflow.api.datastream"),
    "LocalEnvironment": "procflow.api.local_environment",
    "RayEnvironment": "procflow.api.ray_environment",
    **dict.fromkeys(("InputFormatError", "JobFailedError", "OutputExistsError", "ProcflowError", "ServiceError",
                     "ServiceTimeoutError", "UnknownServiceError"), "procflow.core.errors"),
    **dict.fromkeys(("BaseFunction", "BatchFunction", "CoMapFunction", "FilterFunction", "FlatMapFunction",
                     "JoinFunction", "KeyByFunction", "MapFunction", "ReduceFunction", "SinkFunction",
                     "SourceFunction"), "procflow.core.functions"),
    "BaseService": "procflow.core.service",
    "StopSignal": "procflow.core.signals",
    **dict.fromkeys(("Split", "SplitSource"), "procflow.core.splits"),
    "Partitioner": "procflow.graph.transformation",
    "TaskFactory": "procflow.runtime.task.factory",
}

__all__ = [
    "BaseFunction", "BaseService", "BatchFunction", "CoMapFunction", "CollectResult", "ConnectedStreams",
    "DataStream", "FilterFunction", "FlatMapFunction", "InputFormatError", "JobFailedError", "JoinFunction",
    "KeyByFunction", "LocalEnvironment", "MapFunction", "OutputExistsError", "Partitioner", "ProcflowError",
    "RayEnvironment", "ReduceFunction", "ServiceError", "ServiceTimeoutError", "SinkFunction", "SourceFunction",
    "Split", "SplitSource", "StopSignal", "TaskFactory", "UnknownServiceError", "__version__",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'procflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value   # imported once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(__all__) | {name for name in globals() if name.startswith("__")})
