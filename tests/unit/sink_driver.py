"""Drives a file sink the way the runtime does, in one process: prepare in the "driver", then each
instance shipped (pickled), opened with a minimal context, fed, closed; then commit (or abort)."""

from __future__ import annotations

import json
import pathlib
import pickle
from types import SimpleNamespace
from typing import Any

from procflow.io.sinks import MANIFEST_NAME

JOB = "0badc0de"


def instance(driver: Any, index: int, parallelism: int, job_id: str = JOB) -> Any:
    """A copy of the driver's function as a task gets it, opened for instance `index`."""
    sink = pickle.loads(pickle.dumps(driver))
    sink.ctx = SimpleNamespace(job_id=job_id, parallel_index=index, parallelism=parallelism)
    sink.open()
    return sink


def write_parts(sink_class: type, path: Any, parts: list[list[Any]], *, mode: str = "error", commit: bool = True,
                job_id: str = JOB, **options: Any) -> dict | None:
    """Instance i writes parts[i]; returns the manifest (None where `commit` is False: aborted)."""
    driver = sink_class(path, mode, **options)
    driver.prepare_output(job_id, len(parts))
    try:
        for i, records in enumerate(parts):
            sink = instance(driver, i, len(parts), job_id)
            for record in records:
                sink.execute(record)
            sink.close()
    except BaseException:
        driver.abort_output()
        raise
    if not commit:
        driver.abort_output()
        return None
    driver.commit_output()
    return json.loads((pathlib.Path(path) / MANIFEST_NAME).read_text())


def part_files(path: Any) -> list[pathlib.Path]:
    return sorted(pathlib.Path(path).glob("part-*"))
