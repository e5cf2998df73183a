"""read_text's splitting (procflow/io/lines.py), driven directly through plan_splits / read_split.

The property: whatever the files and wherever the split boundaries fall, every line is read exactly
once, by one split, and a file's lines come in file order split after split. Boundaries are tried
exhaustively on a file built to be awkward (CRLF, multi-byte UTF-8, empty lines, no final newline),
and at random with hypothesis over random files, split sizes and parallelism 1..7.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import tempfile
from collections import Counter
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procflow.core.errors import InputFormatError
from procflow.io import lines as lines_module
from procflow.io.lines import ByteRange, LineReader, plan_line_splits
from procflow.io.text import TextSource


def reference_lines(data: bytes, encoding: str = "utf-8") -> list[str]:
    """What read_text must give for one file: lines split at b"\\n", each without "\\n" or "\\r\\n"."""
    if not data:
        return []
    pieces = data.split(b"\n")
    ended = data.endswith(b"\n")
    if ended:
        pieces.pop()
    out = []
    for i, piece in enumerate(pieces):
        terminated = ended or i < len(pieces) - 1
        if terminated and piece.endswith(b"\r"):
            piece = piece[:-1]
        out.append(piece.decode(encoding))
    return out


def read_all(source: TextSource, parallelism: int) -> tuple[list[str], list[list[str]]]:
    """(every split's lines in plan order, each instance's lines) with instance i of n reading splits
    i, i+n, ... as the runtime's fixed share does."""
    plan = source.plan_splits(parallelism)
    assert [s.index for s in plan] == list(range(len(plan)))
    per_split = [list(source.read_split(s)) for s in plan]
    instances = [[line for lines in per_split[i::parallelism] for line in lines] for i in range(parallelism)]
    return [line for lines in per_split for line in lines], instances


AWKWARD = ("first\r\n"
           "\n"
           "é€𝄞 multi-byte\r\n"
           "a lone \r inside\n"
           "\r\n"
           "𝄞𝄞𝄞\n"
           "last without newline €").encode()


def test_every_single_boundary_of_an_awkward_file(tmp_path):
    path = str(tmp_path / "awkward.txt")
    with open(path, "wb") as f:
        f.write(AWKWARD)
    expected = reference_lines(AWKWARD)
    assert len(expected) == 7 and expected[3] == "a lone \r inside"
    for cut in range(len(AWKWARD) + 1):   # every byte offset, inside characters and CRLFs included
        got = [line for rng in (ByteRange(path, 0, cut), ByteRange(path, cut, len(AWKWARD)))
               for block in LineReader(rng) for line in block]
        assert got == expected, f"boundary at byte {cut}"


def test_every_split_size_of_an_awkward_file(tmp_path):
    path = str(tmp_path / "awkward.txt")
    with open(path, "wb") as f:
        f.write(AWKWARD)
    for size in range(1, len(AWKWARD) + 2):
        got, _ = read_all(TextSource(path, split_size=size), 3)
        assert got == reference_lines(AWKWARD), f"split_size={size}"


line_text = st.text(alphabet=st.sampled_from(list("ab \r\té€𝄞")), max_size=12)
a_file = st.tuples(st.lists(st.tuples(line_text, st.sampled_from(["\n", "\r\n"])), max_size=12), st.booleans())


def render(lines: list[tuple[str, str]], final_newline: bool) -> bytes:
    text = "".join(body + end for body, end in lines)
    if lines and not final_newline:
        text = text[: -len(lines[-1][1])]
    return text.encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.lists(a_file, min_size=1, max_size=3), parallelism=st.integers(1, 7),
       split_size=st.one_of(st.none(), st.integers(1, 40)))
def test_every_line_once_in_order(files, parallelism, split_size):
    with tempfile.TemporaryDirectory() as folder:
        paths, expected = [], []
        for n, (lines, final_newline) in enumerate(files):
            data = render(lines, final_newline)
            path = os.path.join(folder, f"f{n}.txt")
            with open(path, "wb") as f:
                f.write(data)
            paths.append(path)
            expected += reference_lines(data)
        # split_size=None: the default plan, with its 4 MiB floor lowered so that these small files split
        # by parallelism as big ones do.
        with mock.patch.object(lines_module, "MIN_SPLIT", 1):
            source = TextSource(paths, split_size=split_size)
            got, instances = read_all(source, parallelism)
        assert got == expected                       # each split in file order, splits in plan order
        assert Counter(line for inst in instances for line in inst) == Counter(expected)   # exactly once


