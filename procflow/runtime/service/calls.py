"""What every backend's service client shares: finding the service, choosing its replica, and the errors.

The local client (client.py: shared-memory rings), the inline client (a direct call in the driver) and the
Ray client (an actor call) differ only in how a request reaches a replica and how its answer comes back.
The rest is here, once, so that a call behaves the same on every backend:

    check_call()      the service and the method exist (UnknownServiceError naming what does), the timeout
                      is a positive number of seconds
    ReplicaTurns      round robin per caller, each caller starting at its own replica (caller index), so
                      that callers that make one call each still spread over the replicas
    answer()          an answer (status, value) -> the value, or the ServiceError a caller sees: the
                      remote traceback chained as __cause__ (RemoteTraceback), `error_type` the
                      exception's name
    timeout_error()   ServiceTimeoutError naming the service, the method, the replica, the caller and
                      where the caller waited (a backend says which queue or actor)

Answer statuses: OK (value = the result), ERROR (value = (error type, message, traceback, where)),
NO_METHOD (value = the message). A replica makes them in `HostedReplica.call` (hosted.py) or the local
replica's loop (replica.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from procflow.core.errors import RemoteTraceback, ServiceError, ServiceTimeoutError, UnknownServiceError

OK, ERROR, NO_METHOD = 0, 1, 2           # statuses of an answer


@dataclass(frozen=True)
class ServiceInfo:
    name: str
    first: int            # global index of replica 0
    parallelism: int
    methods: tuple[str, ...]


def service_infos(specs: Mapping[str, Any], replicas: Mapping[str, tuple[str, int]],
                  methods: Any) -> dict[str, ServiceInfo]:
    """One ServiceInfo per service, from the manager's replica table (`<service>[<i>]` -> (service, global
    index), in global index order); `methods(service_class)` lists what callers may call."""
    infos: dict[str, ServiceInfo] = {}
    for service, index in replicas.values():
        if service not in infos:
            spec = specs[service]
            infos[service] = ServiceInfo(service, index, spec.parallelism, methods(spec.service_class))
    return infos


def check_call(services: Mapping[str, ServiceInfo], name: str, method: str, timeout: Any, caller: str,
               closed: bool) -> ServiceInfo:
    """The service a call goes to; raises what the caller got wrong, before anything is sent."""
    if closed:
        raise ServiceError(f"the service client of {caller} is closed; services can be called only while "
                           "the task runs (open, execute, close)", service=name)
    info = services.get(name)
    if info is None:
        raise UnknownServiceError(
            f"no service named {name!r}; registered services: {sorted(services)}. "
            f"Register it with env.register_service({name!r}, ServiceClass) before submit().", service=name)
    if method not in info.methods:
        raise UnknownServiceError(f"service {name!r} has no method {method!r}; its methods: {list(info.methods)}",
                                  service=name)
    if timeout is None or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return info


class ReplicaTurns:
    """Round robin over each service's replicas for one caller; `next()` is atomic under the GIL, so
    threads of one task may share it."""

    def __init__(self, services: Mapping[str, ServiceInfo], caller: int) -> None:
        self._turns: dict[str, Iterator[int]] = {name: itertools.count(caller) for name in services}

    def pick(self, info: ServiceInfo) -> int:
        """The global index of the replica that takes the next call to `info`."""
        return info.first + next(self._turns[info.name]) % info.parallelism


def answer(service: str, method: str, status: int, value: Any) -> Any:
    """The value of an answer, or raise the ServiceError it carries."""
    if status == OK:
        return value
    raise answer_error(service, method, status, value)


def answer_error(service: str, method: str, status: int, value: Any) -> ServiceError:
    if status == NO_METHOD:
        return UnknownServiceError(value, service=service)
    error_type, message, tb, where = value
    err = ServiceError(f"service {service!r} ({where}) raised {error_type} in {method}(): {message}",
                       service=service, remote_traceback=tb, error_type=error_type)
    err.__cause__ = RemoteTraceback(tb)
    return err


def timeout_error(info: ServiceInfo, method: str, replica: int, caller: str, timeout: float,
                  waited: str) -> ServiceTimeoutError:
    """`waited`: where the caller waited, in the backend's words ("the request queue ...")."""
    return ServiceTimeoutError(
        f"call to service {info.name!r} method {method!r} (replica {replica - info.first}) from {caller} got "
        f"no answer within {timeout:g}s; {waited}. The service may be busy or stuck: see its "
        f"{info.name}_debug.log, or pass a larger timeout=", service=info.name)


def abandoned_error(service: str, caller: str) -> ServiceError:
    return ServiceError(f"call to service {service!r} abandoned: {caller} closed its service client before "
                        "the answer came", service=service)
