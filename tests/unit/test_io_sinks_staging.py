"""The commit protocol of the file sinks, in one process: parts appear in the folder only at commit,
_SUCCESS last; abort leaves nothing; a non-empty folder is refused unless mode="overwrite", which
replaces the old output only at commit; stale staging of a dead driver goes, a live one refuses the job;
modes 0700 / 0600 and no symlink followed."""

from __future__ import annotations

import json
import os
import stat

import pytest

from procflow.core.committed_output import CommittedOutput
from procflow.core.errors import OutputExistsError, UnsafePathError
from procflow.io.sinks import JsonlSink
from procflow.io.sinks.staging import LOCK_NAME, report_name, staging_name
from tests.unit.sink_driver import JOB, instance, part_files, write_parts


def mode_of(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_file_sinks_are_committed_outputs(tmp_path):
    assert isinstance(JsonlSink(tmp_path / "out"), CommittedOutput)


def test_parts_stay_in_staging_until_commit_and_success_comes_last(tmp_path):
    out = tmp_path / "out"
    driver = JsonlSink(out)
    driver.prepare_output(JOB, 2)
    staging = out / staging_name(JOB)
    for i in range(2):
        sink = instance(driver, i, 2)
        sink.execute({"i": i})
        sink.close()
    assert sorted(p.name for p in out.iterdir()) == [staging.name]        # nothing visible yet
    assert {p.name for p in staging.iterdir()} >= {"part-00000-of-00002.jsonl", report_name(1)}
    driver.commit_output()
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "part-00000-of-00002.jsonl",
                                                     "part-00001-of-00002.jsonl"]
    manifest = json.loads((out / "_SUCCESS").read_text())
    assert [(f["name"], f["records"]) for f in manifest["files"]] == [
        ("part-00000-of-00002.jsonl", 1), ("part-00001-of-00002.jsonl", 1)]
    assert manifest["job_id"] == JOB


def test_abort_leaves_the_folder_without_parts_or_staging(tmp_path):
    out = tmp_path / "out"
    assert write_parts(JsonlSink, out, [[1, 2], [3]], commit=False) is None
    assert list(out.iterdir()) == []


def test_abort_after_a_half_written_instance_and_twice(tmp_path):
    out = tmp_path / "out"
    driver = JsonlSink(out)
    driver.prepare_output(JOB, 2)
    sink = instance(driver, 0, 2)
    for i in range(1000):
        sink.execute({"i": i})   # never closed: its task "failed"
    driver.abort_output()
    driver.abort_output()
    assert list(out.iterdir()) == []


def test_commit_refuses_when_an_instance_left_no_report(tmp_path):
    out = tmp_path / "out"
    driver = JsonlSink(out)
    driver.prepare_output(JOB, 2)
    sink = instance(driver, 0, 2)
    sink.execute(1)
    sink.close()                 # instance 1 never closed
    with pytest.raises(RuntimeError, match="instance 1 of 2 left no report"):
        driver.commit_output()
    driver.abort_output()
    assert list(out.iterdir()) == []


def test_modes_are_private_folders_and_files(tmp_path):
    out = tmp_path / "new" / "out"
    driver = JsonlSink(out)
    driver.prepare_output(JOB, 1)
    staging = out / staging_name(JOB)
    assert mode_of(out) == 0o700 and mode_of(out.parent) == 0o700 and mode_of(staging) == 0o700
    sink = instance(driver, 0, 1)
    sink.execute(1)
    sink.close()
    assert {p.name: mode_of(p) for p in staging.iterdir()} == {
        "part-00000-of-00001.jsonl": 0o600, report_name(0): 0o600, LOCK_NAME: 0o600}
    driver.commit_output()
    assert {p.name: mode_of(p) for p in out.iterdir()} == {"part-00000-of-00001.jsonl": 0o600, "_SUCCESS": 0o600}


def test_a_non_empty_folder_is_refused_naming_it_and_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r'not empty.*notes\.txt.*mode="overwrite"') as info:
        JsonlSink(out).prepare_output(JOB, 1)
    assert str(out) in str(info.value)
    assert isinstance(info.value, FileExistsError)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_overwrite_replaces_old_parts_and_manifest_only_at_commit(tmp_path):
    out = tmp_path / "out"
    write_parts(JsonlSink, out, [[1], [2], [3]])
    (out / "notes.txt").write_text("mine")
    # An aborted overwrite changes nothing.
    write_parts(JsonlSink, out, [[10]], mode="overwrite", commit=False, job_id="00000001")
    assert len(part_files(out)) == 3 and json.loads((out / "_SUCCESS").read_text())["records"] == 3
    manifest = write_parts(JsonlSink, out, [[10, 11]], mode="overwrite", job_id="00000002")
    assert [p.name for p in part_files(out)] == ["part-00000-of-00001.jsonl"]
    assert part_files(out)[0].read_text() == "10\n11\n"
    assert manifest["records"] == 2 and manifest["job_id"] == "00000002"
    assert (out / "notes.txt").read_text() == "mine"   # not ours: left alone


def test_stale_staging_of_a_dead_driver_is_cleared(tmp_path):
    out = tmp_path / "out"
    stale = out / staging_name("deadbeef")
    stale.mkdir(parents=True)
    (stale / LOCK_NAME).write_text("")       # nobody holds its lock: its driver is gone
    (stale / "part-00000-of-00001.jsonl").write_text("half")
    lockless = out / staging_name("deadbee0")
    lockless.mkdir()                          # died before it made its lock
    write_parts(JsonlSink, out, [[1]])
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "part-00000-of-00001.jsonl"]


