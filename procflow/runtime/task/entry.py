"""What a freshly started task process runs: become a well-behaved child, run the task, report, exit."""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from procflow.runtime.allocator import keep_freed_memory
from procflow.runtime.communication.queue_descriptor import shm_queue
from procflow.runtime.context.task_context import TaskContext
from procflow.runtime.control import ErrorReport, Failed
from procflow.runtime.private_files import PrivateFileHandler, open_private_text
from procflow.runtime.task.base_task import BaseTask
from procflow.runtime.task.lifeline import DriverLifeline, hold

# BaseTask is imported here, in the driver, not in task_main: a forked task then starts with the task
# loop and its operators already loaded (importing them in each child took 5-35 ms of a 2-core machine
# per task, most of a short job's start-up).

_LOG_FORMAT = "%(asctime)s %(levelname)-7s [%(name)s pid=%(process)d] %(message)s"


# Signals the driver blocks while it starts tasks (see Dispatcher.start), so that a Ctrl-C during
# start-up cannot hit a child before it has decided how to handle it.
STARTUP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def crash_log_name(task: str) -> str:
    """The file, in the job folder, where faulthandler writes the Python stack of a task that dies of a
    fatal signal (issue 5)."""
    return f"{task}_crash.log"


def crash_log_path(log_dir: str, task: str) -> str:
    return os.path.join(log_dir, crash_log_name(task))


# Whether the driver's garbage collector was on when it forked its children; None in a process that no
# procflow driver forked (a spawned child re-imports this module and gets None).
_driver_gc_enabled: bool | None = None
# Jobs submitted from several driver threads fork one at a time, each seeing the driver's real gc state.
_fork_lock = threading.Lock()


@contextlib.contextmanager
def gc_paused_for_fork() -> Iterator[None]:
    """The driver's objects must never be collected, and so finalised, in a child.

    A Ray ObjectRef or actor handle the driver had dropped, collected in a forked task, spoke to the Ray
    cluster over the driver's own connections and left the driver's next Ray call hanging for 60 s. So
    collection stays off while the driver forks, and each child freezes everything it inherited
    (`_keep_inherited_objects`) before collecting again. The driver's own gc state, a gc.freeze() of
    the user's included, is left as it was.
    """
    global _driver_gc_enabled
    with _fork_lock:
        _driver_gc_enabled = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            if _driver_gc_enabled:
                gc.enable()
            _driver_gc_enabled = None


def _keep_inherited_objects() -> None:
    """In a forked child: what the driver held goes to the permanent generation, which no collection
    visits (so it also costs no copy-on-write faults), then gc runs as it did in the driver."""
    if _driver_gc_enabled is None:
        return
    gc.freeze()
    if _driver_gc_enabled:
        gc.enable()


def become_child(driver: DriverLifeline) -> None:
    """Ctrl-C and a closed terminal go to the driver, which stops the job; a child must never outlive
    its driver (see lifeline.py).

    SIGINT and SIGHUP reach the whole foreground process group (a terminal's Ctrl-C, a shell hanging up
    its jobs): only the driver acts on them, and a child that died of SIGHUP first would turn the
    driver's graceful stop into a failed job. SIGTERM is the driver's "terminate now" at cleanup: under
    fork a child inherits the driver's Python handler (submit() installs one while a job runs), so it is
    reset to the default action here.
    """
    _keep_inherited_objects()
    keep_freed_memory()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STARTUP_SIGNALS)
    hold(driver)


def open_task_logger(name: str, log_dir: str, level: str) -> logging.Logger:
    """`<name>_info.log` at the configured level and `<name>_debug.log` with everything.

    Private files (0600) in the checked job folder (see procflow.runtime.private_files; issue 22). They are
    appended to, not created exclusively: every replica of a service logs to its service's files. The
    folder is made here if missing: a Ray actor on another node is the first to use it there.
    """
    logger = logging.getLogger(f"procflow.task.{name}")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    formatter = logging.Formatter(_LOG_FORMAT)
    for suffix, lvl in (("info", level), ("debug", "DEBUG")):
        handler = PrivateFileHandler(log_dir, f"{name}_{suffix}.log", create_dir=True)
        handler.setLevel(lvl)
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


def close_logger(logger: logging.Logger | None) -> None:
    if logger is None:
        return
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def end_child(logger: logging.Logger | None, control: Any, code: int) -> None:
    """The last steps of every task and service process: close the logs and the control pipe, flush, and
    leave with os._exit so that nothing inherited from the driver (atexit hooks, pytest) runs here."""
    close_logger(logger)
    try:
        control.close()
    except Exception:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:   # a closed terminal (EIO) or a replaced stream: nothing left to tell
            pass
    os._exit(code)


def build_task(ctx: TaskContext, function: Any, chained: tuple = ()) -> BaseTask:
    """The BaseTask of one task, with the members of its chain (`chained`: TaskStart-like objects with
    `ctx` and `function`, in chain order) fused behind it (chain.py)."""
    task = BaseTask(ctx, function)
    task.chain_with([BaseTask(member.ctx, member.function) for member in chained])
    return task


