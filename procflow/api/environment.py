"""Environments: where a pipeline is built, and the backend-neutral half of running it.

`BaseEnvironment` knows the graph and the configuration, and runs a job through the one Dispatcher
(procflow.runtime.dispatcher); a subclass (LocalEnvironment, RayEnvironment, in this package) only
chooses the Backend that runs the tasks, by implementing `_backend()`.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar, overload

from procflow.api.datastream import CollectResult, DataStream
from procflow.api.file_sources import FileSources
from procflow.core import functions as fx
from procflow.core.config import Config
from procflow.core.enums import OperatorKind
from procflow.core.service import BaseService, ServiceSpec, services_called
from procflow.graph.execution_graph import ExecutionGraph, compile_graph
from procflow.graph.transformation import FunctionSpec, Input, Transformation, check_parallelism
from procflow.io.sequence import SequenceSource, is_splittable
from procflow.runtime.backend import Backend
from procflow.runtime.dispatcher import Dispatcher
from procflow.runtime.job import Job
from procflow.runtime.private_files import default_log_dir

# Every key with its default (a copy: the defaults themselves are stated once, in procflow.core.config.Config).
DEFAULT_CONFIG: dict[str, Any] = Config().as_dict()
_OPTION_NAMES = ("parallelism", "name", "on_error")
INTERRUPT_GRACE = 1.0  # seconds a Ctrl-C'd job may drain before its tasks are killed
_ON_ERROR = ("fail", "skip", "dead_letter")
T = TypeVar("T")
_Env = TypeVar("_Env", bound="BaseEnvironment")   # `with LocalEnvironment() as env` keeps env's class

# Signals that stop a running job the way Ctrl-C does (while stop_signals_interrupt() is in force). SIGHUP
# is what a closing terminal, or a killed `script`/tmux around `procflow run`, sends: left at its default
# action it ended the driver at once and left the job's segments in /dev/shm (issue 23.5).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
INTERRUPTING_SIGNALS = (signal.SIGINT, *STOP_SIGNALS)


class BaseEnvironment(FileSources):
    """Builds a pipeline. Use as a context manager so that `close()` always runs."""

    backend = "base"
    # True where _launch starts the job and returns within moments (the local process executor): only
    # there may interrupts wait for env.job (_interrupts_deferred). Ray's start can take many seconds, and
    # the inline executor runs the whole job inside _launch.
    _defers_interrupts_while_starting = False

    def __init__(self, name: str = "procflow", config: dict[str, Any] | None = None, *,
                 env_dir: str | os.PathLike[str] | None = None, start_method: str = "fork") -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("environment name must be a non-empty string")
        settings = Config.from_mapping(config)   # unknown keys and bad values fail here, before any process
        if start_method not in ("fork", "spawn", "forkserver"):
            raise ValueError(f"start_method must be 'fork', 'spawn' or 'forkserver', got {start_method!r}")
        self.name = name
        self.config = settings.as_dict()
        # The default is private to this user (issue 22: a shared $TMPDIR/procflow-logs let another
        # user redirect a root job's log writes, and locked other users out once one of them owned it).
        self.env_dir = os.fspath(env_dir) if env_dir is not None else default_log_dir(name)
        self.start_method = start_method
        self._transformations: list[Transformation] = []
        self._names: set[str] = set()
        self._collectors: dict[str, CollectResult[Any]] = {}
        self.services: dict[str, ServiceSpec] = {}
        self.job: Any = None
        self._resume = False

    # -- building --------------------------------------------------------------------------------

    # Typed for editors: an iterable of T gives a DataStream[T]; a BatchFunction[T] class or instance too.
    @overload
    def from_batch(self, source: type[fx.BatchFunction[T]] | fx.BatchFunction[T], *args: Any,
                   **kwargs: Any) -> DataStream[T]: ...
    @overload
    def from_batch(self, source: Iterable[T], *args: Any, **kwargs: Any) -> DataStream[T]: ...

    def from_batch(self, source: Any, *args: Any, **kwargs: Any) -> DataStream[Any]:
        """A bounded source: any iterable, or a BatchFunction subclass (extra args go to its constructor);
        a SplitSource (procflow.core.splits) is read by its splits.

        A list, tuple, range or numpy array (a memmap too) is split by index ranges (io/sequence.py): with
        parallelism n, the n instances take ranges on request, a few per instance, each reading them from
        its own copy of the input (inherited at fork; under spawn a numpy array goes through shared memory
        once). Records keep their order within a range, and with parallelism 1 overall.

        A generator or another plain iterable cannot be split: with parallelism n, instance i takes items
        i, i+n, ... and every instance walks the whole iterable. Give a list (or a SplitSource) to read a
        large input in parallel.
        """
        if inspect.isclass(source) or isinstance(source, fx.BaseFunction):
            t = self._add(OperatorKind.BATCH, fx.BatchFunction, source, args, kwargs, inputs=[])
        elif is_splittable(source):
            if args:
                raise TypeError("from_batch(sequence) takes no extra positional arguments")
            t = self._add(OperatorKind.BATCH, fx.BatchFunction, SequenceSource, (source,), kwargs, inputs=[])
        elif isinstance(source, Iterable) and not isinstance(source, (str, bytes, dict)):
            if args:
                raise TypeError("from_batch(iterable) takes no extra positional arguments")
            t = self._add(OperatorKind.BATCH, fx.BatchFunction, fx.IterableBatch, (source,), kwargs, inputs=[])
        else:
            raise TypeError(f"from_batch() needs an iterable (list, range, generator...) or a "
                            f"BatchFunction subclass, got {type(source).__name__}")
        return DataStream(self, t)

    def from_source(self, source: Any, *args: Any, **kwargs: Any) -> DataStream[Any]:
        """An unbounded source: a SourceFunction subclass or a callable returning record/None/StopSignal."""
        return DataStream(self, self._add(OperatorKind.SOURCE, fx.SourceFunction, source, args, kwargs, inputs=[]))

    def register_service(self, name: str, service_class: type[BaseService], *args: Any,
                         parallelism: int = 1, **kwargs: Any) -> None:
        """Run `service_class(*args, **kwargs)` in its own process(es); functions reach it by name."""
        if not isinstance(name, str) or not name:
            raise ValueError("service name must be a non-empty string")
        if name in self.services:
            raise ValueError(f"a service named {name!r} is already registered")
        if not (inspect.isclass(service_class) and issubclass(service_class, BaseService)):
            raise TypeError(f"register_service({name!r}, ...) needs a BaseService subclass, got {service_class!r}")
        check_parallelism(parallelism, f"service {name!r}")
        self.services[name] = ServiceSpec(name, service_class, tuple(args), dict(kwargs), parallelism)

    def _add(self, kind: OperatorKind, base: type, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *,
             inputs: list[Input]) -> Transformation:
        if self.job is not None and getattr(self.job, "running", False):
            raise RuntimeError("cannot add operators while a job is running")
        opts = {k: kwargs.pop(k) for k in _OPTION_NAMES if k in kwargs}
        extra = kwargs.pop("_options", {})
        name = opts.get("name") or self._unique(kind.value)
        if name in self._names:
            raise ValueError(f"an operator named {name!r} already exists; names must be unique")
        self._names.add(name)
        where = f"{kind}({getattr(fn, '__qualname__', type(fn).__name__)}) [{name}]"
        parallelism = check_parallelism(opts.get("parallelism", 1), where)
        on_error = opts.get("on_error", "fail")
        if on_error not in _ON_ERROR:
            raise ValueError(f"{where}: on_error must be one of {_ON_ERROR}, got {on_error!r}")
        spec = FunctionSpec.of(base, fn, args, kwargs, where=where)
        t = Transformation(kind, name, spec, parallelism, list(inputs), {"on_error": on_error, **extra},
                           parallelism_set="parallelism" in opts)
        self._transformations.append(t)
        return t

    def _unique(self, kind: str) -> str:
        if kind not in self._names:
            return kind
        n = 2
        while f"{kind}{n}" in self._names:
            n += 1
        return f"{kind}{n}"

    @property
    def operator_names(self) -> list[str]:
        """The operators added so far, in order (the names `set_parallelism` and the metrics use)."""
        return [t.name for t in self._transformations]

    def set_parallelism(self, operator: str, parallelism: int) -> None:
        """Change an operator's parallelism after the pipeline is built (`procflow run --parallelism`)."""
        for t in self._transformations:
            if t.name == operator:
                t.parallelism = check_parallelism(parallelism, f"operator {operator!r}")
                t.parallelism_set = True
                return
        raise ValueError(f"no operator named {operator!r}; the pipeline has {self.operator_names}")

    def compile(self) -> ExecutionGraph:
        """The execution graph the next submit() will run (for tools, tests and `procflow graph`)."""
        return compile_graph(self._transformations, chaining=self.config["chaining"])

    # -- running ----------------------------------------------------------------------------------

    # Where checkpoints go (LocalEnvironment / RayEnvironment(checkpoint_dir=...)); None: the job takes none.
    checkpoint_dir: str | None = None

    def submit(self, autostop: bool = True, *, rerun: bool = False, resume: bool = False) -> Any:
        """Run the pipeline. autostop=True blocks until every task has drained and returns the finished
        job (raising JobFailedError on failure); autostop=False returns the running job at once.

        An environment runs its pipeline once; rerun=True runs it again after a job has ended, with every
        collect() handle emptied first. Without it, a second submit() raises: it used to rerun silently,
        so a line repeated in a script or a notebook cell run twice replaced the first results (issue 23).

        resume=True (with a checkpoint_dir) continues a job that did not finish (killed, crashed, stopped)
        from its latest complete checkpoint: splits already read are skipped, operator state is restored,
        file sinks keep the parts of that checkpoint and drop the rest. Without a checkpoint yet, the job
        starts from the beginning. The pipeline must be the same (operators, parallelism, functions).
        """
        self._resume = resume
        if self.job is not None and self.job.running:
            raise RuntimeError("a job of this environment is still running; call env.stop() first")
        if self.job is not None and not rerun:
            raise RuntimeError(
                f"environment {self.name!r} already ran job {self.job.job_id} (status {self.job.status}); "
                "submitting again would run the whole pipeline again and replace the records its collect() "
                "handles hold. To run it again on purpose, call env.submit(rerun=True) (copy "
                "result.results() first to keep the old records); to run another pipeline, build it in a "
                "new environment.")
        graph = self.compile()
        self._check_services()
        for collector in self._collectors.values():
            collector._records.clear()
        if not autostop:
            with _interrupts_deferred(self._defers_interrupts_while_starting):
                self.job = self._launch(graph)
            return self.job
        # While submit() blocks, SIGTERM and SIGHUP mean what Ctrl-C means: stop the job, free everything,
        # and raise KeyboardInterrupt (a script then exits with 130).
        with stop_signals_interrupt():
            try:
                with _interrupts_deferred(self._defers_interrupts_while_starting):
                    self.job = self._launch(graph)
                self.job.wait()
            except KeyboardInterrupt:
                if self.job is not None and self.job.running:
                    self._interrupted()
                raise
        return self.job

    def _check_services(self) -> None:
        """Reject, before any process starts, a function or service that calls an unregistered service."""
        users = [(f"operator {t.name!r} ({t.function.label})", t.function.target) for t in self._transformations]
        users += [(f"service {s.name!r} ({s.service_class.__qualname__})", s.service_class)
                  for s in self.services.values()]
        for where, target in users:
            missing = sorted(services_called(target) - set(self.services))
            if missing:
                raise ValueError(
                    f"{where} calls service(s) {missing}, which are not registered; registered services: "
                    f"{sorted(self.services)}. Register them with env.register_service(name, ServiceClass) "
                    "before submit().")

    def _interrupted(self) -> None:
        """Ctrl-C: ask for a graceful stop (sources end, sinks close), but never wait long for it; a second
        Ctrl-C, or a drain longer than INTERRUPT_GRACE seconds, kills every task at once."""
        try:
            self.job.stop(INTERRUPT_GRACE)
        except KeyboardInterrupt:
            self.job.kill("interrupted twice")

    def _backend(self) -> Backend:
        raise NotImplementedError(f"{type(self).__name__} cannot run pipelines; use LocalEnvironment")

    def _launch(self, graph: ExecutionGraph) -> Job:
        """Prepare and start the job on this environment's backend (inline: run it to its end)."""
        dispatcher = Dispatcher(graph, config=self.config, env_dir=self.env_dir, backend=self._backend(),
                                collectors=self._collectors, services=self.services,
                                checkpoint_dir=self.checkpoint_dir, resume=self._resume)
        dispatcher.prepare_or_clean_up()
        dispatcher.start()
        return Job(dispatcher)

    def stop(self, timeout: float | None = None) -> None:
        """Ask the running job to stop: sources end, everything in flight drains, then tasks exit."""
        if self.job is not None:
            self.job.stop(timeout)

    def close(self) -> None:
        """Stop any running job and free every process and segment. Idempotent."""
        if self.job is not None:
            self.job.close()

    def __enter__(self: _Env) -> _Env:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is not None and self.job is not None:
            self.job.kill("the with-block raised")
        self.close()


