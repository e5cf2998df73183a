"""The checkpoint folder: one numbered sub-folder per checkpoint, complete once its manifest is in.

    <checkpoint_dir>/                 0700, this user's (checked like the log folders: private_files.py)
      00000007/                       0700, made by the driver when it asks for checkpoint 7
        0003-reduce_1.state           0600, written by task reduce_1 (slot 3): its pickled snapshot
        ...
        collected.pickle              0600, written by the driver: every collect()'s records up to here
        MANIFEST.json                 0600, written as MANIFEST.json.tmp then renamed in by the driver once
                                      every task acked: the checkpoint exists exactly when this does

The manifest lists every state file with its size and sha256, so a checkpoint whose files were cut short
or changed is recognised and skipped (with a warning) in favour of the one before it. The driver keeps
the last two complete checkpoints and removes older ones.

Why pickle is safe here: state files are read only from a folder that is ours, 0700 and checked, each file
a regular 0600 file of ours whose digest matches the manifest written by the driver; another local user
can neither write nor replace them. The driver reads them as bytes and ships them to the task that wrote
them, which unpickles its own state.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from typing import Any

from procflow.core.errors import CheckpointWarning, UnsafePathError
from procflow.io.safe_paths import create_file_at, make_dir_at, rmtree_at
from procflow.runtime.private_files import open_dir, private_dir

MANIFEST = "MANIFEST.json"
_NUMBERED = re.compile(r"[0-9]{8}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
KEEP = 2   # complete checkpoints kept


def folder_name(number: int) -> str:
    return f"{number:08d}"


def state_file_name(slot: int, task: str) -> str:
    """`0003-reduce_1.state`: the slot keeps names unique whatever characters an operator name has."""
    return f"{slot:04d}-{_UNSAFE.sub('_', task)}.state"


def write_state(checkpoint_dir: str, number: int, slot: int, task: str, data: bytes,
                name: str | None = None) -> tuple[int, str]:
    """Write one task's snapshot into checkpoint `number` (a new 0600 file, fsynced); (bytes, sha256).
    `name`: the file's name, where it is not a task's (the driver's collected records)."""
    folder = os.path.join(checkpoint_dir, folder_name(number))
    dir_fd = open_dir(folder)
    try:
        fd = create_file_at(dir_fd, name or state_file_name(slot, task))
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    finally:
        os.close(dir_fd)
    return len(data), hashlib.sha256(data).hexdigest()


@dataclass
class LoadedCheckpoint:
    """A complete, verified checkpoint: its manifest and every task's state, as bytes."""

    number: int
    manifest: dict[str, Any]
    states: dict[str, bytes] = field(default_factory=dict)


class CheckpointStore:
    """The driver's handle on the checkpoint folder (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        private_dir(self.path)   # made 0700 if missing; refused if a symlink, not ours, or open to others

    # -- listing -----------------------------------------------------------------------------------

    def numbers(self) -> list[int]:
        """Every numbered folder, complete or not, in increasing order."""
        return sorted(int(n) for n in os.listdir(self.path) if _NUMBERED.fullmatch(n))

    def complete_numbers(self) -> list[int]:
        """Numbers of the checkpoints whose manifest is in place (not verified), in increasing order."""
        return [n for n in self.numbers()
                if os.path.isfile(os.path.join(self.path, folder_name(n), MANIFEST))]

    # -- writing -----------------------------------------------------------------------------------

    def begin(self, number: int) -> None:
        """Make checkpoint `number`'s folder (0700), where its tasks write their state."""
        fd = open_dir(self.path)
        try:
            make_dir_at(fd, folder_name(number))
        finally:
            os.close(fd)

    def complete(self, number: int, manifest: dict[str, Any]) -> None:
        """Write the manifest beside the state files and rename it into place: the checkpoint now exists."""
        fd = open_dir(os.path.join(self.path, folder_name(number)))
        try:
            tmp = MANIFEST + ".tmp"
            out_fd = create_file_at(fd, tmp)
            with os.fdopen(out_fd, "w", encoding="utf-8") as out:
                json.dump(manifest, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.rename(tmp, MANIFEST, src_dir_fd=fd, dst_dir_fd=fd)
            os.fsync(fd)
        finally:
            os.close(fd)

    def prune(self, newest: int) -> None:
        """Keep the last KEEP complete checkpoints up to `newest`; remove every other folder before them."""
        complete = [n for n in self.complete_numbers() if n <= newest][-KEEP:]
        oldest_kept = complete[0] if complete else newest
        self._remove(n for n in self.numbers() if n < oldest_kept)

    def remove_after(self, number: int) -> None:
        """Remove every folder numbered above `number` (what a crashed run left unfinished)."""
        self._remove(n for n in self.numbers() if n > number)

    def clear(self) -> None:
        """Remove every checkpoint (the job they belong to has finished)."""
        self._remove(self.numbers())

    def _remove(self, numbers: Any) -> None:
        fd = open_dir(self.path)
        try:
            for n in list(numbers):
                try:
                    rmtree_at(fd, folder_name(n))
                except FileNotFoundError:
                    pass
        finally:
            os.close(fd)

    # -- reading -----------------------------------------------------------------------------------

    def latest(self) -> LoadedCheckpoint | None:
        """The newest checkpoint that is complete and intact; a newer broken one is skipped with a
        CheckpointWarning saying why. None when there is none."""
        for number in reversed(self.numbers()):
            try:
                return self.load(number)
            except FileNotFoundError as exc:
                if exc.filename == MANIFEST:
                    continue   # never completed: an ordinary leftover of the run that crashed
                self._skipped(number, exc)
            except (ValueError, OSError, KeyError, TypeError) as exc:
                if isinstance(exc, UnsafePathError):
                    raise
                self._skipped(number, exc)
        return None

    def _skipped(self, number: int, exc: BaseException) -> None:
        warnings.warn(CheckpointWarning(
            f"checkpoint {number} in {self.path} is corrupt or partial ({type(exc).__name__}: {exc}); "
            "resuming from the checkpoint before it instead"), stacklevel=3)

    def load(self, number: int) -> LoadedCheckpoint:
        """Checkpoint `number`, verified: the manifest parses and every state file it lists is a private
        regular file of ours with the size and sha256 the manifest says. Raises otherwise."""
        fd = open_dir(os.path.join(self.path, folder_name(number)))
        try:
            manifest = json.loads(_read_private(fd, MANIFEST).decode("utf-8"))
            if not isinstance(manifest, dict) or manifest.get("checkpoint") != number:
                raise ValueError(f"{MANIFEST} does not describe checkpoint {number}")
            loaded = LoadedCheckpoint(number, manifest)
            for task, entry in manifest["tasks"].items():
                data = _read_private(fd, entry["file"])
                if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise ValueError(f"state file {entry['file']} of task {task} does not match the manifest "
                                     f"({len(data)} bytes)")
                loaded.states[task] = data
            return loaded
        finally:
            os.close(fd)


def _read_private(dir_fd: int, name: str) -> bytes:
    """The bytes of `name` in the folder `dir_fd`: a regular file of this user, not readable by others."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError as exc:
        exc.filename = name
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise UnsafePathError(f"checkpoint file {name} is not a private regular file of this user "
                                  f"(mode {oct(stat.S_IMODE(st.st_mode))}, uid {st.st_uid}); procflow will "
                                  "not restore state from it. Remove the checkpoint folder")
        return f.read()
