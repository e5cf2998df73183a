"""procflow: multiprocess dataflow pipelines over shared-memory rings, with a Ray backend.

Layout (the folders draw the architecture):
    api/        what users touch: environments, DataStream, function and service base classes
    graph/      transformations -> ExecutionGraph; pure data, starts nothing
    runtime/    the task loop, operators, channels, dispatcher and job manager
    backends/   local (one process per task) and ray (one actor per task)
This module only re-exports the public names.
"""

from procflow.api.datastream import CollectResult, ConnectedStreams, DataStream
from procflow.api.functions import (
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
from procflow.api.service import BaseService
from procflow.api.signals import StopSignal
from procflow.backends.local.environment import LocalEnvironment
from procflow.backends.ray.environment import RayEnvironment
from procflow.errors import (
                                    JobFailedError,
                                    ProcflowError,
                                    ServiceError,
                                    ServiceTimeoutError,
                                    UnknownServiceError,
)
from procflow.graph.transformation import Partitioner
from procflow.runtime.task.factory import TaskFactory

__version__ = "0.1.0"

__all__ = [
    "BaseFunction", "BaseService", "BatchFunction", "CoMapFunction", "CollectResult", "ConnectedStreams",
    "DataStream", "FilterFunction", "FlatMapFunction", "JobFailedError", "JoinFunction", "KeyByFunction",
    "LocalEnvironment", "MapFunction", "Partitioner", "ProcflowError", "RayEnvironment", "ReduceFunction",
    "ServiceError", "ServiceTimeoutError", "SinkFunction", "SourceFunction", "StopSignal",
    "TaskFactory", "UnknownServiceError", "__version__",
]
