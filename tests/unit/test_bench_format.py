"""The bench tables' number format: the README's figures are printed by it."""

from __future__ import annotations

import os

import pytest

from bench.common import fmt


@pytest.mark.parametrize("value, text", [
    (None, "n/a"), (0.01234, "0.0123"), (999.4, "999"), (6345.6, "6346"),
    (63456, "63.5k"), (613_000, "613k"), (4_560_000, "4.56M"), (2.5e9, "2.5G"),
])
def test_fmt_scales_by_thousands(value, text):
    assert fmt(value) == text


def test_cpu_scaling_table_shows_each_contenders_fastest_and_slowest_run(monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench import plot

    doc = {"params": {"workers": 2}, "grains": {"20us": {"n": 10, "runs": 3, "contenders": {
        "sequential": {"times": [2.0, 2.2, 2.4], "median": 2.2, "speedup": 1.0, "efficiency": 0.5},
        "procflow": {"times": [1.3, 1.1, 1.6], "median": 1.3, "speedup": 2.2 / 1.3, "efficiency": 0.85},
    }}}}
    saved = []
    monkeypatch.setattr(plot, "_save", lambda fig, name, plt: saved.append(name))  # no PNG written
    table = plot.cpu_scaling(doc, plt)
    assert "| procflow | 1.3 | 1.1 to 1.6 |" in table
    assert saved == ["cpu_scaling.png"]


def test_cpu_scaling_targets_hold_procflow_to_pool_and_ray_tasks_with_their_best_chunking():
    from bench import cpu_scaling, plot

    def grain(**medians_and_times):
        return {"contenders": {name: {"times": times, "median": sorted(times)[len(times) // 2]}
                               for name, times in medians_and_times.items()}}

    doc = {"grains": {
        "20us": grain(**{"sequential": [2.0] * 3,
                         "mp.Pool.imap[32/W]": [1.0, 1.2, 0.9], "mp.Pool.imap[4/W]": [1.4, 1.5, 1.3],
                         "ray-tasks[8/W]": [2.0, 2.0, 2.0], "ray-tasks[2/W]": [1.5, 0.9, 1.6],
                         "ray-actors": [1.0, 1.0, 1.0],
                         "procflow": [1.1, 1.1, 1.0]}),     # beats Pool in round 2 only
        "2us": grain(**{"sequential": [3.0] * 11, "mp.Pool.imap[32/W]": [1.3] * 11,
                        "mp.Pool.imap[4/W]": [1.2] * 11,
                        "procflow": [0.9] * 8 + [1.3] * 3}),    # 1.33x Pool's median, 8 of 11 rounds
    }}
    for g in doc["grains"].values():
        cpu_scaling._derive(g, w=2)
    doc["targets"] = cpu_scaling.targets(doc, w=2)
    by_name = {t["name"]: t for t in doc["targets"]}
    pool = by_name["20us: procflow vs mp.Pool.imap (mp.Pool.imap[32/W])"]
    assert (pool["rounds_faster"], pool["met"]) == ("1 of 3", False)
    ray = by_name["20us: procflow vs ray-tasks (ray-tasks[2/W])"]
    assert (ray["value"], ray["rounds_faster"], ray["goal"]) == (1.5 / 1.1, "2 of 3", "> 1, >= 3 rounds faster")
    assert ray["met"] is False                      # ahead on the median, but only 2 of 3 rounds
    fine = by_name["2us: procflow vs mp.Pool.imap (mp.Pool.imap[4/W])"]
    assert (fine["rounds_faster"], fine["goal"], fine["met"]) == ("8 of 11", ">= 1.3, >= 8 rounds faster", True)
    assert doc["grains"]["20us"]["contenders"]["ray"]["variant"] == "ray-actors"
    shown = [k for k in doc["grains"]["20us"]["contenders"] if cpu_scaling.shown(k)]
    assert shown == ["sequential", "mp.Pool.imap", "ray", "procflow"]   # in the plan's order
    table = plot._targets_md(doc)
    assert table.splitlines()[0].endswith("| rounds faster |")
    assert "| MISSED | 1 of 3 |" in table and "| MET | 8 of 11 |" in table


def test_wins_needed_is_8_of_11_scaled():
    from bench.cpu_scaling import wins_needed

    assert [wins_needed(n) for n in (11, 5, 3, 1, 22)] == [8, 4, 3, 1, 16]


@pytest.mark.parametrize("name", ["etl", "files"])
def test_the_new_benches_tables_come_from_their_result_files(monkeypatch, tmp_path, name):
    """bench.etl and bench.files run at a tiny size (the plain contenders alone), and the
    plot turns what they return into the README's table and a figure."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench import common, etl, files, plot

    module = {"etl": etl, "files": files}[name]
    # Leftovers are the suite's autouse check's business here; the bench's own report waits 5 s for
    # any child of the test process to go, which is not what this test is about.
    monkeypatch.setattr(common, "leak_report", lambda shm_before: {})
    # No process starts in a unit test: no procflow, and for files not the Pool's case either.
    size = ["--lines", "300"] if name == "etl" else ["--mb", "0.05", "--cases", "lines"]
    doc = module.main(["--quick", "--no-save", "--no-procflow", "--runs", "2", "--dir", str(tmp_path), *size])
    saved = []
    monkeypatch.setattr(plot, "_save", lambda fig, png, plt: saved.append(png))
    table = getattr(plot, name)(doc, plt)
    assert saved == [f"{name}.png"]
    assert ("| plain | " if name == "etl" else "| plain-lines | ") in table
    assert "Not measured in this run" in table and "disabled by --no-procflow" in table
    assert all(t["met"] is None for t in doc["targets"])      # no procflow figure, no verdict
    assert os.listdir(tmp_path) == []                          # the private data folder is gone
