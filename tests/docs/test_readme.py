"""The README, docs/*.md and bench/README.md, checked by running them (issue 23, item 3).

A reader who followed the README past `make run` met `procflow: command not found` and `No module named
'procflow'`, and the tour printed the metrics of a task that had received nothing. Text that nothing runs
drifts away from the code, so here:

- every fenced python block runs as a script in a temporary folder; a `# ...` line right under a
  `print(...)` is what that print must write, so the output shown is the output got;
- every command the text names, in shell blocks or inline, is checked: `make` targets exist in the
  Makefile, `procflow` commands run as written (with `--help` where they hold placeholders such as
  `module:build`, and then every option they show must be in that help), `python -m` modules and the
  files named exist, and `.venv/bin/...` is where the Makefile installs.

Nothing here installs: no pip, no make target (tests/docs/test_makefile.py runs make against a fake venv).
"""

from __future__ import annotations

import ast
import configparser
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))   # their docstrings name commands too
TOUR_FILE = "tour.py"   # what the README asks the reader to save the tour as

FENCE = re.compile(r"^```(?P<lang>\w*)\n(?P<code>.*?)^```$", re.M | re.S)
SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
# Programs whose commands the docs show; an inline span starting with one of these is a command (those in
# NEED_ARGS only with an argument: "`python`" or "`source`" alone is a word in a sentence).
PROGRAMS = ("make", "procflow", "python", "python3", ".", "source", ".ci/run", ".venv/bin/")
NEED_ARGS = ("python", "python3", ".", "source")
TIMEOUT = 120


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    lang: str
    code: str

    def __str__(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def fenced_blocks(doc: Path) -> list[Block]:
    text = doc.read_text()
    return [Block(doc, text.count("\n", 0, m.start()) + 1, m.group("lang"), m.group("code"))
            for m in FENCE.finditer(text)]


def is_command(line: str) -> bool:
    words = line.split()
    if not words or (words[0] in NEED_ARGS and len(words) == 1):
        return False
    return any(words[0] == p or (p.endswith("/") and words[0].startswith(p)) for p in PROGRAMS)


def shell_lines(block: Block) -> list[str]:
    """The commands of a shell block: a bash block, or an unlabelled one made only of commands (not a
    diagram); comments dropped."""
    lines = [line.split(" #", 1)[0].strip() for line in block.code.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if block.lang in ("bash", "sh", "shell") or (block.lang == "" and lines and all(map(is_command, lines))):
        return lines
    return []


def without_fences(text: str) -> str:
    return FENCE.sub("", text)


def inline_commands() -> list[tuple[str, str]]:
    """(where, command) for every inline code span that is a command, and every shell-block line."""
    found: dict[str, str] = {}
    for doc in DOCS:
        for block in fenced_blocks(doc):
            for line in shell_lines(block):
                found.setdefault(line, str(block))
        for span in SPAN.findall(without_fences(doc.read_text())):
            if is_command(span):
                found.setdefault(span.strip(), str(doc.relative_to(ROOT)))
    for example in EXAMPLES:
        for span in SPAN.findall(example.read_text()):
            if is_command(span):
                found.setdefault(span.strip(), str(example.relative_to(ROOT)))
    return sorted((where, cmd) for cmd, where in found.items())


def expected_output(code: str) -> list[str]:
    """The `# ...` line under each top-level print(...): what the block must print, in order."""
    lines = code.splitlines()
    return [below[2:] for line, below in zip(lines, lines[1:])
            if line.startswith("print(") and below.startswith("# ")]


def reader_env(tmp_path: Path) -> dict[str, str]:
    """This checkout's procflow on the path, and logs and state kept inside the test's folder."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path), "HOME": str(home),
            "XDG_STATE_HOME": str(home / "state"), "XDG_CACHE_HOME": str(home / "cache")}


def run(args: list[str], tmp_path: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=reader_env(tmp_path), capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def run_python_block(block: Block, tmp_path: Path, name: str = "snippet.py") -> list[str]:
    script = tmp_path / name
    script.write_text(block.code)
    out = run([sys.executable, name], tmp_path, cwd=tmp_path)
    assert out.returncode == 0, f"the python block at {block} failed:\n{out.stderr[-3000:]}"
    return out.stdout.splitlines()


# -- what the repository offers -------------------------------------------------------------------

@cache
def makefile() -> str:
    return (ROOT / "Makefile").read_text()


@cache
def make_targets() -> frozenset[str]:
    return frozenset(re.findall(r"^([a-z][\w-]*):", makefile(), re.M))


@cache
def venv_dir() -> str:
    found = re.search(r"^VENV\s*\?=\s*(\S+)", makefile(), re.M)
    assert found, "the Makefile no longer sets VENV ?= ...; the docs' .venv paths need it"
    return found.group(1)


@cache
def console_scripts() -> frozenset[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    entries = cfg.get("options.entry_points", "console_scripts", fallback="")
    return frozenset(line.split("=")[0].strip() for line in entries.splitlines() if "=" in line)


@cache
def procflow_help(*subcommand: str) -> str:
    out = subprocess.run([sys.executable, "-m", "procflow.cli", *subcommand, "--help"], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode == 0, f"procflow {' '.join(subcommand)} --help failed:\n{out.stderr[-2000:]}"
    return out.stdout


def check_options_in_help(words: list[str], help_text: str, command: str) -> None:
    """Every `--option` the text shows, and each alternative of `a|b`, is in the command's help."""
    for word in words:
        if word.startswith("--"):
            option = word.split("=")[0]
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text), \
                f"`{command}`: {option} is not an option of it (see its --help)"
        elif "|" in word:
            for choice in word.split("|"):
                assert choice in help_text, f"`{command}`: {choice!r} is not among its choices (see its --help)"


def is_concrete_target(word: str) -> bool:
    """A TARGET that names a real file of this repository (`examples/wordcount.py:pipeline`), as
    opposed to a placeholder like `module:build`."""
    path = word.rpartition(":")[0]
    return path.endswith(".py") and (ROOT / path).is_file()


# -- the checks --------------------------------------------------------------------------------------

def check_command(command: str, tmp_path: Path) -> None:
    words = shlex.split(command)
    program, args = words[0], words[1:]
    if program in (".", "source"):
        assert args == [f"{venv_dir()}/bin/activate"], f"`{command}`: the Makefile's venv is {venv_dir()}"
        assert "-m venv $(VENV)" in makefile(), "the Makefile no longer creates $(VENV) with python -m venv"
    elif program.startswith(".venv/bin/"):
        assert program.startswith(f"{venv_dir()}/bin/"), f"`{command}`: the Makefile's venv is {venv_dir()}"
        name = program.rsplit("/", 1)[1]
        assert name in {"python", "python3"} | console_scripts(), \
            f"`{command}`: {name} is neither python nor a console script of setup.cfg"
        if args or name not in ("python", "python3"):
            check_command(" ".join([name, *args]) if args else f"{name} --help", tmp_path)
    elif program == "make":
        missing = [a for a in args if "=" not in a and not a.startswith("-") and a not in make_targets()]
        assert not missing, f"`{command}`: no such Makefile target(s) {missing}; there are {sorted(make_targets())}"
    elif program == ".ci/run":
        assert os.access(ROOT / program, os.X_OK), f"`{command}`: {program} is missing or not executable"
    elif program in ("python", "python3"):
        if args[:1] == ["-m"]:
            module = args[1]
            assert importlib.util.find_spec(module) is not None, f"`{command}`: no module {module}"
            if args[2:] == ["--help"]:
                out = run([sys.executable, *args], tmp_path, cwd=ROOT)
                assert out.returncode == 0, f"`{command}` failed:\n{out.stderr[-2000:]}"
        else:
            script = args[0]
            assert script == TOUR_FILE or (ROOT / script).is_file(), f"`{command}`: no file {script}"
    elif program == "procflow":
        assert "procflow" in console_scripts(), "setup.cfg no longer installs the procflow command"
        sub = [w for w in args[:1] if not w.startswith("-")]
        rest = args[len(sub):]
        if sub and rest and is_concrete_target(rest[0]) and not any("|" in w for w in rest):
            # As written, from the repository root (where the README's paths lead).
            out = run([sys.executable, "-m", "procflow.cli", *args], tmp_path, cwd=ROOT)
            assert out.returncode == 0, f"`{command}` failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
        else:
            check_options_in_help(rest, procflow_help(*sub), command)
    else:
        raise AssertionError(f"`{command}`: no check for {program}; add one to tests/docs/test_readme.py")


def all_python_blocks() -> list[Block]:
    return [b for doc in DOCS for b in fenced_blocks(doc) if b.lang == "python"]


@pytest.mark.timeout(2 * TIMEOUT)
@pytest.mark.parametrize("block", all_python_blocks(), ids=str)
def test_python_block_runs_and_prints_what_it_shows(block, tmp_path):
    printed = run_python_block(block, tmp_path)
    assert printed == expected_output(block.code), f"the python block at {block} printed something else"


@pytest.mark.timeout(2 * TIMEOUT)
@pytest.mark.parametrize(("where", "command"), inline_commands(), ids=lambda v: v)
def test_command_named_in_the_docs_works(where, command, tmp_path):
    check_command(command, tmp_path)


def test_the_docs_name_commands_at_all():
    # Guards the extraction itself: a regex that silently stopped matching would make the tests above vacuous.
    commands = {cmd for _, cmd in inline_commands()}
    assert {"make run", "make test", ". .venv/bin/activate", ".venv/bin/procflow", "make shell"} <= commands
    assert any(cmd.startswith("procflow run examples/") for cmd in commands)
    assert len(all_python_blocks()) >= 3


def test_readme_bare_options_belong_to_the_procflow_command():
    """`--queue shm|mp` and the like, shown on their own in the README's command-line section."""
    help_text = procflow_help("run") + procflow_help("graph")
    for span in SPAN.findall(without_fences((ROOT / "README.md").read_text())):
        if span.startswith("--"):
            check_options_in_help(span.split(), help_text, span)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_relative_links_lead_to_files(doc):
    for target in LINK.findall(doc.read_text()):
        if "://" in target or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{doc.relative_to(ROOT)} links to {target}, which does not exist"


def test_the_first_commands_are_make_run_and_make_test():
    first = fenced_blocks(ROOT / "README.md")[0]
    assert first.line <= 3 and shell_lines(first) == ["make run", "make test"]


def test_readme_says_where_the_commands_are_installed():
    """After `make run`, `procflow` and `python3 tour.py` failed: nothing said that they live in .venv.
    The reader must learn it before the first command that needs it."""
    text = (ROOT / "README.md").read_text()
    first_need = min(text.index("## Five-minute tour"), text.index("`procflow "))
    before = text[:first_need]
    assert f"`. {venv_dir()}/bin/activate`" in before and f"`{venv_dir()}/bin/procflow`" in before
    assert f"Save this as `{TOUR_FILE}`" in text


def tour_block() -> Block:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start = text.index("## Five-minute tour")
    return next(b for b in fenced_blocks(readme) if b.lang == "python"
                and text.count("\n", 0, start) < b.line)


@pytest.mark.timeout(2 * TIMEOUT)
def test_tour_runs_as_the_reader_runs_it_and_its_metrics_read_naturally(tmp_path):
    """The tour, saved as tour.py in an empty folder and run there. Its per-task figures once showed
    map_0 with 0 records in, because every key of the example hashed to map_1 (issue 23, item 7): the
    keyed map's instances must all get words, or the output reads as a bug."""
    block = tour_block()
    printed = run_python_block(block, tmp_path, TOUR_FILE)
    assert printed == expected_output(block.code)
    per_task = [ast.literal_eval(line) for line in printed if line.startswith("{")]
    maps = {task: n for d in per_task for task, n in d.items() if task.startswith("map_")}
    assert len(maps) >= 2, f"the tour should show records in per task, keyed map tasks included: {printed}"
    assert all(n > 0 for n in maps.values()), f"a keyed map task of the tour got no records: {maps}"
