"""The bench tables' number format: the README's figures are printed by it."""

from __future__ import annotations

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


def test_cpu_scaling_targets_say_in_how_many_rounds_procflow_beat_the_fastest_peer():
    from bench import cpu_scaling, plot

    grain = {"contenders": {
        "mp.Pool.imap": {"times": [1.0, 1.2, 0.9], "median": 1.0},
        "procflow": {"times": [1.1, 1.1, 1.0], "median": 1.1},          # faster only in round 2
        "procflow-balance": {"times": [0.95, 1.15, 0.8], "median": 0.95},
    }}
    doc = {"grains": {"20us": grain}}
    doc["targets"] = cpu_scaling.targets(doc, w=2)
    by_name = {t["name"]: t for t in doc["targets"]}
    assert by_name["20us: procflow vs fastest peer (mp.Pool.imap)"]["rounds_faster"] == "1 of 3"
    assert by_name["20us: procflow-balance vs fastest peer (mp.Pool.imap)"]["rounds_faster"] == "3 of 3"
    table = plot._targets_md(doc)
    assert table.splitlines()[0].endswith("| rounds faster |")
    assert "| MISSED | 1 of 3 |" in table
