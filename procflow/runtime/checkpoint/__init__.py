"""Checkpoints and resume (issue 20): aligned barriers, per-task snapshots, a manifest per checkpoint.

    barrier.py      the Barrier control record and the CheckpointAck message
    store.py        the checkpoint folder: layout, private files, manifests, finding the latest complete one
    coordinator.py  the driver's side: when to ask for a checkpoint, collecting acks, completing it
    task_state.py   the task's side: what an operator instance snapshots and how it is restored
"""
