"""A batch job over files: web-server logs in JSONL, summarised per endpoint, written as committed JSONL.

`make example-files` runs it: it generates a few hundred MB of logs (`--mb`) in a private temporary
folder, then

    read_jsonl(logs/*.jsonl) ─► keyby(path) ─► map(to_stats) ─► reduce(merge) ─► map(summary) ─► write_jsonl(out/)

Every operator runs at `--parallelism` (default: the machine's cores). The log files are read in
parallel by byte ranges (each line by exactly one reader), and the output appears in `out/` only when
the job has succeeded: one `part-*.jsonl` per writer and a `_SUCCESS` manifest with their record counts.
At the end the script reads the output back, through the manifest, and prints the busiest endpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from typing import Any

from procflow import LocalEnvironment

ENDPOINTS = ("/api/orders", "/api/users", "/api/cart", "/api/search", "/api/payments", "/login", "/logout",
             "/static/app.js", "/static/style.css", "/health", "/admin/reports", "/api/recommendations")
LINE_BYTES = 160   # about, for turning --mb into lines


# -- the logs ------------------------------------------------------------------------------------------

def log_lines(n: int, seed: int):
    """`n` log lines (JSON objects): a popular few endpoints, mostly 200s, latencies with a long tail."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(ENDPOINTS))]
    paths = rng.choices(ENDPOINTS, weights, k=n)
    for i, path in enumerate(paths):
        status = rng.choices((200, 201, 304, 404, 500, 503), (80, 5, 8, 4, 2, 1))[0]
        latency = rng.lognormvariate(3.0, 0.8) * (3 if path.startswith("/admin") else 1)
        yield (f'{{"ts": {1_700_000_000 + i}, "user": "u{rng.randrange(5000)}", "method": '
               f'"{"POST" if path in ("/login", "/api/payments") else "GET"}", "path": "{path}", '
               f'"status": {status}, "latency_ms": {latency:.2f}, "bytes": {rng.randrange(200, 60_000)}}}\n')


def generate(folder: str, mb: float, files: int = 4) -> int:
    """Write about `mb` MB of logs as `files` files named access-<k>.jsonl; returns the number of lines."""
    per_file = max(1, int(mb * 1e6 / LINE_BYTES / files))
    for k in range(files):
        with open(os.path.join(folder, f"access-{k}.jsonl"), "w") as f:
            lines = log_lines(per_file, seed=k)
            while chunk := "".join(line for _, line in zip(range(50_000), lines)):
                f.write(chunk)
    return per_file * files


# -- the job -------------------------------------------------------------------------------------------

def endpoint(log: dict) -> str:
    return log["path"]


def to_stats(log: dict) -> dict[str, Any]:
    """One request as a partial summary; `merge` adds partial summaries up."""
    return {"requests": 1, "errors": int(log["status"] >= 500), "bytes": log["bytes"],
            "latency_sum": log["latency_ms"], "latency_max": log["latency_ms"]}


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {"requests": a["requests"] + b["requests"], "errors": a["errors"] + b["errors"],
            "bytes": a["bytes"] + b["bytes"], "latency_sum": a["latency_sum"] + b["latency_sum"],
            "latency_max": max(a["latency_max"], b["latency_max"])}


def summary(keyed: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """The reduce's (endpoint, stats) as the output row."""
    path, s = keyed
    return {"path": path, "requests": s["requests"], "error_rate": round(s["errors"] / s["requests"], 5),
            "mean_latency_ms": round(s["latency_sum"] / s["requests"], 3),
            "max_latency_ms": s["latency_max"], "mb_sent": round(s["bytes"] / 1e6, 3)}


def build(env: LocalEnvironment, logs: str, out: str, parallelism: int) -> None:
    (env.read_jsonl(os.path.join(logs, "*.jsonl"), parallelism=parallelism)
        .keyby(endpoint)
        .map(to_stats, parallelism=parallelism)
        .reduce(merge, parallelism=parallelism)
        .map(summary, parallelism=parallelism)
        .write_jsonl(out))


def read_output(out: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The committed output: the `_SUCCESS` manifest and every row of the parts it lists."""
    with open(os.path.join(out, "_SUCCESS")) as f:
        manifest = json.load(f)
    rows = []
    for part in manifest["files"]:
        with open(os.path.join(out, part["name"])) as f:
            rows += [json.loads(line) for line in f]
    return manifest, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Summarise generated web logs per endpoint with procflow.")
    parser.add_argument("--mb", type=float, default=300, help="MB of logs to generate (default 300)")
    parser.add_argument("--parallelism", type=int, default=os.cpu_count() or 2, help="tasks per operator")
    parser.add_argument("--out", default=None, help="output folder to keep (default: a temporary one)")
    parser.add_argument("--top", type=int, default=8, help="how many endpoints to print")
    args = parser.parse_args(argv)

    work = tempfile.mkdtemp(prefix="procflow_files_job_")   # 0700: the logs are private
    try:
        logs = os.path.join(work, "logs")
        os.mkdir(logs)
        started = time.perf_counter()
        lines = generate(logs, args.mb)
        size = sum(os.path.getsize(os.path.join(logs, name)) for name in os.listdir(logs))
        print(f"generated {lines:,} log lines, {size / 1e6:.0f} MB in {time.perf_counter() - started:.1f}s")
        out = args.out or os.path.join(work, "out")

        with LocalEnvironment("files_job") as env:
            build(env, logs, out, args.parallelism)
            started = time.perf_counter()
            env.submit(autostop=True)
            elapsed = time.perf_counter() - started

        manifest, rows = read_output(out)
        requests = sum(row["requests"] for row in rows)
        where = out if args.out else "the output folder (temporary; --out keeps one)"
        print(f"read and summarised in {elapsed:.2f}s ({size / 1e6 / elapsed:.0f} MB/s, {args.parallelism} "
              f"tasks per operator); {where} holds {len(manifest['files'])} part(s), {manifest['records']} "
              f"rows, committed with _SUCCESS")
        if requests != lines:
            raise SystemExit(f"the summary counts {requests:,} requests, but {lines:,} were logged")
        print(f"{'endpoint':<22}{'requests':>10}{'errors':>9}{'mean ms':>9}{'max ms':>9}{'MB sent':>10}")
        for row in sorted(rows, key=lambda r: -r["requests"])[: args.top]:
            print(f"{row['path']:<22}{row['requests']:>10,}{row['error_rate']:>9.2%}"
                  f"{row['mean_latency_ms']:>9.1f}{row['max_latency_ms']:>9.0f}{row['mb_sent']:>10.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
