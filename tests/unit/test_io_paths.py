"""Path expansion of the file sources (procflow/io/paths.py): what a path, a glob, a folder or a list
means, and errors that name what is missing."""

from __future__ import annotations

import os

import pytest

from procflow.io.paths import expand_paths, files_repr


@pytest.fixture
def tree(tmp_path):
    for rel in ("a.txt", "b.txt", "c.log", "sub/d.txt", "_SUCCESS", ".hidden"):
        p = tmp_path / rel
        p.parent.mkdir(exist_ok=True)
        p.write_text(rel)
    return tmp_path


def test_a_path_a_glob_a_folder_and_a_list(tree, monkeypatch):
    assert expand_paths(tree / "a.txt") == [str(tree / "a.txt")]
    assert expand_paths(str(tree / "*.txt")) == [str(tree / "a.txt"), str(tree / "b.txt")]
    assert expand_paths(str(tree / "**" / "*.txt")) == [str(tree / p) for p in ("a.txt", "b.txt", "sub/d.txt")]
    # a folder: its data files, the _SUCCESS manifest and hidden files left out, sub-folders too
    assert expand_paths(tree) == [str(tree / "a.txt"), str(tree / "b.txt"), str(tree / "c.log")]
    # a list keeps its order; a file named twice is read once
    assert expand_paths([tree / "c.log", str(tree / "*.txt"), tree / "a.txt"]) == [
        str(tree / "c.log"), str(tree / "a.txt"), str(tree / "b.txt")]
    monkeypatch.chdir(tree)
    assert expand_paths("a.txt") == [os.path.join(str(tree), "a.txt")]   # absolute, for every process


def test_errors_name_the_missing_path(tree):
    with pytest.raises(FileNotFoundError, match=r"read_text: no such file '.*nope.txt'"):
        expand_paths(str(tree / "nope.txt"), "read_text")
    with pytest.raises(FileNotFoundError, match=r"the pattern '.*\*.csv' matches no file"):
        expand_paths(str(tree / "*.csv"), "read_text")
    (tree / "empty").mkdir()
    (tree / "empty" / "_SUCCESS").write_text("")
    with pytest.raises(FileNotFoundError, match="holds no data file"):
        expand_paths(tree / "empty")
    with pytest.raises(ValueError, match="the list of paths is empty"):
        expand_paths([])
    with pytest.raises(TypeError, match="expected a path, a glob or a list of paths, got int"):
        expand_paths(3)  # type: ignore[arg-type]


def test_a_file_whose_name_looks_like_a_glob(tmp_path):
    odd = tmp_path / "x[1].txt"
    odd.write_text("x")
    assert expand_paths(str(odd)) == [str(odd)]


def test_repr_names_the_first_file_and_how_many_more():
    class Reader:
        pass

    assert files_repr(Reader(), ["/a", "/b", "/c"]) == "Reader('/a' and 2 more)"
    assert files_repr(Reader(), ["/a"]) == "Reader('/a')"
