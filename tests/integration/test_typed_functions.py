"""Function classes with type arguments (issue 17: typed for the editor) run exactly like plain ones.

`MapFunction[int, float]` and the like are generic for type checkers only; here they are shipped to
task processes (pickled by reference under spawn) and run, next to an untyped class.
"""

from __future__ import annotations

import pytest

from procflow import (
    BatchFunction,
    FilterFunction,
    FlatMapFunction,
    LocalEnvironment,
    MapFunction,
    SinkFunction,
)

pytestmark = pytest.mark.timeout(60)


class Countdown(BatchFunction[int]):
    def __init__(self, start: int) -> None:
        self.left = start

    def execute(self) -> int | None:
        if self.left == 0:
            return None
        self.left -= 1
        return self.left


class Odd(FilterFunction[int]):
    def execute(self, record: int) -> bool:
        return record % 2 == 1


class Halve(MapFunction[int, float]):
    def execute(self, record: int) -> float:
        return record / 2


class Digits(FlatMapFunction[float, str]):
    def execute(self, record: float) -> list[str]:
        return [c for c in str(record) if c.isdigit()]


class Untyped(MapFunction):
    def execute(self, record):
        return int(record)


class Discard(SinkFunction[int]):
    def execute(self, record: int) -> None:
        pass


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_function_classes_with_type_arguments_run_like_plain_ones(env_dir, start_method):
    with LocalEnvironment("typed", start_method=start_method, env_dir=env_dir) as env:
        digits = env.from_batch(Countdown, 10).filter(Odd).map(Halve).flatmap(Digits).map(Untyped)
        digits.sink(Discard)
        result = digits.collect()
        env.submit()
    # 9, 7, 5, 3, 1 halved: 4.5, 3.5, 2.5, 1.5, 0.5 -> their digits
    assert sorted(result.results()) == sorted([4, 5, 3, 5, 2, 5, 1, 5, 0, 5])