def task_main(ctx: TaskContext, function: Any, chained: tuple, driver: DriverLifeline) -> None:
    """The whole life of a task process (and of the chain it runs: `chained`, see build_task).

    Every exception, the task's own set-up included (log files, crash log, building its operator),
    reaches the driver as a Failed that names the task (issue 22.11): one raised outside `task.run()`
    used to leave through multiprocessing's bootstrap, and the driver could only say "exited with code 1
    without reporting an error", blaming user code.
    """
    logger: logging.Logger | None = None
    task: BaseTask | None = None
    crash_file = None
    crash_path = crash_log_path(ctx.log_dir, ctx.name)
    step = "arranging to end with the driver"
    code = 0
    try:
        become_child(driver)
        step = "setting up its log files"
        ctx.logger = logger = open_task_logger(ctx.name, ctx.log_dir, ctx.config["log_level"])
        # A segfault or abort in native code gives no Python exception to report; faulthandler leaves
        # the stack in a file that the driver attaches to its error (the child's stderr may be anywhere).
        step = "opening its crash log"
        # A new file only (O_EXCL, no symlink followed): issue 22's attacker planted `<task>_crash.log`
        # symlinks, which mode "w" followed and truncated a root-only file. It stays open until the end.
        crash_file = open_private_text(ctx.log_dir, crash_log_name(ctx.name), exclusive=True)
        faulthandler.enable(crash_file, all_threads=False)
        for member in chained:   # each operator of the chain keeps its own log files
            member.ctx.logger = open_task_logger(member.ctx.name, member.ctx.log_dir, ctx.config["log_level"])
        step = "building its operator"
        task = build_task(ctx, function, chained)
        task.run()
    except BaseException as exc:  # report everything, SystemExit from user code included
        code = 1
        report_chain_failure(ctx, function, task, step, exc, logger)
    finally:
        if crash_file is not None:
            faulthandler.disable()
            crash_file.close()
            try:
                os.unlink(crash_path)
            except OSError:
                pass
        try:
            for member in chained:
                member.ctx.detach()
                close_logger(member.ctx.logger)
            ctx.detach()
            shm_queue.detach_all()
        except Exception:
            # Exiting unmaps everything anyway; the outcome was already reported (Stopped or Failed).
            if logger is not None:
                logger.exception("could not detach from the job's shared memory")
    end_child(logger, ctx.control, code)


def report_chain_failure(ctx: TaskContext, function: Any, task: BaseTask | None, step: str, exc: BaseException,
                         logger: logging.Logger | None) -> None:
    """report_failure for the operator of the chain that raised (the head when it runs alone); the other
    operators publish their counters and ship their dead letters too."""
    if task is None:
        report_failure(ctx, function, task, step, exc, logger)
        return
    culprit = task.failing_task()
    for other in task.chain_tasks():
        if other is not culprit:
            try:
                other._publish()
                other._flush_dead_letters()
            except Exception:   # not attached yet, or the control pipe broke: the report still goes
                pass
    report_failure(culprit.ctx, culprit.operator.function, culprit, step,  exc,
                   logger if culprit is task else culprit.ctx.logger)


def report_failure(ctx: TaskContext, function: Any, task: BaseTask | None, step: str, exc: BaseException,
                    logger: logging.Logger | None) -> None:
    """Tell the driver what failed, where and on which record; never raises (a failure here once left the
    process unreported)."""
    label = type(function).__name__
    try:
        if task is None:
            report = ErrorReport.from_exception(exc, task=ctx.name, pid=os.getpid(), function=label,
                                                context=f"while {step}")
        else:
            label = getattr(task.operator, "label", label)
            step = task.stage
            try:
                task._publish()   # the counters up to the failing record, for the job's summary
            except (AttributeError, TypeError):  # failed before the task was attached: nothing to publish
                pass
            has_record, record = task.current_record(exc)
            # Still "starting": the channels were being attached, and no record has moved yet.
            context = "while attaching its channels" if step == "starting" else task.progress()
            report = ErrorReport.from_exception(exc, task=ctx.name, pid=os.getpid(), function=label,
                                                record=record, has_record=has_record, context=context)
    except Exception:
        # Describing the record or the progress failed too: report the error itself, without them.
        report = ErrorReport.from_exception(exc, task=ctx.name, pid=os.getpid(), function=label,
                                            context=f"while {step}")
    if logger is not None:
        logger.error("failed in %s while %s: %s: %s", label, step, report.error_type, report.message)
        logger.debug("%s", report.traceback)
        if task is not None:
            try:
                # Records that failed under on_error="dead_letter" before this failure still reach the user.
                task._flush_dead_letters()
            except Exception:
                logger.exception("could not ship the dead letters to the driver")
    try:
        ctx.control.send(Failed(report))
    except Exception:
        if logger is not None:
            logger.exception("could not report the failure to the driver")
