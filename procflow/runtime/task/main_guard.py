"""The main-module guard: what spawn and forkserver need from the user's script, checked in the driver.

Under start_method="spawn" or "forkserver" every task starts in a fresh interpreter that imports the
user's main module again (as `__mp_main__`) before it unpickles its function. Two mistakes follow, and
both used to surface as something else (issue 23.6):

    check_main_guard()    before any process starts: the main module submits the job from its top
                          level, outside `if __name__ == "__main__":`. Each task would run that code,
                          try to start processes while bootstrapping, and die with multiprocessing's
                          RuntimeError: one traceback per task (78 lines for a small job), then a
                          driver error blaming os._exit/sys.exit in user code. Now: one error, at once.
    name_error_hint()     a task's NameError names a global that the driver's main module has but
                          defines only under the guard, so it does not exist in the task.

Both judge only what they can see; when unsure (no source, an interactive session) they say nothing.
"""

from __future__ import annotations

import ast
import re
import sys
from types import FrameType

from procflow.runtime.control import ErrorReport

# The start methods that import the main module again in each child (fork copies the driver instead).
REIMPORTING_START_METHODS = frozenset({"spawn", "forkserver"})
GUARD = 'if __name__ == "__main__":'
_NAME_ERROR = re.compile(r"name '(\w+)' is not defined")


def check_main_guard(start_method: str) -> None:
    """Raise RuntimeError when the job is being submitted by top-level code of a main module that each
    task process would import again."""
    if start_method not in REIMPORTING_START_METHODS:
        return
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None:
        return      # interactive or `python -c`: multiprocessing imports nothing again
    spec_name = getattr(getattr(main, "__spec__", None), "name", None) or ""
    if spec_name == "__main__" or spec_name.endswith(".__main__"):
        return      # `python -m package`: multiprocessing does not import package/__main__.py again
    frame = _top_level_frame_of(vars(main))
    if frame is None:
        return      # not called from the main module's top level (a thread, an atexit hook...)
    line = frame.f_lineno
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return
    if _under_name_test(tree.body, line):
        return
    raise RuntimeError(
        f"start_method={start_method!r} starts each task in a new Python process that imports your main "
        f"module ({path}) again, and line {line} there submits this job at import time, outside "
        f"`{GUARD}`: every task would start the job again. Probably the script calls env.submit() (or "
        f"the function that does) at its top level. Instead, move that code under `{GUARD}`, or use "
        "start_method='fork'.")


def _top_level_frame_of(main_globals: dict) -> FrameType | None:
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_globals is main_globals and frame.f_code.co_name == "<module>":
            return frame
        frame = frame.f_back
    return None


def _under_name_test(statements: list[ast.stmt], line: int) -> bool:
    """True when `line` lies inside an `if` whose test mentions __name__ (the guard, in any spelling)."""
    for stmt in statements:
        end = getattr(stmt, "end_lineno", None) or stmt.lineno
        if not stmt.lineno <= line <= end:
            continue
        if isinstance(stmt, ast.If) and any(isinstance(n, ast.Name) and n.id == "__name__"
                                            for n in ast.walk(stmt.test)):
            return True
        children = [getattr(stmt, field, None) for field in ("body", "orelse", "finalbody")]
        children += [h.body for h in getattr(stmt, "handlers", [])]
        children += [c.body for c in getattr(stmt, "cases", [])]
        return any(_under_name_test(block, line) for block in children if isinstance(block, list))
    return False


def name_error_hint(report: ErrorReport, start_method: str) -> str:
    """For a task's NameError under spawn/forkserver: the name exists in the driver's main module, so it
    was defined only where the task's import of that module does not reach (the guard). '' otherwise."""
    if start_method not in REIMPORTING_START_METHODS or report.error_type != "NameError":
        return ""
    match = _NAME_ERROR.search(report.message)
    main = sys.modules.get("__main__")
    if match is None or main is None or match.group(1) not in vars(main):
        return ""
    name = match.group(1)
    return (f". Under start_method={start_method!r} a task imports your main module again without running "
            f"its `{GUARD}` block, and {name!r} is defined only there. Instead, define {name!r} at the "
            "module's top level, or pass it to the function (a constructor argument, functools.partial)")
