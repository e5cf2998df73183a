"""A task's start-up, judged without starting processes: who the driver is (lifeline), what the driver
says about a dead task, what a failure report carries, and the main-module guard checks for spawn."""

from __future__ import annotations

import ast
import os
import pickle
import signal
import sys
import textwrap

import pytest

from procflow.core.errors import describe_exit
from procflow.runtime.control import ErrorReport
from procflow.runtime.task import main_guard
from procflow.runtime.task.lifeline import DriverLifeline, process_start_ticks


def test_the_driver_is_known_by_pid_and_start_time_and_travels_to_a_spawned_child():
    me = DriverLifeline.of_this_process()
    assert me.pid == os.getpid()
    assert isinstance(me.start_ticks, int) and me.start_ticks == process_start_ticks(os.getpid())
    # The parent started earlier (or in the same tick) than this process: ticks order processes.
    assert process_start_ticks(os.getppid()) <= me.start_ticks
    assert pickle.loads(pickle.dumps(me)) == me


def test_a_process_that_does_not_exist_has_no_start_time():
    assert process_start_ticks(0) is None          # pid 0 is never a process in /proc


def test_sigkill_is_described_without_guessing_who_sent_it():
    # Issue 22.8: a task killed by a death signal armed by an ended thread was blamed on the OOM killer.
    text = describe_exit(-signal.SIGKILL)
    assert text.startswith("was killed by SIGKILL")
    assert "cannot tell" in text and "often means" not in text
    for cause in ("OOM killer", "kill -9", "container"):
        assert cause in text


def test_an_exception_whose_str_raises_still_makes_a_report():
    class Unprintable(Exception):
        def __str__(self):
            raise ValueError("no")

    try:
        raise Unprintable()
    except Unprintable as exc:
        report = ErrorReport.from_exception(exc, task="map_0", pid=1, function="f")
    assert report.error_type == "Unprintable" and "str() of the Unprintable raised ValueError" in report.message
    assert "Unprintable" in report.traceback


SCRIPT = textwrap.dedent('''\
    import procflow
    env = procflow.LocalEnvironment()                       # 2
    env.submit()                                            # 3: unguarded
    if __name__ == "__main__":
        env.submit()                                        # 5
    if True:
        if "__main__" == __name__:
            env.submit()                                    # 8: guarded, nested, reversed
    def main():
        env.submit()                                        # 10
    try:
        main()                                              # 12: unguarded, in a try
    except KeyboardInterrupt:
        pass
    if __name__ != "__main__":
        pass
    elif True:
        main()                                              # 18: in the guard's elif
    ''')


@pytest.mark.parametrize("line, guarded", [(3, False), (5, True), (8, True), (10, False), (12, False),
                                           (18, True)])
def test_the_guard_is_found_around_the_submitting_line(line, guarded):
    assert main_guard._under_name_test(ast.parse(SCRIPT).body, line) is guarded


def test_fork_needs_no_guard():
    main_guard.check_main_guard("fork")   # returns whatever the main module does


def name_error(name: str) -> ErrorReport:
    return ErrorReport("map_0", 1, "f", "0", "NameError", f"name {name!r} is not defined", "")


def test_a_name_error_under_spawn_names_the_guard_when_the_main_module_has_the_name(monkeypatch):
    monkeypatch.setattr(sys.modules["__main__"], "FACTOR_ONLY_UNDER_GUARD", 2, raising=False)
    hint = main_guard.name_error_hint(name_error("FACTOR_ONLY_UNDER_GUARD"), "spawn")
    assert main_guard.GUARD in hint and "'FACTOR_ONLY_UNDER_GUARD' is defined only there" in hint
    assert main_guard.name_error_hint(name_error("FACTOR_ONLY_UNDER_GUARD"), "forkserver")
    # fork copies the driver, guard block included: a NameError there has another cause.
    assert main_guard.name_error_hint(name_error("FACTOR_ONLY_UNDER_GUARD"), "fork") == ""


def test_a_name_error_for_a_name_the_main_module_lacks_gets_no_guess():
    assert main_guard.name_error_hint(name_error("never_defined_anywhere_xyz"), "spawn") == ""
