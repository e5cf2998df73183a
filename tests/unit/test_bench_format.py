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
