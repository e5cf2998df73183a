"""What a type checker infers for a user's pipeline (issue 17: a generic DataStream[T] for the editor).

mypy runs in this process (its API, no subprocess) on a user-style snippet. Every `assert_type` must
hold, and exactly the lines marked `# error` must be reported: those are the mistakes the types exist
to catch, so a DataStream that quietly became `Any` fails here too. Skipped where mypy is not installed.
"""

from __future__ import annotations

import os
import re
import textwrap

import pytest

mypy_api = pytest.importorskip("mypy.api")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SNIPPET = textwrap.dedent('''\
    from typing import Any

    from typing_extensions import assert_type

    from procflow import BatchFunction, CollectResult, DataStream, FlatMapFunction, LocalEnvironment, MapFunction

    env = LocalEnvironment("typing")
    ints = env.from_batch([1, 2, 3])
    assert_type(ints, DataStream[int])
    assert_type(env.from_batch(range(3)), DataStream[int])
    strs = ints.map(str)
    assert_type(strs, DataStream[str])
    assert_type(ints.map(lambda x: x / 2), DataStream[float])
    assert_type(ints.filter(lambda x: x % 2), DataStream[int])      # any truthy value, as filter() takes
    assert_type(strs.flatmap(lambda s: s.split()), DataStream[str])
    assert_type(ints.keyby(lambda x: x % 3), DataStream[int])
    assert_type(ints.balance(), DataStream[int])
    assert_type(ints.round_robin(), DataStream[int])
    assert_type(ints.sink(print), DataStream[int])
    assert_type(ints.print(), DataStream[int])
    result = strs.collect()
    assert_type(result, CollectResult[str])
    assert_type(result.results(), list[str])
    with LocalEnvironment("typing") as same:
        assert_type(same, LocalEnvironment)


    class Halve(MapFunction[int, float]):
        def execute(self, record: int) -> float:
            return record / 2


    class Letters(FlatMapFunction[str, str]):
        def execute(self, record: str) -> list[str]:
            return list(record)


    class Words(BatchFunction[str]):
        def execute(self) -> str | None:
            return None


    class Untyped(MapFunction):   # a function class without type arguments still works: Any
        def execute(self, record):
            return record


    assert_type(ints.map(Halve), DataStream[float])
    assert_type(ints.map(Halve()), DataStream[float])
    assert_type(strs.flatmap(Letters), DataStream[str])
    assert_type(env.from_batch(Words), DataStream[str])
    assert_type(ints.map(Untyped), DataStream[Any])


    def shout(text: str) -> str:
        return text.upper()


    ints.map(shout)  # error
    strs.map(Halve)  # error
    ints.flatmap(Letters)  # error
    ints.map(str).map(lambda s: s.upper()).map(lambda s: s + 1)  # error
    ''')


def test_mypy_infers_the_record_types_of_a_pipeline(tmp_path):
    snippet = tmp_path / "pipeline.py"
    snippet.write_text(SNIPPET)
    config = tmp_path / "mypy.ini"
    # This checkout's procflow (not an installed copy), checked as a user's code checks it: errors inside
    # procflow itself are `make lint`'s business, hence follow_imports = silent.
    config.write_text(f"[mypy]\npython_version = 3.10\nmypy_path = {REPO}\nfollow_imports = silent\n"
                      "check_untyped_defs = true\nshow_error_codes = true\n")
    stdout, stderr, _ = mypy_api.run([str(snippet), "--config-file", str(config),
                                      "--cache-dir", str(tmp_path / "cache")])
    assert not stderr, stderr
    reported = {}
    for line in stdout.splitlines():
        match = re.match(r".*pipeline\.py:(\d+): error: (.*)", line)
        if match:
            reported.setdefault(int(match.group(1)), []).append(match.group(2))
    expected = {n for n, text in enumerate(SNIPPET.splitlines(), 1) if text.endswith("# error")}
    unexpected = {n: reported[n] for n in sorted(set(reported) - expected)}
    missed = sorted(expected - set(reported))
    assert not unexpected, f"mypy reported errors on lines meant to type-check: {unexpected}\n{stdout}"
    assert not missed, f"mypy accepted lines it should reject: {missed}\n{stdout}"


def test_no_procflow_module_is_exempt_from_the_type_check():
    # Issue 17 exempted the modules being rewritten (`ignore_errors`) and hid 42 errors behind it until
    # the rewrite landed: `make lint` checks every module, and a new exemption has to be argued here.
    try:
        import tomllib
    except ModuleNotFoundError:   # Python 3.10
        tomllib = pytest.importorskip("tomli")
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        mypy_config = tomllib.load(f)["tool"]["mypy"]
    assert not mypy_config.get("ignore_errors", False)
    exempt = [override["module"] for override in mypy_config.get("overrides", [])
              if override.get("ignore_errors", False)]
    assert not exempt, f"modules exempt from mypy in pyproject.toml: {exempt}"
