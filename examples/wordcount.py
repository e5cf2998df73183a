"""Word count over a generated text: the pipeline `make run` shows.

Run it through the procflow command too: `procflow run examples/wordcount.py:pipeline --dashboard`.

    from_batch(lines) ─► flatmap(split, p=2) ─► keyby(word) ─► reduce(+, p=2) ─► collect
"""

from __future__ import annotations

import argparse
import random
import time

from procflow import FlatMapFunction, LocalEnvironment

VOCABULARY = ("stream task ring queue batch record key join map filter sink source process memory "
              "shared signal operator router parallel python").split()


def generate_lines(n_lines: int, words_per_line: int = 12, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(VOCABULARY))]   # Zipf-like, as real text is
    return [" ".join(rng.choices(VOCABULARY, weights, k=words_per_line)) for _ in range(n_lines)]


class Split(FlatMapFunction):
    def execute(self, line: str):
        return line.lower().split()


def build(env: LocalEnvironment, lines: list[str], parallelism: int = 2):
    """Split lines into words, key by word, count with a keyed reduce; returns the collect handle.

    The key chosen by keyby stays with each record through the map, so every occurrence of a word
    meets in one reduce task, which emits one (word, count) per word at end of input. The maps
    pre-reduce on the way (a combiner: `+` is associative), so what reaches the reduce is one partial
    count per word and map task, not one record per occurrence.
    """
    words = env.from_batch(lines).flatmap(Split, parallelism=parallelism)
    ones = words.keyby(lambda w: w).map(lambda w: 1, parallelism=parallelism)
    return ones.reduce(lambda total, one: total + one, parallelism=parallelism).collect()


def pipeline(env: LocalEnvironment, n_lines: int = 20_000):
    """`procflow run examples/wordcount.py:pipeline`: the word count over a generated text."""
    return build(env, generate_lines(n_lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Count words of a generated text with procflow.")
    parser.add_argument("--lines", type=int, default=200_000, help="lines of generated text")
    parser.add_argument("--parallelism", type=int, default=2, help="tasks per operator")
    parser.add_argument("--top", type=int, default=10, help="how many words to print")
    args = parser.parse_args(argv)

    lines = generate_lines(args.lines)
    with LocalEnvironment("wordcount") as env:
        result = build(env, lines, args.parallelism)
        started = time.perf_counter()
        job = env.submit(autostop=True)
        elapsed = time.perf_counter() - started
    totals = dict(result.results())
    n_words = sum(totals.values())
    print(f"{args.lines:,} lines, {n_words:,} words in {elapsed:.2f}s "
          f"({n_words / elapsed:,.0f} words/s through {len(job.metrics)} tasks)")
    for word, count in sorted(totals.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{word:>10} {count:>9,}")


if __name__ == "__main__":
    main()
