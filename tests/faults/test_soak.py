"""A short version of bench/soak.py (`make soak` runs the 10-million-record one). Opt in with
PROCFLOW_SOAK=1 so the default suite stays fast."""

from __future__ import annotations

import io
import os

import pytest

pytestmark = [
    pytest.mark.soak,
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.environ.get("PROCFLOW_SOAK") != "1", reason="soak test: set PROCFLOW_SOAK=1"),
]


def test_soak_exact_counts_and_flat_memory(env_dir):
    from bench.soak import run

    out = io.StringIO()
    report = run(200_000, sample_every=0.1, env_dir=env_dir, out=out)
    assert report["counts_exact"], out.getvalue()
    assert report["count"] == 160_000
    for name, rss in report["rss"].items():
        assert rss["samples"] > 0, name
        assert rss["growth_mb"] < 20, f"{name} grew {rss['growth_mb']:.1f} MB after warm-up:\n{out.getvalue()}"
