"""FileSink: the task's half of a committed file sink, and the driver hooks that delegate to staging.

    driver      prepare_output / commit_output / abort_output   -> StagedOutput (staging.py)
    each task   open()        the staging folder <dir>/_staging-<job id>, as an fd
                execute(r)    first record: its part file is made (0600, O_EXCL), then `_start(r)`;
                              every record: `_write(r)`, counted
                close()       `_finish()`, the part flushed, fsynced and closed, then the instance's report
                              (_instance-<i>.json: part, records, bytes, rolled parts) for the driver's commit
    checkpoints snapshot_state()  at each barrier the part is finished and renamed to
                                  part-<i>-of-<n>-c<checkpoint>.<ext> ("rolled"); the next record starts a new
                                  part. The state is the list of rolled parts: once the checkpoint completes
                                  the driver publishes them into the output folder (publish_parts); on
                                  resume it publishes those of the restored checkpoint still staged
                                  (StagedOutput.prepare(adopt=...)), and the rest of that staging is dropped

A subclass names its `extension` and `format_name` and writes its format in `_start` / `_write` /
`_finish` (a line format overrides `execute` itself, to batch its lines: text.py says why). The part is
made at the first record because a format's header may depend on it (the dtype of a .npy, the schema of
a Parquet file); an instance that got no records writes no part.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, ClassVar

from procflow.core.functions import SinkFunction
from procflow.io.safe_paths import create_file_at, open_dir_fd
from procflow.io.sinks.part_file import PartFile, close_quietly
from procflow.io.sinks.staging import PartReport, StagedOutput, WriteMode, part_name, report_name, staging_name


class FileSink(SinkFunction[Any]):
    """A sink writing one part per instance into `path`, committed by the driver when the job succeeds."""

    extension: ClassVar[str]
    format_name: ClassVar[str]

    def __init__(self, path: str | os.PathLike[str], mode: str = WriteMode.ERROR.value) -> None:
        # Absolute now, in the driver: a Ray actor (or a task that changed directory) has another cwd.
        self.path = os.path.abspath(os.fspath(path))
        self.mode = WriteMode.of(mode, f"write_{self.format_name}({self.path!r})")
        self.records = 0
        self._staged: StagedOutput | None = None
        self._staging_fd = -1
        self._part: PartFile | None = None
        self._part_name = ""
        self._staging_closer: weakref.finalize[Any, Any] | None = None
        self._rolled: list[dict[str, Any]] = []   # parts finished at checkpoint barriers (checkpoints only)
        self._counted = 0                          # records already in a rolled part
        self._adopt: list[str] | None = None   # driver side, on resume: the rolled parts to take over

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    def __getstate__(self) -> dict[str, Any]:
        # Shipped to its task before open(): never with the driver's fds or staging.
        state = dict(self.__dict__)
        state.update(_staged=None, _staging_fd=-1, _part=None, _staging_closer=None, _adopt=None)
        return state

    # -- the driver's hooks (procflow.core.committed_output.CommittedOutput) -------------------------

    def prepare_output(self, job_id: str, parallelism: int) -> None:
        self._staged = StagedOutput(self.path, self.mode, self.format_name)
        self._staged.prepare(job_id, parallelism, adopt=self._adopt)

    def adopt_parts(self, names: list[str]) -> None:
        """Driver side, on resume, before prepare_output: the rolled parts a checkpoint lists are taken
        over (published) from the staging folder a crashed run of this job left, or kept in dir."""
        self._adopt = list(names)

    def publish_parts(self, names: list[str]) -> None:
        """Driver side: checkpoint n completed, and `names` are the parts it lists (every rolled part of
        every instance up to its barrier): those not yet in the output folder are renamed in."""
        if self._staged is not None:
            self._staged.publish(names)

    def commit_output(self) -> None:
        assert self._staged is not None, "commit_output() comes after prepare_output()"
        self._staged.commit()

    def abort_output(self) -> None:
        if self._staged is not None:
            self._staged.abort()

    def keep_for_resume(self) -> None:
        """Instead of abort_output, where the job did not finish but has checkpoints: the staging folder
        stays (the parts its checkpoints list are taken over by the resumed job; the rest is dropped then)."""
        if self._staged is not None:
            self._staged.abort(keep=True)

    # -- the task's hooks ----------------------------------------------------------------------------

    def open(self) -> None:
        ctx = self.ctx
        self._part_name = part_name(ctx.parallel_index, ctx.parallelism, self.extension)
        staging = staging_name(ctx.job_id)
        try:
            dir_fd = open_dir_fd(self.path)
            try:
                self._staging_fd = open_dir_fd(staging, dir_fd=dir_fd)
                # A task that fails never reaches close(): its fd goes with the object (inline: the driver's)
                self._staging_closer = weakref.finalize(self, close_quietly, self._staging_fd)
            finally:
                os.close(dir_fd)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{self!r}: the staging folder {os.path.join(self.path, staging)} is gone; the driver makes it "
                "before the job starts, so the job was aborted meanwhile, or something removed it") from None

    def execute(self, record: Any) -> None:
        part = self._part or self._begin(record)
        self._write(part, record)
        self.records += 1

    def _begin(self, first: Any) -> PartFile:
        """The first record: make the part (0600, O_EXCL: a name planted in staging is refused)."""
        part = self._part = PartFile(create_file_at(self._staging_fd, self._part_name), self._part_name)
        self._start(part, first)
        return part

    # -- checkpoints (runtime/checkpoint) -------------------------------------------------------------

    def snapshot_state(self) -> list[dict[str, Any]]:
        """At a barrier: finish the current part under its checkpoint's name; the state is every rolled
        part so far (name, records, bytes)."""
        self._flush_buffered()
        part = self._part
        if part is not None:
            self._finish(part)
            part.close()
            ctx = self.ctx
            base, ext = os.path.splitext(self._part_name)
            # At a barrier: the checkpoint's number. At the end of a source's chain (checkpoint 0): the job
            # id, unique among the runs of a resumed job.
            number = ctx.checkpoint_number
            name = f"{base}-c{number:08d}{ext}" if number else f"{base}-final-{ctx.job_id}{ext}"
            os.rename(self._part_name, name, src_dir_fd=self._staging_fd, dst_dir_fd=self._staging_fd)
            self._rolled.append({"name": name, "records": self.records - self._counted, "bytes": part.tell()})
            self._counted = self.records
            self._part = None
        return list(self._rolled)

    def restore_state(self, state: list[dict[str, Any]]) -> None:
        self._rolled = [dict(entry) for entry in state]

    def _flush_buffered(self) -> None:
        """Write what the format buffers in memory into the part (a line format's pending lines)."""

    def close(self) -> None:
        self._flush_buffered()
        part = self._part
        if part is not None:
            self._finish(part)
            part.close()
        report = PartReport(part.name if part is not None else None, self.records - self._counted,
                            part.tell() if part is not None else 0, self._rolled)
        fd = create_file_at(self._staging_fd, report_name(self.ctx.parallel_index))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(report.to_json())
        if self._staging_closer is not None:
            self._staging_closer()
        self._staging_fd = -1

    # -- the format's --------------------------------------------------------------------------------

    def _start(self, part: PartFile, first: Any) -> None:
        """Before the first record: a header, or writer state that depends on that record."""

    def _write(self, part: PartFile, record: Any) -> None:
        raise NotImplementedError

    def _finish(self, part: PartFile) -> None:
        """After the last record, before the part is closed: a footer, a header rewritten."""
