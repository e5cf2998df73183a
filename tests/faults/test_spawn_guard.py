"""What spawn needs from the user's script, driven through real scripts (issue 23.6): a main module that
submits without `if __name__ == "__main__":` fails once, at once, saying what to do; a name defined only
under the guard gets a hint; a task that dies while its new interpreter starts is not blamed on user
code."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from procflow.runtime.task.main_guard import GUARD
from procflow.testing import own_segments, repo_env

pytestmark = pytest.mark.timeout(120)

HEADER = """\
import sys
from procflow import LocalEnvironment


def times_factor(record):
    return record * FACTOR
"""


def run_script(tmp_path, body: str) -> subprocess.CompletedProcess:
    """Run HEADER + body as a script (its main module); afterwards nothing of it is left in /dev/shm."""
    path = tmp_path / "pipeline.py"
    path.write_text(HEADER + textwrap.dedent(body))
    with subprocess.Popen([sys.executable, str(path), str(tmp_path / "env")], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=repo_env()) as proc:
        try:
            out, err = proc.communicate(timeout=100)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert own_segments(proc.pid) == set()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def line_of(tmp_path, text: str) -> int:
    lines = (tmp_path / "pipeline.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


def test_an_unguarded_main_module_under_spawn_fails_once_saying_what_to_do(tmp_path):
    proc = run_script(tmp_path, """
        FACTOR = 2
        env = LocalEnvironment("unguarded", env_dir=sys.argv[1], start_method="spawn")
        env.from_batch(range(10)).map(times_factor, parallelism=2).collect()
        env.submit()
        """)
    assert proc.returncode == 1
    err = proc.stderr
    assert "RuntimeError" in err and GUARD in err and f"line {line_of(tmp_path, 'env.submit()')} " in err
    # One traceback (the driver's), not one per task: no task process was started.
    assert err.count("Traceback") == 1 and "bootstrapping" not in err
    assert "without reporting an error" not in err


def test_a_guarded_main_module_under_spawn_runs(tmp_path):
    proc = run_script(tmp_path, """
        FACTOR = 2
        if __name__ == "__main__":
            env = LocalEnvironment("guarded", env_dir=sys.argv[1], start_method="spawn")
            result = env.from_batch(range(10)).map(times_factor, parallelism=2).collect()
            env.submit()
            print(sorted(result.results()))
        """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str([2 * i for i in range(10)])


def test_a_name_defined_only_under_the_guard_gets_a_hint(tmp_path):
    proc = run_script(tmp_path, """
        if __name__ == "__main__":
            FACTOR = 2
            env = LocalEnvironment("name", env_dir=sys.argv[1], start_method="spawn")
            env.from_batch(range(10)).map(times_factor, parallelism=2).collect()
            env.submit()
        """)
    assert proc.returncode == 1
    assert "NameError: name 'FACTOR' is not defined" in proc.stderr
    assert f"without running its `{GUARD}` block, and 'FACTOR' is defined only there" in proc.stderr


def test_a_task_that_dies_while_its_interpreter_starts_is_not_blamed_on_user_code(tmp_path):
    # The task's import of the main module fails (here on purpose, as a broken import would).
    proc = run_script(tmp_path, """
        FACTOR = 2
        if __name__ == "__mp_main__":
            raise ImportError("a module the task needs is missing")
        if __name__ == "__main__":
            env = LocalEnvironment("broken", env_dir=sys.argv[1], start_method="spawn")
            env.from_batch(range(10)).map(times_factor, parallelism=2).collect()
            env.submit()
        """)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "exited with code 1" in last and "failed before the task's code ran" in last
    assert "os._exit" not in last.split("failed before")[1]
