"""How many records to handle per call where records move in chunks (sources, chunked operators)."""

from __future__ import annotations

# Beyond this many records per call the per-chunk cost is already negligible, and bigger chunks only
# hold more records back from the next stage.
CHUNK_MAX = 256
# Longest a record should wait for its chunk to fill. Long enough to gather dozens of cheap records
# (routing them one call at a time cost ~0.3 us each), short enough that big ones leave one by one: a
# source holding two 1 MiB arrays back for 125 us halved its throughput, because the consumer copied
# nothing while the producer made the second one.
HOLD_S = 50e-6


class ChunkSize:
    """A chunk size learned from how long the last chunk took.

    Chunks pay when records are cheap (one call instead of hundreds) and hurt when they are slow or big
    (a record waits for the whole chunk before it leaves). So the size doubles while a chunk takes under
    HOLD_S and halves when one takes longer than the flush interval: cheap records move hundreds at a
    time, a 1 ms function or a slow generator one at a time, and every record still leaves within about
    one interval.
    """

    __slots__ = ("size", "_slow")

    def __init__(self, interval: float) -> None:
        self.size = 1
        self._slow = interval

    def took(self, seconds: float) -> None:
        if seconds < HOLD_S:
            if self.size < CHUNK_MAX:
                self.size = min(self.size * 2, CHUNK_MAX)
        elif seconds > self._slow and self.size > 1:
            self.size //= 2