def test_staging_of_a_live_job_refuses_the_job(tmp_path):
    out = tmp_path / "out"
    first = JsonlSink(out)
    first.prepare_output("00000001", 1)       # a job of this process, still running
    try:
        with pytest.raises(OutputExistsError, match="another running job"):
            JsonlSink(out, "overwrite").prepare_output("00000002", 1)
        assert (out / staging_name("00000001")).is_dir()
    finally:
        first.abort_output()
    assert list(out.iterdir()) == []


def test_a_symlink_as_the_folder_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "out").symlink_to(target)
    with pytest.raises(UnsafePathError, match="symlink"):
        JsonlSink(tmp_path / "out").prepare_output(JOB, 1)
    assert list(target.iterdir()) == []


def test_a_planted_symlink_in_staging_is_not_followed(tmp_path):
    out = tmp_path / "out"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    driver = JsonlSink(out)
    driver.prepare_output(JOB, 1)
    try:
        (out / staging_name(JOB) / "part-00000-of-00001.jsonl").symlink_to(victim)
        sink = instance(driver, 0, 1)
        with pytest.raises(FileExistsError):
            sink.execute({"overwrites": "the victim"})
            sink.close()   # (JSON Lines makes its part at its first batch's write)
    finally:
        driver.abort_output()
    assert victim.read_text() == "precious"
    assert list(out.iterdir()) == []


def test_a_file_in_place_of_the_folder_is_refused(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        JsonlSink(tmp_path / "out").prepare_output(JOB, 1)


def test_two_sinks_of_one_job_on_one_folder_are_refused(tmp_path):
    out = tmp_path / "out"
    first = JsonlSink(out)
    first.prepare_output(JOB, 1)
    try:
        with pytest.raises(ValueError, match="another sink of this job"):
            JsonlSink(out, "overwrite").prepare_output(JOB, 1)
    finally:
        first.abort_output()


# -- commit per completed checkpoint (issue 20) ----------------------------------------------------------


def _roll(sink, number: int, records: list) -> list[str]:
    """The sink writes `records`, then takes barrier `number`: the names of its rolled parts so far."""
    for record in records:
        sink.execute(record)
    sink.ctx.checkpoint_number = number
    return [entry["name"] for entry in sink.snapshot_state()]


def test_a_completed_checkpoints_parts_are_published_before_the_end_and_listed_once(tmp_path):
    out = tmp_path / "out"
    driver = JsonlSink(out)
    driver.prepare_output(JOB, 1)
    sink = instance(driver, 0, 1)
    first = _roll(sink, 1, [1, 2])
    assert [p.name for p in part_files(out)] == []           # rolled, its checkpoint not complete yet
    driver.publish_parts(first)
    assert [p.name for p in part_files(out)] == ["part-00000-of-00001-c00000001.jsonl"]
    assert not (out / "_SUCCESS").exists()                   # visible, but not output yet
    driver.publish_parts(first)                              # idempotent
    sink.execute(3)
    sink.close()
    manifest = driver.commit_output() or json.loads((out / "_SUCCESS").read_text())
    assert [(f["name"], f["records"]) for f in manifest["files"]] == [
        ("part-00000-of-00001-c00000001.jsonl", 2), ("part-00000-of-00001.jsonl", 1)]
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "part-00000-of-00001-c00000001.jsonl",
                                                     "part-00000-of-00001.jsonl"]


def test_overwrite_removes_the_old_output_at_the_first_publish(tmp_path):
    out = tmp_path / "out"
    write_parts(JsonlSink, out, [["old"]])
    driver = JsonlSink(out, "overwrite")
    driver.prepare_output("1234abcd", 1)
    assert (out / "_SUCCESS").exists()                       # kept until this job publishes something
    sink = instance(driver, 0, 1, "1234abcd")
    driver.publish_parts(_roll(sink, 1, ["new"]))
    assert not (out / "_SUCCESS").exists()
    assert [p.name for p in part_files(out)] == ["part-00000-of-00001-c00000001.jsonl"]
    sink.close()
    driver.commit_output()
    rows = [json.loads(line) for p in part_files(out) for line in p.read_text().splitlines()]
    assert rows == ["new"]


def test_resume_keeps_published_parts_publishes_staged_ones_and_drops_later_ones(tmp_path):
    out = tmp_path / "out"
    crashed = JsonlSink(out)
    crashed.prepare_output(JOB, 1)
    sink = instance(crashed, 0, 1)
    crashed.publish_parts(_roll(sink, 1, [1]))               # checkpoint 1 completed and published
    listed = _roll(sink, 2, [2])                              # 2 completed, crashed before its publish
    crashed.publish_parts(_roll(sink, 3, [3]))               # 3 published, but skipped on resume (corrupt)
    _roll(sink, 4, [4])                                       # 4 never completed
    crashed.keep_for_resume()                                 # what a dead driver leaves
    resumed = JsonlSink(out)
    resumed.adopt_parts(listed)                               # resume from checkpoint 2
    resumed.prepare_output("1234abcd", 1)
    assert [p.name for p in part_files(out)] == ["part-00000-of-00001-c00000001.jsonl",
                                                 "part-00000-of-00001-c00000002.jsonl"]
    again = instance(resumed, 0, 1, "1234abcd")
    again.restore_state([{"name": n, "records": 1, "bytes": 2} for n in listed])
    again.execute(3)
    again.execute(4)
    again.close()
    resumed.commit_output()
    rows = sorted(json.loads(line) for p in part_files(out) for line in p.read_text().splitlines())
    assert rows == [1, 2, 3, 4]
    assert [p.name for p in out.iterdir() if p.name.startswith("_staging-")] == []