@contextlib.contextmanager
def _interrupts_deferred(defer: bool) -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP wait while a job starts, and arrive once `env.job` is set.

    Starting forks the tasks and starts the monitor thread, which releases the sources as soon as
    every task is ready, possibly before the driver's Thread.start() returns. An interrupt raised in
    that window ended a job whose records were already flowing, and left `env.job` unset, so the
    caller could not see what it had stopped. Deferred, it lands on a running job, which submit()
    stops like any other. Starting takes milliseconds with fork, a few seconds at most with spawn.

    The signals are noted by a handler of ours rather than blocked: a blocked signal goes to any
    thread that does not block it (a user's, a test runner's), whose handler call then raises in the
    main thread all the same. Handlers can only change in the main thread, which is also the only
    thread KeyboardInterrupt is raised in; a user's own handlers are left alone.
    """
    if not defer or threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    replaced = {}
    for signum in INTERRUPTING_SIGNALS:
        handler = signal.getsignal(signum)
        if handler is signal.default_int_handler or handler is _raise_interrupt:
            replaced[signum] = handler
            signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in replaced.items():
            signal.signal(signum, handler)
    if received:
        raise KeyboardInterrupt(f"{signal.Signals(received[0]).name} received")


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """While inside: SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread, like Ctrl-C, so that
    the code handling Ctrl-C stops the job and frees its processes and segments. The previous handlers
    come back after.

    Left alone: another thread (handlers can only change in the main thread) and a signal deliberately
    ignored (`nohup` ignores SIGHUP so that the job outlives the terminal).
    """
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            handler = signal.getsignal(signum)
            if handler is not signal.SIG_IGN and handler is not None:
                previous[signum] = handler
                signal.signal(signum, _raise_interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
