"""The unit that flows between operators inside a task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class Packet:
    """One record plus its routing facts.

    `input_index` tells a multi-input operator (comap, join) which logical input the record came from.
    `keyed` is separate from `partition_key` because every value, None and 0 included, is a valid key.
    """

    __slots__ = ("payload", "input_index", "partition_key", "keyed")

    def __init__(self, payload: Any, input_index: int = 0, partition_key: Any = None,
                 keyed: bool = False) -> None:
        self.payload = payload
        self.input_index = input_index
        self.partition_key = partition_key
        self.keyed = keyed

    def __repr__(self) -> str:
        key = f", key={self.partition_key!r}" if self.keyed else ""
        return f"Packet({self.payload!r}, input={self.input_index}{key})"


@dataclass(frozen=True)
class ChannelEnd:
    """A StopSignal as it arrives on one input channel (`slot`) of a task."""

    slot: int
    signal: Any
