"""The Dispatcher's job log files and its monitor thread's lifecycle.

    _open_log()       Dispatcher.log in the job directory (a logger per job)
    start_monitor()   one non-daemon thread runs the backend's `_watch()`, joined by `join_monitor()`
    _monitor()        whatever happens in `_watch()`, the job ends: cleanup, final status, log closed
    _fail()           the first failure wins; it goes to Dispatcher.log and Error.log

The Dispatcher (dispatcher.py) provides `_watch()`, `cleanup()`, and the attributes `manager`, `job_id`,
`job_dir`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from procflow.core.enums import JobStatus
from procflow.core.errors import JobFailedError
from procflow.runtime.private_files import PrivateFileHandler, open_private_text

DISPATCHER_LOG = "Dispatcher.log"
ERROR_LOG = "Error.log"  # the job's failure, with the record and traceback: private (0600) like every log


class JobMonitor:
    log: logging.Logger = logging.getLogger("procflow.dispatcher")
    # Every task measures its own CPU time (BaseTask.cpu_clock), so job summaries can give cpu_pct.
    measures_cpu = True
    manager: Any
    job_id: str
    job_dir: str
    _thread: threading.Thread | None = None
    _log_handler: logging.Handler | None = None

    def _open_log(self) -> None:
        # A logger of this job's own, outside logging's registry (so it goes with the dispatcher): jobs
        # run from several driver threads once shared one, and a job logging while another closed its
        # handler reopened that handler's file, which then leaked.
        self.log = logging.Logger(f"{self.log.name}.{self.job_id}", logging.DEBUG)
        handler = PrivateFileHandler(self.job_dir, DISPATCHER_LOG, exclusive=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
        self.log.addHandler(handler)
        self._log_handler = handler

    def close_log(self) -> None:
        if self._log_handler is not None:
            self.log.removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def start_monitor(self, name: str) -> None:
        self._thread = threading.Thread(target=self._monitor, name=f"{name}-{self.job_id}")
        self._thread.start()

    def join_monitor(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _watch(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError

    def _monitor(self) -> None:
        try:
            self._watch()
        except JobFailedError as exc:   # the backend found the job cannot go on (said why)
            self._fail(exc)
        except KeyboardInterrupt as exc:
            # Only where the job runs in the caller's thread (inline): Ctrl-C ends it as killed, and the
            # interrupt goes on to the caller once everything is cleaned up.
            self.manager.fail(JobFailedError(f"job {self.job_id} was interrupted: {exc!r}"), JobStatus.KILLED)
            raise
        except BaseException as exc:  # a bug here must fail the job, never hang it
            self.log.exception("monitor crashed")
            self.manager.fail(JobFailedError(f"procflow's job monitor crashed: {exc!r}"))
        finally:
            self.cleanup()
            self.manager.finish()
            self.log.info("job %s %s after %.3fs", self.job_id, self.manager.status, self.manager.elapsed)
            self.close_log()

    def _fail(self, error: JobFailedError, status: JobStatus = JobStatus.FAILED) -> None:
        if self.manager.fail(error, status):
            self.log.error("%s", error)
            try:
                with open_private_text(self.job_dir, ERROR_LOG, exclusive=False) as f:
                    f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {error}\n")
                    if error.remote_traceback:
                        f.write(error.remote_traceback + "\n")
            except OSError:
                pass
