"""What a file source reads: one path, a list of paths, a glob or a folder, expanded once in the driver.

Expanded when the pipeline is built, so that a missing file or a pattern matching nothing fails at
`env.read_*(...)` with the path in the message, before any process starts, rather than as a task's
failure after the job started. Paths are made absolute: a Ray actor, or a task started by spawn from
another working folder, must read the same files the driver meant.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from typing import Union

PathSpec = Union[str, "os.PathLike[str]", Iterable[Union[str, "os.PathLike[str]"]]]

_GLOB_CHARS = frozenset("*?[")


def _is_pattern(path: str) -> bool:
    return any(c in _GLOB_CHARS for c in path)


def _hidden(name: str) -> bool:
    """Files a folder holds beside its data: `_SUCCESS` manifests, `.staging`, editor and OS litter."""
    return name.startswith((".", "_"))


def _expand_one(path: str, what: str) -> list[str]:
    if _is_pattern(path) and not os.path.exists(path):
        found = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
        if not found:
            raise FileNotFoundError(
                f"{what}: the pattern {path!r} matches no file (working folder {os.getcwd()!r}). Check the "
                "pattern, or pass the paths as a list.")
        return found
    if os.path.isdir(path):
        # A folder means its data files, in name order: the output folder of a write_* job reads back
        # as is, its _SUCCESS manifest left out.
        found = sorted(os.path.join(path, name) for name in os.listdir(path)
                       if not _hidden(name) and os.path.isfile(os.path.join(path, name)))
        if not found:
            raise FileNotFoundError(f"{what}: the folder {path!r} holds no data file (names starting with "
                                    "'.' or '_' are left out)")
        return found
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}: no such file {path!r} (working folder {os.getcwd()!r})")
    return [path]


def expand_paths(spec: PathSpec, what: str = "read") -> list[str]:
    """The absolute paths of every file `spec` names, in order, each once.

    `spec`: a path, a glob (`logs/*.jsonl`, `**` recursive), a folder (its files, hidden and `_` files
    left out), or a list of any of these. `what` names the caller in errors (`read_text`).
    """
    if isinstance(spec, (str, os.PathLike)):
        items = [os.fspath(spec)]
    elif isinstance(spec, Iterable) and not isinstance(spec, bytes):
        items = [os.fspath(p) for p in spec]
    else:
        raise TypeError(f"{what}: expected a path, a glob or a list of paths, got {type(spec).__name__}")
    if not items:
        raise ValueError(f"{what}: the list of paths is empty; pass at least one path or glob")
    paths: list[str] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, str) or not item:
            raise TypeError(f"{what}: every path must be a non-empty string or path, got {item!r}")
        for path in _expand_one(item, what):
            absolute = os.path.abspath(path)
            if absolute not in seen:   # a file named twice (a path and a glob over it) is read once
                seen.add(absolute)
                paths.append(absolute)
    return paths


def files_repr(source: object, paths: list[str]) -> str:
    """`TextSource('/data/a.txt' and 3 more)`: how a file source names itself in errors and logs."""
    more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
    return f"{type(source).__name__}({paths[0]!r}{more})"
