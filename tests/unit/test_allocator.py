"""The task processes' allocator policy (runtime/allocator.py)."""

from __future__ import annotations

import platform

import pytest

from procflow.runtime import allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_glibc_takes_the_thresholds():
    # Setting them again in this (test) process changes nothing that matters: the values are fixed.
    assert allocator.keep_freed_memory() is True
