"""The job server (issue 21): `procflow serve` queues and runs jobs, each in a driver process of its own.

    client (procflow submit/list/...)  ── JSON lines over a 0600 Unix socket ──►  socket_server.py
    web dashboard (procflow/server/web, optional) ─────── calls ────────────────►  jobs.JobService
                                                                                    │
                     store.py (SQLite, WAL: the job table)  ◄──────────────────────┤
                     runner.py (queue, --max-jobs / --cores, start, stop, reap)  ◄─┘
                          │ one `python -m procflow.server.job_driver` per job, own session
                          ▼
                     job_driver.py: builds and runs the pipeline, writes live.json (live.py) every
                     ~0.5 s and summary.json at the end into the job's folder

    paths.py     where the socket, the state folder and the job folders live (all private)
    protocol.py  the request / reply format and the client side of the socket
    logs.py      listing and reading a job's log files without escaping its log folder
    commands.py  the `procflow serve / submit / list / status / stop / logs / wait` commands

This package sits above api/ (a top-level tool, like cli.py): it may import every layer.
"""
