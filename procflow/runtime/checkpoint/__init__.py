"""Checkpoints and resume (issue 20): aligned barriers, per-task snapshots, a manifest per checkpoint.

    barrier.py      the Barrier control record and the CheckpointAck message
    store.py        the checkpoint folder: layout, private files, manifests, finding the latest intact one
    coordinator.py  the driver's side: when to ask for a checkpoint, collecting acks, completing it

The task's side lives where the records are: BaseTask (alignment, `take_barrier`), the operators'
`snapshot()` / `restore()`, the split reader's position (operators/source.py), the file sinks' rolled
parts (io/sinks/file_sink.py), and the shm gate's `hold()` of an input whose barrier arrived.
"""
