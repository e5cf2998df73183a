"""File connectors: split sources that read files in parallel, and sinks that commit their output.

A layer of its own just above core: readers and writers are user-level functions (SplitSource and
SinkFunction subclasses) with no knowledge of processes, channels or backends, so the runtime never
depends on them and the api layer offers them as `env.read_*` and `stream.write_*`.
"""
