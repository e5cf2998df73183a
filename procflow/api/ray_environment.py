"""RayEnvironment: the same pipelines as Ray actors.

    RayEnvironment(name, config, address=None)
      submit() ─► (first time) ray.init: a local instance on this machine, or join `address`
               ─► the Dispatcher on a RayBackend: one TaskActor per task, `ray` channels between them ─► Job
      close()  ─► stops the job; shuts Ray down only if this environment started it

Operators, routing (stable hashing included), the stop protocol, checkpoints (`checkpoint_dir=`: the
tasks' state travels to the driver in their acks), services (a Ray actor per replica) and user functions
are the runtime's own code; only the task factory (actors) and the channel kind (batched
actor calls) differ. `ray` is
imported only under procflow/backends/ray, and only once a job is submitted.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from procflow.api.environment import BaseEnvironment
from procflow.runtime.backend import Backend

if TYPE_CHECKING:
    from procflow.backends.ray.backend import RayBackend

# `import procflow` must not need (or pay for) ray: it is an optional extra, imported at first submit().

# Actor calls cost far more than a ring write, so batches are bigger and flushed less often than locally.
RAY_DEFAULTS = {"queue": "ray", "batch_bytes": 256 << 10, "flush_interval": 0.005}


class RayEnvironment(BaseEnvironment):
    backend = "ray"

    def __init__(self, name: str = "procflow", config: dict[str, Any] | None = None, *,
                 address: str | None = None, env_dir: str | os.PathLike[str] | None = None,
                 num_cpus: int | None = None, credits: int = 8, actor_options: dict[str, Any] | None = None,
                 init_options: dict[str, Any] | None = None,
                 checkpoint_dir: str | os.PathLike[str] | None = None) -> None:
        """`address`: a Ray cluster to join ("auto", "ray://host:10001", ...); None starts a local instance
        on this machine only (with `num_cpus`, and `init_options` passed on to `ray.init`).

        `credits`: the most batches in flight per edge (backpressure). `actor_options` go to every task
        actor's `.options()`: by default an actor reserves no CPU (num_cpus=0, like a local task process
        that the OS schedules) and actors spread over the cluster's nodes (scheduling_strategy="SPREAD").

        `checkpoint_dir`: turns on checkpoints, as LocalEnvironment's does (every `checkpoint_interval`
        seconds and on `job.checkpoint()`; `submit(resume=True)` continues from the latest). The folder is
        the driver's: task actors send their state in their acks and the driver writes it there, so it
        need not be reachable from other nodes. File sinks' parts, as always on Ray, are written by the
        sink's actor straight into the output folder, which must be reachable from its node.
        """
        config = {**RAY_DEFAULTS, **(config or {})}
        if config["queue"] != "ray":
            raise ValueError(f"RayEnvironment moves records over Ray actor calls (queue='ray'); "
                             f"queue={config['queue']!r} needs LocalEnvironment")
        super().__init__(name, config, env_dir=env_dir)
        self.checkpoint_dir = os.path.abspath(os.fspath(checkpoint_dir)) if checkpoint_dir is not None else None
        if not isinstance(credits, int) or credits < 1:
            raise ValueError(f"credits must be a positive int, got {credits!r}")
        self.address = address
        self.num_cpus = num_cpus
        self.credits = credits
        self.actor_options = dict(actor_options or {})
        self.init_options = dict(init_options or {})
        self.namespace = f"procflow-{name}"
        self._started_ray = False
        self._ray_backend: RayBackend | None = None   # the last job's (task_placement asks it)

    def _backend(self) -> Backend:
        from procflow.backends.ray import session
        from procflow.backends.ray.backend import RayBackend

        if session.connect(self.address, self.namespace, self.num_cpus, self.init_options):
            self._started_ray = True
        self._ray_backend = RayBackend(self.namespace, self.actor_options, self.credits)
        return self._ray_backend

    def task_placement(self) -> dict[str, tuple[str, int]]:
        """task -> (Ray node id, worker pid) of the last job's actors."""
        if self._ray_backend is None:
            return {}
        return self._ray_backend.locate()

    def close(self) -> None:
        """Stop any running job, kill its actors and, if this environment started Ray, shut it down."""
        super().close()
        if self._started_ray:
            from procflow.backends.ray import session

            self._started_ray = False
            session.shutdown()
