"""The driver's half of a committed file sink: stage, then publish by atomic rename, or remove.

    <dir>/                                    what a reader sees: only committed output
      _staging-<job id>/                      made 0700 by prepare(), before any task starts
        .lock                                 lockf-held by the driver for the job's lifetime
        part-00000-of-00004.jsonl             written by instance 0 (0600; none if it got no records)
        _instance-00000.json                  instance 0's report at close(): its part, records, bytes
        ...
      part-00000-of-00004-c00000003.jsonl ... publish(): a part rolled at barrier 3, renamed here as soon
                                              as checkpoint 3 completes (atomic per file)
      part-00000-of-00004.jsonl ...           commit(): every part not yet published renamed here
      _SUCCESS                                commit(): the manifest, renamed in last: the output is
                                              complete exactly when _SUCCESS exists; without it, what a
                                              reader sees (published parts) is not output yet

    prepare()  dir made if missing; stale staging of dead drivers removed (a live one refuses the job);
               mode "error": dir must be empty; the staging folder and its lock. On resume from a
               checkpoint (`adopt`): the parts that checkpoint lists and that are still in the dead
               drivers' staging are published (its completion may have come just before the crash),
               those already in dir stay, parts a later checkpoint published (one skipped as corrupt)
               are removed, and everything else of the dead staging too
    publish()  checkpoint n completed: the parts it lists that are not yet in dir are renamed in (mode
               "overwrite": the old _SUCCESS and old parts are removed first, at the first publish)
    commit()   every instance's report read and checked against its file; mode "overwrite": the old
               _SUCCESS, then the old parts, removed; parts renamed in; _SUCCESS renamed in; staging gone
    abort()    staging removed (idempotent); nothing in <dir> changes

A driver killed by SIGKILL leaves its staging folder behind, and its lock goes with the process: the next
prepare() on the same dir takes the lock, which proves the owner dead (a pid alone could have been
reused), and removes the folder. lockf locks belong to a process, so folders held by this process are
also remembered in `_HELD` (two jobs of one driver on one dir must not take each other's staging for a
dead one); and, unlike flock, a forked task does not inherit the lock, so it ends with the driver itself.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import json
import os
import re
import stat
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from procflow.core.errors import OutputExistsError, UnsafePathError
from procflow.io.safe_paths import create_file_at, make_dir_at, open_dir_fd, rmtree_at

STAGING_PREFIX = "_staging-"
LOCK_NAME = ".lock"
MANIFEST_NAME = "_SUCCESS"
PART_PREFIX = "part-"

# The parts a checkpoint publishes: rolled at barrier n (-c<n>) or at the end of a source's chain (-final-).
_CHECKPOINTED_PART = re.compile(r"part-[0-9]{5}-of-[0-9]{5}-(c[0-9]{8}|final-.+)\.[A-Za-z0-9]+")

_HELD: set[str] = set()          # staging folders (absolute paths) whose lock this process holds
_HELD_LOCK = threading.Lock()


class WriteMode(str, enum.Enum):
    """What a file sink does with a dir that already holds something."""

    ERROR = "error"            # refuse the job (before any process starts)
    OVERWRITE = "overwrite"    # replace the old parts and _SUCCESS, and only once the job has succeeded

    @classmethod
    def of(cls, value: Any, where: str) -> WriteMode:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"{where}: mode must be one of {[m.value for m in cls]}, got {value!r}") from None


def staging_name(job_id: str) -> str:
    return f"{STAGING_PREFIX}{job_id}"


def part_name(index: int, parallelism: int, extension: str) -> str:
    """`part-00003-of-00008.jsonl`: zero-padded so that a sorted listing is in instance order."""
    return f"{PART_PREFIX}{index:05d}-of-{parallelism:05d}.{extension}"


def report_name(index: int) -> str:
    return f"_instance-{index:05d}.json"


@dataclass(frozen=True)
class PartReport:
    """What one sink instance wrote: its part's file name (None: it received no records), records, bytes."""

    part: str | None
    records: int
    bytes: int
    # Parts finished at checkpoint barriers (name, records, bytes), published with the last one.
    rolled: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


