"""procflow: multiprocess dataflow pipelines over shared-memory rings, with a Ray backend.

Layout (the folders draw the architecture; each imports only those listed above it, tests/unit/test_layers.py):
    core/       the user contract: function and service base classes, StopSignal, errors, Config
    io/         file connectors: split sources over files, sinks that commit their parts atomically
    graph/      transformations -> ExecutionGraph; pure data, starts nothing
    runtime/    the task loop, operators, channels, dispatcher and job manager
    backends/   local (one process per task), inline (all in the driver) and ray (one actor per task)
    api/        what users touch: environments and DataStream
This module only re-exports the public names.
"""

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

__all__ = [
    "BaseFunction", "BaseService", "BatchFunction", "CoMapFunction", "CollectResult", "ConnectedStreams",
    "DataStream", "FilterFunction", "FlatMapFunction", "InputFormatError", "JobFailedError", "JoinFunction",
    "KeyByFunction", "LocalEnvironment", "MapFunction", "OutputExistsError", "Partitioner", "ProcflowError",
    "RayEnvironment", "ReduceFunction", "ServiceError", "ServiceTimeoutError", "SinkFunction", "SourceFunction",
    "Split", "SplitSource", "StopSignal", "TaskFactory", "UnknownServiceError", "__version__",
]
