"""The job server's commands: `procflow serve`, and the clients `submit / list / status / stop / logs /
wait`. cli.py registers them (`add_server_commands`); each client command makes one connection to the
server's socket and prints what it answers.

Exit codes: 0 done; 1 the server is not there or refused; 2 bad usage (unknown job, bad target);
`procflow wait` exits with the job's own code: 0 succeeded, 1 failed (or lost), 130 stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from procflow.server.protocol import UNKNOWN_JOB, Client, RequestError, ServerUnavailable

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
FOLLOW_INTERVAL = 0.5


# -- serve ------------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from procflow.core.errors import UnsafePathError
    from procflow.server.socket_server import ServeError, ServeOptions, serve

    options = ServeOptions(socket=args.socket, state_dir=args.state_dir, max_jobs=args.max_jobs, cores=args.cores,
                           http=args.http, stop_grace=args.stop_grace)
    try:
        return serve(options)
    except (ServeError, UnsafePathError, ValueError, OSError) as exc:
        # OSError: the socket could not be bound (a race for its path), the state folder is unreadable...
        print(f"procflow serve: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _http_arg(text: str) -> tuple[str, int]:
    from procflow.server.socket_server import parse_http

    try:
        return parse_http(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return n


# -- clients -----------------------------------------------------------------------------------------


def _client_command(fn: Callable[[argparse.Namespace, Client], int]) -> Callable[[argparse.Namespace], int]:
    """Connect, run the command, and turn the server's refusals into a message and an exit code."""

    def run(args: argparse.Namespace) -> int:
        # `python -m procflow.cli` runs cli.py as __main__: its UsageError is not the one load_target raises.
        from procflow.cli import UsageError
        from procflow.server.paths import socket_path

        try:
            with Client(socket_path(args.socket)) as client:
                return fn(args, client)
        except ServerUnavailable as exc:
            print(f"procflow {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except RequestError as exc:
            print(f"procflow {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE if exc.kind == UNKNOWN_JOB else EXIT_FAILED
        except UsageError as exc:
            print(f"procflow {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE

    return run


def _absolute_target(target: str) -> str:
    """A file target made absolute: the job runs in this folder, but a later `cd` must not matter."""
    module, sep, attr = target.rpartition(":")
    if not sep:
        module, attr = target, ""
    if module.endswith(".py") or os.sep in module:
        module = os.path.abspath(module)
    return f"{module}{sep}{attr}" if sep else module


def _task_count(args: argparse.Namespace) -> tuple[str, int]:
    """Build the pipeline here (nothing runs) for its default name and the number of task processes it
    starts: what it counts against the server's --cores. A target that cannot load fails here, early."""
    from procflow import LocalEnvironment
    from procflow.cli import build_pipeline, load_target

    name, build = load_target(args.target)
    env = LocalEnvironment(args.name or name)
    build_pipeline(env, build, args.parallelism)
    return args.name or name, len(env.compile().heads())


def cmd_submit(args: argparse.Namespace, client: Client) -> int:
    name, tasks = _task_count(args)
    record = client.call("submit", target=_absolute_target(args.target), name=name,
                         parallelism=dict(args.parallelism), checkpoint_dir=(
                             os.path.abspath(args.checkpoint_dir) if args.checkpoint_dir else None),
                         cores=args.cores or tasks, cwd=os.getcwd())
    print(record["id"], flush=True)
    print(f"procflow: job {record['id']} queued ({tasks} tasks); follow it with `procflow status {record['id']}` "
          f"or `procflow wait {record['id']}`", file=sys.stderr)
    return EXIT_OK


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _duration(record: dict[str, Any]) -> str:
    start, end = record["started_at"], record["finished_at"]
    if start is None:
        return "-"
    return f"{(end if end is not None else time.time()) - start:.1f}s"


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def cmd_list(args: argparse.Namespace, client: Client) -> int:
    jobs = client.call("list")
    if args.json:
        print(json.dumps(jobs, indent=2))
        return EXIT_OK
    if not jobs:
        print("no jobs yet; submit one with `procflow submit module:build`")
        return EXIT_OK
    rows = [("ID", "NAME", "STATUS", "SUBMITTED", "RAN", "EXIT", "ERROR")]
    for job in jobs:
        err = (job["error"] or "").splitlines()[0] if job["error"] else ""
        rows.append((job["id"], job["name"], job["status"], _when(job["submitted_at"]), _duration(job),
                     "-" if job["exit_code"] is None else str(job["exit_code"]),
                     err if len(err) <= 60 else err[:57] + "..."))
    print(_table(rows))
    return EXIT_OK


def format_status(job: dict[str, Any]) -> str:
    from procflow.cli import format_summary

    lines = [f"job {job['id']} ({job['name']}): {job['status']}",
             f"  target     {job['target']}",
             f"  submitted  {_when(job['submitted_at'])}   started {_when(job['started_at'])}   "
             f"finished {_when(job['finished_at'])}   ran {_duration(job)}"]
    if job["exit_code"] is not None:
        lines.append(f"  exit code  {job['exit_code']}")
    if job["error"]:
        lines.append(f"  error      {job['error']}")
    live = job.get("live")
    if live and job["status"] == "running":
        progress = live.get("progress")
        done = ""
        if progress and progress.get("fraction") is not None:
            eta = progress.get("eta_s")
            done = f", {100 * progress['fraction']:.0f}% done" + (f", ETA {eta:.0f}s" if eta is not None else "")
        lines.append(f"  live       {live['elapsed']:.1f}s, {live['throughput']:,.0f} records/s{done}, "
                     f"bottleneck {live['bottleneck'] or '-'}")
        rows = [("operator", "tasks", "in", "out", "rate/s", "busy %", "cpu %", "fill %", "errors")]
        for op in live["operators"]:
            rows.append((op["name"], str(op["tasks"]), f"{op['records_in']:,}", f"{op['records_out']:,}",
                         f"{op['rate']:,.0f}", f"{op['busy_pct']:.1f}",
                         "-" if op["cpu_pct"] is None else f"{op['cpu_pct']:.1f}",
                         "-" if op["fill_pct"] is None else f"{op['fill_pct']:.1f}", str(op["errors"])))
        lines += ["    " + line for line in _table(rows).splitlines()]
    error = (live or {}).get("error")
    if error and error.get("traceback"):
        lines.append("  remote traceback:")
        lines += ["    " + line for line in error["traceback"].rstrip().splitlines()]
    summary = job.get("summary")
    if summary and isinstance(summary.get("operators"), dict):
        lines.append("")
        # Named by the server's job id: the runtime's own id (in the log folder's name) would confuse.
        lines.append(format_summary(dict(summary, job_id=job["id"])))
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace, client: Client) -> int:
    job = client.call("status", id=args.job_id)
    print(json.dumps(job, indent=2) if args.json else format_status(job))
    return EXIT_OK


def cmd_stop(args: argparse.Namespace, client: Client) -> int:
    job = client.call("stop", id=args.job_id)
    word = "stopping" if job["status"] == "running" else job["status"]
    print(f"procflow: job {job['id']} {word}", file=sys.stderr)
    return EXIT_OK


def _pick_logs(names: list[str], task: str | None) -> list[str]:
    if task is None:
        return names
    return [n for n in names if os.path.basename(n).startswith(f"{task}_") or os.path.basename(n) == f"{task}.log"]


def cmd_logs(args: argparse.Namespace, client: Client) -> int:
    offsets: dict[str, int] = {}
    last_name: str | None = None
    while True:
        # Whether the job has ended is asked first: what it wrote before ending is then read below.
        ended = client.call("status", id=args.job_id)["status"] not in ("queued", "running") if args.follow else True
        names = client.call("logs", id=args.job_id)
        picked = _pick_logs(names, args.task)
        if not picked and not args.follow:
            if args.task is not None:
                tasks = sorted({os.path.basename(n).rsplit("_", 1)[0] for n in names if n.endswith("_info.log")})
                print(f"procflow logs: error: job {args.job_id} has no log for task {args.task!r}; its tasks: "
                      f"{', '.join(tasks) or 'none yet'} (and 'driver', 'Dispatcher', 'Error')", file=sys.stderr)
                return EXIT_USAGE
            return EXIT_OK
        for name in picked:
            while True:
                reply = client.call("read_log", id=args.job_id, name=name, offset=offsets.get(name, 0))
                if reply["offset"] == offsets.get(name, 0):
                    break
                offsets[name] = reply["offset"]
                if len(picked) > 1 and name != last_name:
                    print(f"==> {name} <==", flush=True)
                    last_name = name
                sys.stdout.write(reply["text"])
                sys.stdout.flush()
        if ended:
            return EXIT_OK
        time.sleep(FOLLOW_INTERVAL)   # following a file: nothing signals new lines, so it is polled


def cmd_wait(args: argparse.Namespace, client: Client) -> int:
    job = client.call("wait", id=args.job_id, timeout=None)
    suffix = f": {job['error']}" if job["error"] else ""
    print(f"procflow: job {job['id']} {job['status']} (exit code {job['exit_code']}){suffix}", file=sys.stderr)
    return int(job["exit_code"]) if job["exit_code"] is not None else EXIT_FAILED


# -- registration ----------------------------------------------------------------------------------------


def add_server_commands(sub: Any, parse_parallelism: Callable[[str], tuple[str, int]]) -> None:
    """Add `serve`, `submit`, `list`, `status`, `stop`, `logs` and `wait` to the `procflow` command."""

    def socket_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--socket", metavar="PATH",
                       help="the server's Unix socket (default: $XDG_RUNTIME_DIR/procflow/server.sock, else "
                            "server.sock in the state folder)")

    serve = sub.add_parser(
        "serve", help="run the job server: queue jobs, run each in its own driver process",
        description="Run the procflow job server on a Unix socket (mode 0600). It queues submitted jobs and "
                    "runs each in a driver process of its own (a job's crash cannot take the server down); "
                    "job state is kept in SQLite, so a restarted server lists past jobs. SIGTERM or Ctrl-C "
                    "stops every running job and exits.")
    socket_option(serve)
    serve.add_argument("--state-dir", metavar="DIR",
                       help="where jobs.sqlite and the jobs' folders live (default: $XDG_STATE_HOME/procflow, "
                            "else ~/.local/state/procflow; made 0700)")
    serve.add_argument("--max-jobs", type=_positive, default=1, metavar="N",
                       help="jobs that run at once (default 1: a job uses the whole machine); the rest wait in "
                            "FIFO order")
    serve.add_argument("--cores", type=_positive, default=None, metavar="N",
                       help="task processes that run at once, summed over running jobs (default: the number of "
                            "CPUs); a job counts its task count, or its submit --cores")
    serve.add_argument("--http", type=_http_arg, metavar="127.0.0.1:PORT",
                       help="also serve the web dashboard and JSON API on this loopback address "
                            "(needs pip install 'procflow[web]')")
    serve.add_argument("--stop-grace", type=float, default=10.0, metavar="SECONDS",
                       help="how long a stopped job may drain before it is killed (default 10)")
    serve.set_defaults(func=cmd_serve)

    submit = sub.add_parser("submit", help="queue a job on the server; prints its id",
                            description="Queue TARGET (module:function, as for `procflow run`) on the server. "
                                        "The job runs in this folder, in a process of its own, and keeps "
                                        "running when this command or the terminal goes away.")
    submit.add_argument("target", metavar="TARGET", help="module:function that builds the pipeline on an env")
    submit.add_argument("--parallelism", "-p", metavar="OP=N", type=parse_parallelism, action="append",
                        default=[], help="run operator OP with N parallel tasks (repeatable)")
    submit.add_argument("--name", help="the job's name (default: the module's name)")
    submit.add_argument("--checkpoint-dir", metavar="DIR",
                        help="take checkpoints into DIR (local backend); a job the server was running when it "
                             "stopped resumes from them when the server starts again")
    submit.add_argument("--cores", type=_positive, metavar="N",
                        help="cores the job counts against the server's --cores (default: its task count)")
    socket_option(submit)
    submit.set_defaults(func=_client_command(cmd_submit))

    listing = sub.add_parser("list", help="list the server's jobs, newest first")
    listing.add_argument("--json", action="store_true", help="print JSON")
    socket_option(listing)
    listing.set_defaults(func=_client_command(cmd_list))

    status = sub.add_parser("status", help="show a job: state, timings, live figures, error, summary")
    status.add_argument("job_id", metavar="ID")
    status.add_argument("--json", action="store_true", help="print JSON (the record, live.json and the summary)")
    socket_option(status)
    status.set_defaults(func=_client_command(cmd_status))

    stop = sub.add_parser("stop", help="stop a job: gracefully (sources end, tasks drain), then by force")
    stop.add_argument("job_id", metavar="ID")
    socket_option(stop)
    stop.set_defaults(func=_client_command(cmd_stop))

    logs = sub.add_parser("logs", help="print a job's logs (driver.log, Dispatcher.log, <task>_info.log, ...)")
    logs.add_argument("job_id", metavar="ID")
    logs.add_argument("--task", "-t", metavar="TASK",
                      help="only this task's logs (e.g. map_0; 'driver' for the driver's output)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until the job ends")
    socket_option(logs)
    logs.set_defaults(func=_client_command(cmd_logs))

    wait = sub.add_parser("wait", help="wait for a job to end; exits with its exit code",
                          description="Wait until the job ends, then exit with its code: 0 succeeded, 1 failed "
                                      "(or lost), 130 stopped.")
    wait.add_argument("job_id", metavar="ID")
    socket_option(wait)
    wait.set_defaults(func=_client_command(cmd_wait))
