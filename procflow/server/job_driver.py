"""One job of the server: `python -m procflow.server.job_driver --job-id ID --job-dir DIR --target T ...`.

    server (runner.py) ─spawn, new session─► this process ─► LocalEnvironment(env_dir=DIR/logs)
                                               build(env), --parallelism, submit(autostop=False)
                                               every INTERVAL s: DIR/live.json (atomic, 0600)
                                               SIGTERM / SIGINT: graceful stop (sources end, tasks drain)
                                               end: DIR/summary.json, a last live.json, exit code

Exit codes are `procflow run`'s: 0 the job finished, 1 it failed, 2 the target could not be loaded,
130 it was stopped. Output (tracebacks of a pipeline that cannot be built) goes to logs/driver.log.

The driver ends with its server: a parent-death signal (SIGTERM, so the job still stops gracefully) is
armed at start, then the parent is checked, in case the server died before it was armed.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import time
import traceback
from types import FrameType
from typing import Any

from procflow.io.safe_paths import DIR_FLAGS, create_file_at
from procflow.server import paths

INTERVAL = 0.5
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_PR_SET_PDEATHSIG = 1


class StopRequest:
    """Set by SIGTERM / SIGINT; read by the loop that writes live.json (signal handlers only set it)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    def __bool__(self) -> bool:
        return self.signum is not None


def write_json_atomic(folder: str, name: str, data: Any) -> None:
    """`folder/name` replaced in one step (a reader never sees half a file), 0600, no symlink followed."""
    text = json.dumps(data, default=str, allow_nan=False)
    dir_fd = os.open(folder, DIR_FLAGS)
    try:
        tmp = f".{name}.{os.getpid()}.tmp"
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        fd = create_file_at(dir_fd, tmp)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def _end_with_server(server_pid: int) -> None:
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() != server_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def _finite(value: Any) -> Any:
    """JSON without NaN / Infinity (browsers reject them)."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def run(args: argparse.Namespace, stop: StopRequest) -> int:
    from procflow import LocalEnvironment
    from procflow.cli import UsageError, build_pipeline, load_target
    from procflow.core.errors import JobFailedError
    from procflow.server.live import LiveSampler, error_of

    folder = args.job_dir

    def publish(live: dict[str, Any]) -> None:
        write_json_atomic(folder, paths.LIVE_NAME, _finite(live))

    def give_up(code: int, message: str, tb: str) -> int:
        print(tb or message, file=sys.stderr, flush=True)
        publish({"job_id": args.job_id, "status": "failed" if code != EXIT_INTERRUPTED else "stopped",
                 "elapsed": 0.0, "progress": None, "throughput": 0.0, "operators": [], "bottleneck": None,
                 "graph": {"nodes": [], "edges": []}, "history": [], "checkpoints": [],
                 "error": None if code == EXIT_INTERRUPTED else {"task": "", "message": message, "traceback": tb}})
        return code

    try:
        name, build = load_target(args.target)
        env = LocalEnvironment(args.name or name, {"progress": False}, env_dir=os.path.join(folder, paths.LOGS_DIR),
                               checkpoint_dir=args.checkpoint_dir)
        build_pipeline(env, build, args.parallelism)
        graph = env.compile()
    except UsageError as exc:
        return give_up(EXIT_USAGE, f"cannot load {args.target}: {exc}", "")
    except Exception as exc:
        return give_up(EXIT_FAILED, f"the pipeline could not be built: {type(exc).__name__}: {exc}",
                       traceback.format_exc())
    if stop:
        return give_up(EXIT_INTERRUPTED, "stopped before it started", "")
    if args.resume:
        print(f"procflow: resuming from the latest checkpoint in {args.checkpoint_dir}", file=sys.stderr, flush=True)
    with env:
        try:
            job = env.submit(autostop=False, resume=args.resume)
        except Exception as exc:
            return give_up(EXIT_FAILED, f"the job could not start: {type(exc).__name__}: {exc}",
                           traceback.format_exc())
        print(f"procflow: job {args.job_id} running {len(job.metrics)} tasks (runtime job {job.job_id}); "
              f"logs in {job.log_dir}", file=sys.stderr, flush=True)
        live = LiveSampler(job, graph, args.job_id)
        code, failure = EXIT_OK, None
        stopping = False
        while True:
            try:
                job.wait(INTERVAL)
                break
            except TimeoutError:
                pass
            except JobFailedError as exc:
                code, failure = EXIT_FAILED, exc
                break
            if stop and not stopping:
                stopping = True
                print(f"procflow: {signal.Signals(stop.signum or signal.SIGTERM).name}: stopping the job",
                      file=sys.stderr, flush=True)
                publish(live.snapshot())
                try:
                    job.stop(args.stop_timeout)   # graceful; kills the tasks if they do not drain in time
                except JobFailedError as exc:
                    code, failure = EXIT_FAILED, exc
                break
            publish(live.snapshot())
        if stopping and failure is None:
            code = EXIT_INTERRUPTED
        summary = job.summary()
        summary["server_job_id"] = args.job_id
        write_json_atomic(folder, paths.SUMMARY_NAME, _finite(summary))
        status = {EXIT_OK: "succeeded", EXIT_FAILED: "failed", EXIT_INTERRUPTED: "stopped"}[code]
        publish(live.snapshot(status, error_of(failure)))
    if failure is not None:
        print(f"procflow: job failed: {failure}", file=sys.stderr)
        if failure.remote_traceback:
            print(failure.remote_traceback, file=sys.stderr)
    print(f"procflow: job {args.job_id} {status} in {summary['elapsed_s']:.2f}s", file=sys.stderr, flush=True)
    return code


def make_parser() -> argparse.ArgumentParser:
    from procflow.cli import parse_parallelism

    parser = argparse.ArgumentParser(prog="procflow.server.job_driver",
                                     description="Run one job for the procflow server (not for direct use).")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--job-dir", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--name")
    parser.add_argument("--parallelism", type=parse_parallelism, action="append", default=[])
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--server-pid", type=int)
    parser.add_argument("--stop-timeout", type=float, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    os.umask(0o077)
    stop = StopRequest()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)   # no terminal: a hang-up is nobody's request to stop
    if args.server_pid:
        _end_with_server(args.server_pid)
    started = time.monotonic()
    try:
        return run(args, stop)
    finally:
        print(f"procflow: driver ran {time.monotonic() - started:.2f}s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
