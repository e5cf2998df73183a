"""bench.channels' pure parts: the last-level cache read from sysfs and the out-of-cache copy ceiling."""

from __future__ import annotations

import numpy as np
import pytest

from bench import channels


@pytest.mark.parametrize("text, size", [("32768K\n", 32 << 20), ("8M", 8 << 20), ("512", 512), ("1G", 1 << 30)])
def test_sysfs_cache_sizes(text, size):
    assert channels.parse_cache_size(text) == size


def _cache(root, cpu, index, level, size, shared, kind="Unified"):
    d = root / f"cpu{cpu}" / "cache" / f"index{index}"
    d.mkdir(parents=True)
    for name, value in (("level", level), ("size", size), ("shared_cpu_list", shared), ("type", kind)):
        (d / name).write_text(f"{value}\n")


def test_llc_is_the_top_level_summed_over_its_instances_not_over_the_cpus_sharing_one(tmp_path):
    for cpu in range(4):
        _cache(tmp_path, cpu, 0, 1, "32K", str(cpu), "Data")
        _cache(tmp_path, cpu, 1, 1, "32K", str(cpu), "Instruction")
        _cache(tmp_path, cpu, 2, 2, "1024K", str(cpu))
        _cache(tmp_path, cpu, 3, 3, "16M", "0-1" if cpu < 2 else "2-3")   # two L3s, each shared by two
    (tmp_path / "cpufreq").mkdir()                                         # not a cpu
    assert channels.llc_bytes(str(tmp_path)) == 32 << 20
    assert channels.memcpy_pool_bytes(32 << 20) == channels.MEMCPY_POOL_MIN
    assert channels.memcpy_pool_bytes(256 << 20) == 1 << 30               # 4 x a large server's L3
    assert channels.llc_bytes(str(tmp_path / "missing")) is None


def test_memcpy_bandwidth_reports_each_case_and_the_buffers_it_rotated_over():
    got = channels.memcpy_bandwidth(1 << 16, total_bytes=1 << 20, runs=2, pool_bytes=1 << 19, hot=True)
    assert set(got) == {"hot", "streaming"}
    for m in got.values():
        assert len(m["times"]) == 2 and m["mb_per_s"] > 0
        assert (m["array_bytes"], m["pool_bytes"]) == (1 << 16, 1 << 19)
    big = channels.memcpy_bandwidth(1 << 20, total_bytes=1 << 20, runs=1, pool_bytes=0, hot=False)
    assert set(big) == {"streaming"} and big["streaming"]["pool_bytes"] == 2 << 20   # at least two buffers


def test_the_checker_sees_a_64_mib_array_whole():
    chk = channels.Checker("64m")
    chk.add(channels.make_64m(3))
    bad = channels.make_64m(4)
    bad[len(bad) // 2] = 0.0
    chk.add(bad)
    assert chk.summary() == {"count": 2, "id_sum": 7, "nbytes": 2 * channels.record_bytes("64m"), "bad": 1}
    assert isinstance(bad, np.ndarray) and bad.nbytes == 64 << 20
