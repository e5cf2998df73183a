"""bench.common.interleaved: contenders run in shuffled rounds, failures are dropped, wrong results stop."""

from __future__ import annotations

import pytest

from bench import common


def test_contenders_run_in_rounds_the_first_in_the_given_order_then_shuffled():
    calls = []

    def contender(name, seconds):
        def run():
            calls.append(name)
            return seconds
        return run

    settled = []
    results, failures = common.interleaved({"a": contender("a", 1.0), "b": contender("b", 2.0),
                                            "c": contender("c", 3.0)}, runs=4,
                                           settle=lambda: settled.append(len(calls)))
    assert settled == list(range(12))          # before every run
    assert calls[:3] == ["a", "b", "c"]                       # the reference contender first
    rounds = [calls[i:i + 3] for i in range(0, 12, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)  # everyone once per round
    assert len({tuple(r) for r in rounds}) > 1                # not one fixed order
    assert failures == {}
    assert {name: m["median"] for name, m in results.items()} == {"a": 1.0, "b": 2.0, "c": 3.0}
    assert results["a"]["times"] == [1.0] * 4


def test_a_failing_contender_is_dropped_and_reported_and_the_rest_go_on():
    runs = {"ok": 0, "broken": 0}

    def ok():
        runs["ok"] += 1
        return 0.5

    def broken():
        runs["broken"] += 1
        raise RuntimeError("no such peer")

    results, failures = common.interleaved({"broken": broken, "ok": ok}, runs=3, settle=None)
    assert runs == {"ok": 3, "broken": 1}
    assert list(results) == ["ok"] and str(failures["broken"]) == "no such peer"


def test_a_wrong_result_stops_the_bench():
    def wrong():
        common.verify("peer", "count", 1, 2)

    with pytest.raises(common.VerificationError):
        common.interleaved({"peer": wrong}, runs=2, settle=None)


def test_a_contender_timed_by_the_harness_when_it_reports_no_time():
    results, _ = common.interleaved({"x": lambda: None}, runs=2, settle=None)
    assert len(results["x"]["times"]) == 2 and all(t >= 0 for t in results["x"]["times"])


def test_waiting_for_a_quiet_machine_returns_within_its_timeout():
    waited = common.wait_for_quiet(idle_share=1.01, window=0.05, timeout=0.2)   # never quiet enough
    assert 0.2 <= waited < 1.0
    assert common.wait_for_quiet(idle_share=0.0, window=0.05) < 0.5               # always quiet enough


def test_leftover_shm_is_our_own_segments_and_foreign_files_but_not_our_owner_lock():
    before = {"procflow_7_aaaa_job_old", "unrelated_old"}
    after = before | {"procflow_7_aaaa.lock", "procflow_7_aaaa_job_ring_x", "procflow_8_bbbb_job_ring_y",
                      "procflow_8_bbbb.lock", "psm_deadbeef"}
    assert common.leftover_shm(before, after, pid=7) == ["procflow_7_aaaa_job_ring_x", "psm_deadbeef"]