def test_plan_sizes_cover_each_file_once(tmp_path):
    sizes = [0, 1, 10, 1000]
    paths = []
    for i, size in enumerate(sizes):
        p = tmp_path / f"{i}.txt"
        p.write_bytes(b"x\n" * (size // 2) + b"x" * (size % 2))
        paths.append(str(p))
    plan = plan_line_splits(paths, 2, split_size=64)
    assert sum(s.size for s in plan) == sum(sizes)
    assert not any(s.descriptor.path == paths[0] for s in plan)   # an empty file gives no split
    for path, size in zip(paths[1:], sizes[1:]):
        ranges = [s.descriptor for s in plan if s.descriptor.path == path]
        assert ranges[0].start == 0 and ranges[-1].stop == size
        assert all(a.stop == b.start for a, b in zip(ranges, ranges[1:]))


def test_default_split_size_is_a_few_per_instance_within_bounds():
    MiB = lines_module.MiB
    assert lines_module.split_target(1, 4) == lines_module.MIN_SPLIT
    assert lines_module.split_target(1000 * MiB, 2) == lines_module.MAX_SPLIT
    assert lines_module.split_target(160 * MiB, 4) == 10 * MiB


@pytest.mark.parametrize("final", [b"", b"\n", b"\r\n"])
@pytest.mark.parametrize("suffix, opener", [(".gz", gzip.open), (".bz2", bz2.open), (".xz", lzma.open)])
def test_compressed_files_are_one_split_each(tmp_path, suffix, opener, final):
    data = AWKWARD * 50 + final
    path = str(tmp_path / f"data.txt{suffix}")
    with opener(path, "wb") as f:
        f.write(data)
    source = TextSource(path, split_size=10)
    plan = source.plan_splits(4)
    assert len(plan) == 1 and plan[0].size == os.path.getsize(path)
    assert list(source.read_split(plan[0])) == reference_lines(data)


def test_long_lines_cross_read_blocks(tmp_path):
    """Lines longer than the read block, and a boundary inside one."""
    long_line = "é" * (lines_module.BLOCK // 2 + 7)   # two bytes a character: longer than a block
    data = f"short\n{long_line}\n{long_line}\r\nend".encode()
    path = str(tmp_path / "long.txt")
    with open(path, "wb") as f:
        f.write(data)
    for size in (len(data), len(data) // 2, lines_module.BLOCK // 3):
        got, _ = read_all(TextSource(path, split_size=size), 2)
        assert got == ["short", long_line, long_line, "end"], size


def test_other_ascii_compatible_encodings(tmp_path):
    data = "première\r\nligne €\n".encode("cp1252")
    path = str(tmp_path / "latin.txt")
    with open(path, "wb") as f:
        f.write(data)
    got, _ = read_all(TextSource(path, encoding="cp1252", split_size=3), 2)
    assert got == ["première", "ligne €"]


def test_an_encoding_without_byte_newlines_is_refused(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("a\n")
    with pytest.raises(ValueError, match="not ASCII-compatible.*UTF-8"):
        TextSource(str(path), encoding="utf-16")
    with pytest.raises(ValueError, match="unknown encoding 'no-such-codec'"):
        TextSource(str(path), encoding="no-such-codec")


def test_undecodable_bytes_name_the_file_and_line(tmp_path):
    path = str(tmp_path / "bad.txt")
    with open(path, "wb") as f:
        f.write(b"one\ntwo\nthr\xffee\nfour\n")
    source = TextSource(path, split_size=9)   # the bad line is in the second split
    with pytest.raises(InputFormatError, match=r"bad.txt, line 3: cannot decode byte 11 as utf-8") as info:
        read_all(source, 1)
    assert info.value.line == 3
    replaced, _ = read_all(TextSource(path, errors="replace", split_size=9), 1)
    assert replaced == ["one", "two", "thr\ufffdee", "four"]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_split_size_must_be_positive(tmp_path, bad):
    path = tmp_path / "a.txt"
    path.write_text("a\n")
    with pytest.raises(ValueError, match="split_size must be a positive number of bytes"):
        TextSource(str(path), split_size=bad)
