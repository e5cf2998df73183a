"""The checkpoint folder (runtime/checkpoint/store.py) and the graph fingerprint, without processes."""

from __future__ import annotations

import os
import stat

import pytest

from procflow import LocalEnvironment
from procflow.core.errors import CheckpointWarning, UnsafePathError
from procflow.runtime.checkpoint.coordinator import check_checkpointable, fingerprint, graph_differences
from procflow.runtime.checkpoint.store import (
    MANIFEST,
    CheckpointStore,
    folder_name,
    state_file_name,
    write_state,
)


def _take(store: CheckpointStore, number: int, states: dict[str, bytes]) -> None:
    """A checkpoint as the runtime takes one: the folder, each task's file, the manifest last."""
    store.begin(number)
    tasks = {}
    for slot, (task, data) in enumerate(sorted(states.items())):
        nbytes, digest = write_state(store.path, number, slot, task, data)
        tasks[task] = {"file": state_file_name(slot, task), "bytes": nbytes, "sha256": digest}
    store.complete(number, {"checkpoint": number, "tasks": tasks, "fingerprint": {}})


def test_files_are_private_and_the_latest_complete_checkpoint_is_restored(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"))
    _take(store, 1, {"map_0": b"one"})
    _take(store, 2, {"map_0": b"two", "reduce_0": b"state"})
    store.begin(3)   # never completed: a crash before every ack came
    write_state(store.path, 3, 0, "map_0", b"three")

    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o700
    for number in (1, 2, 3):
        folder = os.path.join(store.path, folder_name(number))
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        for name in os.listdir(folder):
            assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == 0o600, name

    latest = store.latest()
    assert latest is not None and latest.number == 2
    assert latest.states == {"map_0": b"two", "reduce_0": b"state"}


@pytest.mark.parametrize("damage", ["truncated", "changed", "missing", "manifest"])
def test_a_corrupt_latest_checkpoint_is_skipped_with_a_warning(tmp_path, damage):
    store = CheckpointStore(str(tmp_path / "ckpt"))
    _take(store, 1, {"map_0": b"one"})
    _take(store, 2, {"map_0": b"two-two"})
    folder = os.path.join(store.path, folder_name(2))
    path = os.path.join(folder, state_file_name(0, "map_0"))
    if damage == "truncated":
        os.truncate(path, 3)
    elif damage == "changed":
        with open(path, "r+b") as f:
            f.write(b"TWO")
    elif damage == "missing":
        os.unlink(path)
    else:
        with open(os.path.join(folder, MANIFEST), "w") as f:
            f.write("{not json")
    with pytest.warns(CheckpointWarning, match="checkpoint 2 .* corrupt or partial"):
        latest = store.latest()
    assert latest is not None and latest.number == 1 and latest.states == {"map_0": b"one"}


def test_only_the_last_two_complete_checkpoints_are_kept(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"))
    for number in range(1, 5):
        _take(store, number, {"t": b"x"})
        store.prune(number)
    assert store.numbers() == [3, 4]
    store.begin(5)
    store.remove_after(4)
    assert store.numbers() == [3, 4]
    store.clear()
    assert store.numbers() == []


def test_a_state_file_others_can_read_is_refused(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"))
    _take(store, 1, {"t": b"x"})
    os.chmod(os.path.join(store.path, folder_name(1), state_file_name(0, "t")), 0o644)
    with pytest.raises(UnsafePathError, match="not a private regular file"):
        store.latest()


def test_a_checkpoint_folder_open_to_others_is_refused(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    with pytest.raises(UnsafePathError, match="chmod 700"):
        CheckpointStore(str(folder))


def _graph(parallelism: int, fn=str.upper):
    env = LocalEnvironment("fp")
    env.from_batch(["a", "b"], name="src").map(fn, parallelism=parallelism, name="up").collect()
    return env.compile()


def test_the_fingerprint_names_what_differs():
    assert graph_differences(fingerprint(_graph(2)), fingerprint(_graph(2))) == []
    diffs = graph_differences(fingerprint(_graph(2)), fingerprint(_graph(3, str.lower)))
    assert "operator 'up' was map x2 str.upper, now map x3 str.lower" in diffs


def test_a_source_that_cannot_say_where_it_is_is_refused_before_the_job_starts():
    check_checkpointable(_graph(1))   # an iterable: its position is its state
    env = LocalEnvironment("fp")
    env.from_source(lambda: None, name="ticks").collect()
    with pytest.raises(ValueError, match="source 'ticks' .* cannot tell where it is"):
        check_checkpointable(env.compile())


def test_backends_without_checkpoints_say_so_before_anything_starts(tmp_path):
    from procflow import RayEnvironment

    # Ray takes checkpoints (its gates hold inputs, its acks carry state): the folder is taken as given.
    ray_env = RayEnvironment("ray", checkpoint_dir=str(tmp_path / "ckpt"))
    assert ray_env.checkpoint_dir == str(tmp_path / "ckpt")
    ray_env.close()
    env = LocalEnvironment("mp", config={"queue": "mp"}, checkpoint_dir=str(tmp_path / "ckpt"),
                           env_dir=str(tmp_path / "env"))
    env.from_batch(range(3)).collect()
    with pytest.raises(ValueError, match="checkpoints need queue='shm'"):
        env.submit()
    plain = LocalEnvironment("plain", env_dir=str(tmp_path / "env"))
    plain.from_batch(range(3)).collect()
    with pytest.raises(ValueError, match=r"resume=True\) restores a checkpoint, but this environment takes none"):
        plain.submit(resume=True)


def test_a_resumed_sink_takes_over_exactly_the_parts_its_checkpoint_lists(tmp_path):
    from procflow.io.sinks.staging import StagedOutput, WriteMode

    out = tmp_path / "out"
    dead = out / "_staging-deadbeef"   # what a killed driver left: no live lock on it
    dead.mkdir(parents=True, mode=0o700)
    (dead / "part-00000-of-00001-c00000002.jsonl").write_text("1\n")
    (dead / "part-00000-of-00001.jsonl").write_text("2\n")   # written after the checkpoint: dropped

    staged = StagedOutput(str(out), WriteMode.ERROR, "jsonl")
    staged.prepare("cafef00d", 1, adopt=["part-00000-of-00001-c00000002.jsonl"])
    try:
        # Its checkpoint completed, so the part is published (the crash came before the driver did it).
        assert sorted(os.listdir(out)) == ["_staging-cafef00d", "part-00000-of-00001-c00000002.jsonl"]
        assert sorted(os.listdir(out / "_staging-cafef00d")) == [".lock"]
    finally:
        staged.abort(keep=True)   # as a failed job with checkpoints: the folder stays for the next resume
    assert (out / "part-00000-of-00001-c00000002.jsonl").read_text() == "1\n"

    again = StagedOutput(str(out), WriteMode.ERROR, "jsonl")
    with pytest.raises(FileNotFoundError, match="resuming needs the parts .*c00000003"):
        again.prepare("0badf00d", 1, adopt=["part-00000-of-00001-c00000003.jsonl"])
    again.abort()
