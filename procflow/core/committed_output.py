"""CommittedOutput: a sink whose output the driver publishes only when the whole job has succeeded.

    driver, before any task starts      prepare_output(job_id, parallelism)   stage, check, refuse early
    every sink instance (its task)      open() / execute(record) / close()     write into the staging
    driver, after every task has ended  commit_output()     the job finished: publish what was staged
                                        abort_output()      it failed, was stopped or killed: remove it

Why the driver: only it knows that every instance of every operator finished. A sink that published its
own part at close() left, when another task failed later, output that looked like a result (issue 18).
The runtime finds these hooks on a sink's function object (one built in the driver for the purpose),
whatever the backend; `stream.write_jsonl(dir)` and its siblings are the built-in ones (procflow.io).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class CommittedOutput(Protocol):
    """The driver-side hooks of a sink function whose output is committed by the driver."""

    def prepare_output(self, job_id: str, parallelism: int) -> None:
        """Before any task starts: make the staging area for `parallelism` instances of job `job_id`.
        Raise here (a ValueError, an OSError) to refuse the job before a process exists."""

    def commit_output(self) -> None:
        """The job finished: publish every instance's staged output. Raising fails the job."""

    def abort_output(self) -> None:
        """The job did not finish (failed, stopped, killed, or never started): remove what was staged.
        Called at most once, instead of commit_output, also after a prepare_output that raised."""
