"""The `procflow` command: run a pipeline and see where its time goes, or draw its execution graph.

    procflow run   TARGET [options]   build the pipeline with TARGET(env), run it, print the job summary
    procflow graph TARGET [options]   print the execution graph as text, or write it as DOT / Mermaid
    procflow serve / submit / list / status / stop / logs / wait   the job server (procflow/server/)

TARGET is `module:function` (a dotted module, or a path to a .py file); the function receives a fresh
environment and adds operators to it, e.g. `def build(env): env.from_batch(range(10)).map(f).print()`.

Exit codes: 0 success, 1 the job failed (or the pipeline could not be built), 2 bad usage (unknown option,
module or operator), 130 interrupted (Ctrl-C, SIGTERM, or SIGHUP from a closed terminal).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """The command line names something that does not exist (exit code 2)."""


# -- loading the pipeline ---------------------------------------------------------------------------


def load_target(target: str) -> tuple[str, Callable[[Any], Any]]:
    """`module:function` -> (a name for the environment, the function). The function defaults to `build`."""
    module_part, sep, attr = target.rpartition(":")
    if not sep:
        module_part, attr = target, "build"
    if not module_part or not attr:
        raise UsageError(f"target {target!r} should look like 'package.module:build' or 'path/to/file.py:build'")
    if module_part.endswith(".py") or os.sep in module_part:
        path = os.path.abspath(module_part)
        if not os.path.isfile(path):
            raise UsageError(f"no such file: {module_part}")
        name = os.path.splitext(os.path.basename(path))[0]
        # As `python file.py` does: the file's folder goes on sys.path, so its sibling imports work (and a
        # spawned task process can import the module by name).
        sys.path.insert(0, os.path.dirname(path))
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise UsageError(f"cannot load {module_part} as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        # As `python -m` does: the current folder is importable.
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as exc:
            if exc.name and module_part.startswith(exc.name):
                raise UsageError(f"no module named {module_part!r} (from {target!r}); give a dotted module "
                                 "importable from here or a path to a .py file") from exc
            raise
        name = module_part.rsplit(".", 1)[-1]
    function = getattr(module, attr, None)
    if function is None:
        raise UsageError(f"{module_part} has no attribute {attr!r}")
    if not callable(function):
        raise UsageError(f"{module_part}:{attr} is not callable (a function taking the environment is needed)")
    return name, function


def parse_parallelism(text: str) -> tuple[str, int]:
    op, sep, value = text.partition("=")
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not sep or not op or n < 1:
        raise argparse.ArgumentTypeError(f"expected OPERATOR=N with N >= 1, got {text!r}")
    return op, n


def make_env(backend: str, name: str, config: dict, env_dir: str | None, checkpoint_dir: str | None = None) -> Any:
    if backend == "ray":
        from procflow import RayEnvironment

        return RayEnvironment(name, config, env_dir=env_dir, checkpoint_dir=checkpoint_dir)
    from procflow import LocalEnvironment

    return LocalEnvironment(name, config, env_dir=env_dir, checkpoint_dir=checkpoint_dir)


def build_pipeline(env: Any, build: Callable[[Any], Any], overrides: list[tuple[str, int]]) -> Any:
    built = build(env)
    for op, n in overrides:
        if op not in env.operator_names:
            raise UsageError(f"--parallelism {op}={n}: no operator named {op!r}; the pipeline has "
                             f"{', '.join(env.operator_names)}")
        env.set_parallelism(op, n)
    return built


# -- the job summary --------------------------------------------------------------------------------


def format_summary(summary: dict) -> str:
    """The end-of-job report: records, time, the job's rate, one line per operator, the bottleneck."""
    ops = summary["operators"]
    emitted, completed = summary["source_records"], summary["completed_records"]
    # The rate is the job's (records through the whole pipeline per second); after a stop or a kill the
    # sources have emitted more than went through, which the header says.
    through = f" ({completed:,} through the pipeline)" if completed != emitted else ""
    lines = [f"job {summary['job_id']} {summary['status']} in {summary['elapsed_s']:.2f}s: "
             f"{emitted:,} records from sources{through}, {summary['throughput_rps']:,.0f} records/s"]
    header = ("operator", "tasks", "in", "out", "rate/s", "busy %", "cpu %", "blocked %", "errors", "")
    rows = [header]
    for name, op in ops.items():
        cpu = op.get("cpu_pct")
        rows.append((name, str(op["tasks"]), f"{op['records_in']:,}", f"{op['records_out']:,}",
                     f"{op['rate_rps']:,.0f}", f"{op['busy_pct']:.1f}", "-" if cpu is None else f"{cpu:.1f}",
                     f"{op['blocked_pct']:.1f}", str(op["errors"]),
                     "<- bottleneck" if name == summary["bottleneck"] else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    last = len(header) - 1
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i in (0, last) else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    if summary["bottleneck"] is not None:
        op = ops[summary["bottleneck"]]
        lines.append(f"bottleneck: {summary['bottleneck']} (busy {op['busy_pct']:.1f}% of the job's time "
                     f"across its {op['tasks']} task(s); try --parallelism {summary['bottleneck']}="
                     f"{op['tasks'] * 2})")
    for name in summary.get("uneven", ()):
        op = ops[name]
        lines.append(f"uneven: {name}'s {op['tasks']} tasks finished {op['finish_spread_s']:.2f}s apart (round robin "
                     f"gives each the same number\n        of records, so the fast ones sat idle); drop the "
                     f"round robin before {name} (the default, .balance(), sends each record to a free task)")
    lines.append(f"logs: {summary['log_dir']}")
    return "\n".join(lines)


def write_report(path: str, summary: dict) -> None:
    with open(path, "w") as f:
        json.dump(summary, f, indent=2, default=str)
        f.write("\n")


# -- commands --------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from procflow.api.environment import stop_signals_interrupt
    from procflow.core.errors import JobFailedError

    name, build = load_target(args.target)
    config: dict[str, Any] = {}
    if args.queue:
        config["queue"] = args.queue
    if args.log_level:
        config["log_level"] = args.log_level
    if args.dashboard or args.progress is False:
        config["progress"] = False   # the dashboard shows progress itself
    elif args.progress:
        config["progress"] = True
    if args.resume and not args.checkpoint_dir:
        raise UsageError("--resume continues from the checkpoints in --checkpoint-dir DIR; give the folder the "
                         "interrupted run used")
    if args.checkpoint_interval is not None:
        config["checkpoint_interval"] = args.checkpoint_interval
    env = make_env(args.backend, args.name or name, config, args.env_dir, args.checkpoint_dir)
    # SIGTERM and SIGHUP (a closed terminal) stop the job like Ctrl-C: at their default action they
    # ended this process at once and left the job's shared memory behind (issue 23.5).
    with env, stop_signals_interrupt():
        built = build_pipeline(env, build, args.parallelism)
        job = env.submit(autostop=False, resume=args.resume)
        code, error = EXIT_OK, None
        try:
            # Inside the try: a Ctrl-C right after this line must still stop the job and print the summary.
            print(f"procflow: job {job.job_id} running {len(job.metrics)} tasks; logs in {job.log_dir}",
                  file=sys.stderr, flush=True)
            if args.dashboard:
                from procflow.dashboard import Dashboard

                Dashboard(job, interval=args.interval).run()
            job.wait()
        except JobFailedError as exc:
            code, error = EXIT_FAILED, exc
        except KeyboardInterrupt as exc:
            job.kill(f"interrupted ({exc or 'Ctrl-C'})")
            code = EXIT_INTERRUPTED
        summary = job.summary()
        if hasattr(built, "results") and hasattr(built, "name"):
            summary["collected"] = {built.name: len(built.results())}
    print(format_summary(summary), flush=True)
    if args.report:
        write_report(args.report, summary)
        print(f"procflow: report written to {args.report}", file=sys.stderr)
    if error is not None:
        print(f"procflow: job failed: {error}", file=sys.stderr)
    elif code == EXIT_INTERRUPTED:
        print("procflow: interrupted; the job was stopped", file=sys.stderr)
    return code


def cmd_graph(args: argparse.Namespace) -> int:
    from procflow import LocalEnvironment
    from procflow.graph.render import render_graph

    name, build = load_target(args.target)
    # Nothing is started: the graph is compiled from the pipeline as built.
    env = LocalEnvironment(args.name or name)
    build_pipeline(env, build, args.parallelism)
    text = render_graph(env.compile(), args.format)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        print(f"procflow: {args.format} graph written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


# -- argument parsing ------------------------------------------------------------------------------

_EPILOG = """\
TARGET is module:function. The module is a dotted name importable from the current folder
(mypkg.pipelines) or a path to a .py file (examples/wordcount.py); the function takes the
environment and builds the pipeline on it, e.g.

    def build(env):
        env.from_batch(range(1000)).map(slow_step, parallelism=2).print()

examples:
  procflow run examples/wordcount.py:pipeline
  procflow run examples/wordcount.py:pipeline --dashboard --parallelism flatmap=4
  procflow run mypkg.jobs:build --queue mp --report report.json
  procflow graph examples/wordcount.py:pipeline --format dot --output wordcount.dot

exit codes: 0 success, 1 the job failed, 2 bad usage, 130 interrupted (Ctrl-C)
"""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="procflow", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        description="Run procflow dataflow pipelines (one OS process per task) and see where the time goes.")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("target", metavar="TARGET", help="module:function that builds the pipeline on an env "
                       "(module: dotted name or path to a .py file; function defaults to 'build')")
        p.add_argument("--parallelism", "-p", metavar="OP=N", type=parse_parallelism, action="append", default=[],
                       help="run operator OP with N parallel tasks (repeatable); OP is the operator's name "
                            "as shown by `procflow graph` (map, flatmap, ... or the name= you gave it)")
        p.add_argument("--name", help="environment name (default: the module's name)")

    run = sub.add_parser(
        "run", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="build a pipeline, run it, print the job summary",
        description="Build the pipeline with TARGET(env), run it to the end, then print the job summary: "
                    "records, time, throughput, each operator's busy % and the bottleneck (the operator "
                    "that was busiest; give it more parallelism).",
        epilog="exit codes: 0 success, 1 the job failed (the error names the task and record), "
               "2 bad usage, 130 Ctrl-C")
    common(run)
    run.add_argument("--backend", choices=("local", "ray"), default="local",
                     help="local: one OS process per task (default); ray: one Ray actor per task")
    run.add_argument("--queue", choices=("shm", "mp"),
                     help="channels between local tasks: shared-memory rings (shm, default) or "
                          "multiprocessing queues (mp)")
    run.add_argument("--dashboard", action="store_true",
                     help="show a live table per task (rate, busy %%, input queue fill) on stderr that "
                          "marks the bottleneck operator")
    run.add_argument("--interval", type=float, default=0.5, metavar="SECONDS",
                     help="dashboard refresh interval (default 0.5)")
    run.add_argument("--report", metavar="FILE", help="write the job summary as JSON to FILE")
    run.add_argument("--checkpoint-dir", metavar="DIR",
                     help="take checkpoints into DIR (local or ray backend), so that a killed or interrupted "
                          "run can continue with --resume")
    run.add_argument("--checkpoint-interval", type=float, metavar="SECONDS",
                     help="seconds between checkpoints (default: the config's checkpoint_interval, 30)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run that used --checkpoint-dir DIR from its latest complete checkpoint "
                          "(starts from the beginning if it took none)")
    run.add_argument("--env-dir", metavar="DIR",
                     help="where job logs go: DIR/<job id>/ (0700) holds Dispatcher.log, Error.log and "
                          "<task>_info.log / <task>_debug.log, each 0600 (default: "
                          "$XDG_STATE_HOME/procflow/logs/<name>, else ~/.local/state/procflow/logs/<name>)")
    run.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                     help="level of the <task>_info.log files (default INFO)")
    prog = run.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="always show the progress bar (default: only on a terminal, for sources of "
                           "known length)")
    prog.add_argument("--no-progress", dest="progress", action="store_false", help="never show it")
    run.set_defaults(func=cmd_run)

    graph = sub.add_parser(
        "graph", help="print the execution graph (text) or write it as DOT / Mermaid",
        description="Build the pipeline with TARGET(env) without running it, and show its execution graph: "
                    "one node per task (operator instance), one edge per channel, labelled with the "
                    "partitioning.")
    common(graph)
    graph.add_argument("--format", "-f", choices=("text", "dot", "mermaid"), default="text",
                       help="text (default), dot (Graphviz) or mermaid")
    graph.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of standard output")
    graph.set_defaults(func=cmd_graph)

    from procflow.server.commands import add_server_commands

    add_server_commands(sub, parse_parallelism)   # serve, submit, list, status, stop, logs, wait
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"procflow {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("procflow: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        # Errors from building the pipeline (a graph that cannot work) or from the backend: the message
        # says what to do; the traceback is for --debug.
        if args.debug:
            traceback.print_exc()
        print(f"procflow {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