class StagedOutput:
    """The driver-side staging of one file sink's output (see the module docstring)."""

    def __init__(self, path: str, mode: WriteMode, format_name: str, operator: str = "") -> None:
        self.path = path
        self.mode = mode
        self.format_name = format_name
        self.where = f"{format_name} sink{f' {operator!r}' if operator else ''} into {path}"
        self.job_id = ""
        self.parallelism = 0
        self.staging = ""
        self._dir_fd = -1
        self._staging_fd = -1
        self._lock_fd = -1
        self.published: set[str] = set()   # parts of this job (or the run it resumes) already in dir
        self._old_removed = False           # mode "overwrite": the old output is gone
        self._lock = threading.RLock()      # publish() runs in the monitor thread, commit/abort after it

    # -- prepare -----------------------------------------------------------------------------------

    def prepare(self, job_id: str, parallelism: int,
                adopt: list[str] | None = None) -> None:
        self.job_id, self.parallelism = job_id, parallelism
        os.makedirs(os.path.dirname(self.path) or ".", 0o700, exist_ok=True)
        try:
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            pass   # the user's own folder, or an earlier run's output: checked below
        try:
            self._dir_fd = open_dir_fd(self.path)
        except OSError as exc:
            if os.path.islink(self.path):
                raise UnsafePathError(f"{self.where}: {self.path} is a symlink; procflow writes output only "
                                      "into a real folder. Pass the folder it points to instead") from exc
            raise NotADirectoryError(f"{self.where}: {self.path} is not a folder ({exc.strerror}); pass the "
                                     "path of a folder (it is made if missing)") from exc
        stale = self._dead_staging()
        adopted: dict[str, str] = {}
        if adopt is not None:
            adopted = self._find_parts(adopt, stale)
            self.published = {part for part, folder in adopted.items() if not folder}
            self._drop_unlisted_parts()
        elif stale:
            self._clear(stale)
        if self.mode is WriteMode.ERROR:
            existing = sorted(n for n in os.listdir(self._dir_fd) if n not in stale and n not in self.published)
            if existing:
                shown = ", ".join(existing[:5]) + (", ..." if len(existing) > 5 else "")
                raise OutputExistsError(
                    f"{self.where}: the folder is not empty ({len(existing)} entries: {shown}); a file sink "
                    "writes only into an empty or new folder, so that it never mixes its parts with other "
                    "files. Pass mode=\"overwrite\" to replace an earlier run's parts and _SUCCESS once this "
                    "job succeeds, or write into another folder")
        name = staging_name(job_id)
        make_dir_at(self._dir_fd, name)
        self.staging = name   # only now is it ours to remove
        self._staging_fd = open_dir_fd(self.staging, dir_fd=self._dir_fd)
        self._lock_fd = create_file_at(self._staging_fd, LOCK_NAME, read=True)
        fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with _HELD_LOCK:
            _HELD.add(os.path.join(self.path, self.staging))
        if adopt is not None:
            unpublished = [part for part, folder in adopted.items() if folder]
            for part in unpublished:
                os.rename(os.path.join(adopted[part], part), os.path.join(self.staging, part),
                          src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            self._clear(stale)
            self.publish(unpublished)   # their checkpoint completed: they are due in dir

    def _find_parts(self, parts: list[str], stale: list[str]) -> dict[str, str]:
        """Where each part a checkpoint lists is: a dead staging folder, or "" for dir itself (published
        already); raises if one is gone. Staging first: a same-named file in dir is an older run's."""
        found: dict[str, str] = {}
        wanted = set(parts)
        for folder in stale:
            fd = open_dir_fd(folder, dir_fd=self._dir_fd)
            try:
                names = os.listdir(fd)
            finally:
                os.close(fd)
            for name in names:
                if name in wanted and name not in found:
                    found[name] = folder
        for name in wanted - set(found):
            if _exists_at(self._dir_fd, name):
                found[name] = ""
        missing = sorted(set(parts) - set(found))
        if missing:
            raise FileNotFoundError(
                f"{self.where}: resuming needs the parts {missing[:5]} that the checkpoint lists, but no "
                "staging folder of an earlier run holds them (removed by hand, or by a job that wrote into "
                "this folder meanwhile). The checkpoint cannot be resumed exactly; start the job afresh "
                "without resume=True (and empty its checkpoint folder)")
        return found

    def _drop_unlisted_parts(self) -> None:
        """On resume: checkpointed parts in dir that the restored checkpoint does not list were published by
        a later checkpoint (one skipped as corrupt): their records come again, so they go."""
        for name in os.listdir(self._dir_fd):
            if _CHECKPOINTED_PART.fullmatch(name) and name not in self.published:
                st = os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=self._dir_fd)

    def _clear(self, names: list[str]) -> None:
        for name in names:
            rmtree_at(self._dir_fd, name)

    def _dead_staging(self) -> list[str]:
        """The staging folders that dead drivers left in dir; refuse the job if one is live."""
        dead = []
        for name in os.listdir(self._dir_fd):
            if not name.startswith(STAGING_PREFIX):
                continue
            st = os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                continue   # not one of ours: an ordinary entry (mode "error" then refuses the folder)
            if st.st_uid != os.geteuid():
                raise UnsafePathError(f"{self.where}: {name} belongs to uid {st.st_uid}, not to this user; "
                                      "remove it (if it is stale), or write into another folder")
            if name == staging_name(self.job_id):
                raise ValueError(f"{self.where}: another sink of this job writes into the same folder; give "
                                 "each file sink a folder of its own")
            if os.path.join(self.path, name) in _HELD or self._locked_by_live_driver(name):
                raise OutputExistsError(
                    f"{self.where}: another running job is writing into this folder (its staging folder "
                    f"{name} is held); wait for it to end, or write into another folder")
            dead.append(name)
        return dead

    def _locked_by_live_driver(self, name: str) -> bool:
        staging_fd = open_dir_fd(name, dir_fd=self._dir_fd)
        try:
            lock_fd = os.open(LOCK_NAME, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=staging_fd)
        except FileNotFoundError:
            return False   # its driver died between making the folder and its lock
        finally:
            os.close(staging_fd)
        try:
            fcntl.lockf(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return True
            raise
        finally:
            os.close(lock_fd)   # releases the lock we may have taken: we only asked
        return False

    # -- publish / commit ---------------------------------------------------------------------------

    def publish(self, parts: list[str]) -> None:
        """A checkpoint completed: rename the parts it lists into dir (those not there yet). Idempotent."""
        with self._lock:
            if self._staging_fd < 0:
                return   # committed or aborted meanwhile
            new = [p for p in parts if p not in self.published]
            if not new:
                return
            if self.mode is WriteMode.OVERWRITE and not self._old_removed:
                self._remove_old_output()
                self._old_removed = True
            for part in new:
                if self.mode is WriteMode.ERROR and _exists_at(self._dir_fd, part):
                    raise OutputExistsError(f"{self.where}: {part} appeared in the folder while the job ran; "
                                            "it was not published")
                os.rename(part, part, src_dir_fd=self._staging_fd, dst_dir_fd=self._dir_fd)
                self.published.add(part)
            os.fsync(self._dir_fd)

    def commit(self) -> dict[str, Any]:
        """Publish every part and the manifest; returns the manifest."""
        with self._lock:
            return self._commit()

    def _commit(self) -> dict[str, Any]:
        reports = [self._report(i) for i in range(self.parallelism)]
        files = [{"name": p["name"], "records": p["records"], "bytes": p["bytes"]} for r in reports for p in r.rolled]
        files += [{"name": r.part, "records": r.records, "bytes": r.bytes} for r in reports if r.part is not None]
        manifest = {"format": self.format_name, "job_id": self.job_id, "parallelism": self.parallelism,
                    "records": sum(int(f["records"]) for f in files), "bytes": sum(int(f["bytes"]) for f in files),
                    "files": files}
        dir_fd, staging_fd = self._dir_fd, self._staging_fd
        if self.mode is WriteMode.OVERWRITE:
            self._remove_old_output()
        else:
            clash = [f["name"] for f in files
                     if f["name"] not in self.published and _exists_at(dir_fd, str(f["name"]))] + \
                ([MANIFEST_NAME] if _exists_at(dir_fd, MANIFEST_NAME) else [])
            if clash:
                raise OutputExistsError(f"{self.where}: {clash} appeared in the folder while the job ran; "
                                        "nothing was committed")
        for f in files:
            if f["name"] not in self.published:
                os.rename(str(f["name"]), str(f["name"]), src_dir_fd=staging_fd, dst_dir_fd=dir_fd)
        fd = create_file_at(staging_fd, MANIFEST_NAME)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(manifest, out, indent=2)
            out.flush()
            os.fsync(out.fileno())
        os.rename(MANIFEST_NAME, MANIFEST_NAME, src_dir_fd=staging_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)   # the renames themselves survive a crash of the machine
        self.abort()       # what is left of staging: the reports and the lock
        return manifest

    def _report(self, index: int) -> PartReport:
        name = report_name(index)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._staging_fd)
        except FileNotFoundError:
            raise RuntimeError(f"{self.where}: instance {index} of {self.parallelism} left no report ({name}) "
                               "although the job finished; its part cannot be trusted, nothing was "
                               "committed") from None
        with os.fdopen(fd, encoding="utf-8") as f:
            report = PartReport(**json.load(f))
        if report.part is not None:
            size = os.stat(report.part, dir_fd=self._staging_fd, follow_symlinks=False).st_size
            if size != report.bytes:
                raise RuntimeError(f"{self.where}: part {report.part} has {size} bytes, but its instance "
                                   f"reported {report.bytes}; nothing was committed")
        return report

    def _remove_old_output(self) -> None:
        """mode "overwrite": _SUCCESS first (from here on the folder is visibly incomplete), then the parts
        (not those this job published)."""
        dir_fd = self._dir_fd
        names = os.listdir(dir_fd)
        for name in [MANIFEST_NAME] + sorted(n for n in names
                                             if n.startswith(PART_PREFIX) and n not in self.published):
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=dir_fd)   # a symlink itself, never its target

    # -- abort -------------------------------------------------------------------------------------

    def abort(self, keep: bool = False) -> None:
        """Remove the staging folder and close every fd. Idempotent; safe after a prepare() that failed.
        `keep`: leave the folder (not its lock) for a resume from a checkpoint, whose parts are in it."""
        with self._lock:
            self._abort(keep)

    def _abort(self, keep: bool) -> None:
        if self._staging_fd >= 0:
            os.close(self._staging_fd)
            self._staging_fd = -1
        if self.staging and self._dir_fd >= 0 and not keep:
            try:
                rmtree_at(self._dir_fd, self.staging)
            except FileNotFoundError:
                pass
        if self._lock_fd >= 0:
            os.close(self._lock_fd)   # after the folder is gone: no other job can take it for stale meanwhile
            self._lock_fd = -1
        with _HELD_LOCK:
            _HELD.discard(os.path.join(self.path, self.staging))
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1


def _exists_at(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
