"""File sinks whose output the driver commits: one part per instance, staged, renamed in on success.

    staging.py     the driver's half: prepare (checks, staging, lock), commit (rename, _SUCCESS), abort
    file_sink.py   FileSink: the task's half (a part per instance, a report at close) and the hooks
    part_file.py   PartFile: a buffered writer on a raw fd, closed quietly if the task fails
    text.py        TextSink, JsonlSink, CsvSink
    npy.py         NpySink (.npy parts, header rewritten with the row count at close)
    parquet.py     ParquetSink (pyarrow, the optional extra `arrow`)
"""

from procflow.io.sinks.file_sink import FileSink
from procflow.io.sinks.npy import NpySink
from procflow.io.sinks.parquet import ParquetSink, require_pyarrow
from procflow.io.sinks.staging import MANIFEST_NAME, WriteMode, part_name
from procflow.io.sinks.text import CsvSink, JsonlSink, TextSink

__all__ = ["MANIFEST_NAME", "CsvSink", "FileSink", "JsonlSink", "NpySink", "ParquetSink", "TextSink",
           "WriteMode", "part_name", "require_pyarrow"]
