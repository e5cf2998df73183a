"""Placements: how one output group chooses among its channels, one class per partitioning strategy.

    BaseRouter.__init__ ─► choose_placement(group) once per group ─► RoundRobin | Hash | Balanced
                                                                       | Broadcast | Custom
                           ─► with_combiner (combiner.py): a Hash towards a reduce that combines
                              is wrapped in Combining, which holds records back as partials
    BaseRouter.route(payload, key, keyed):
        one group, one channel per record ─► placement.send / send_selected (key from the group's
                                              selector) / send_many (lists, where allowed)
        fan-out (several groups, broadcast, custom) ─► placement.targets(key, keyed), the record
                                              encoded once by the router and copied to each

A placement keeps the state of its strategy (round robin's next channel, the balancer's credits). The
router once chose among the strategies per record with string comparisons, and replaced its own
`route` where there was one channel; now the choice is made once, here, and `route` is what runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from procflow.runtime.communication import codec
from procflow.runtime.communication.balance import Balancer, can_balance
from procflow.runtime.communication.keys import UnstableKeyError, stable_hash
from procflow.runtime.communication.queue_descriptor.base import ChannelWriter

ROUND_ROBIN, HASH, BROADCAST, CUSTOM, BALANCE = "round_robin", "hash", "broadcast", "custom", "balance"
STRATEGIES = (ROUND_ROBIN, HASH, BROADCAST, CUSTOM, BALANCE)


def _unstable_key(group: OutputGroup, exc: UnstableKeyError) -> UnstableKeyError:
    """The key error, naming the operator whose instances the key was to choose between."""
    return UnstableKeyError(f"partitioning records for operator {group.target!r} by key: {exc}")


@dataclass
class OutputGroup:
    """The channels to one downstream operator, in instance order, and how to choose among them."""

    target: str
    strategy: str
    writers: Sequence[ChannelWriter]
    key_selector: Callable[[Any], Any] | None = None
    partitioner: Callable[[Any, int], Any] | None = None
    queue_ids: Sequence[str] = ()
    # A ReduceFunction (opened) when this task pre-reduces for the target reduce (combiner.py), or None.
    combiner: Any = None

    def flush(self) -> None:
        for w in self.writers:
            w.flush()


def _custom_targets(partitioner: Callable[[Any, int], Any], key: Any, n: int) -> Sequence[int]:
    """Check what a user partitioner returned: one index, or a non-empty collection of indices."""
    chosen = partitioner(key, n)
    if isinstance(chosen, (int, np.integer)) and not isinstance(chosen, bool):
        picks: tuple = (chosen,)
    elif isinstance(chosen, (list, tuple, range, set, frozenset, np.ndarray)):
        picks = tuple(chosen)
    else:
        picks = ()
    if not picks or not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) and 0 <= p < n
                            for p in picks):
        name = getattr(partitioner, "__qualname__", None) or type(partitioner).__qualname__
        raise ValueError(f"partitioner {name} returned {chosen!r:.80} for key {key!r:.80}; it must return "
                         f"an index in 0..{n - 1} or a non-empty list of such indices (n={n} instances)")
    return picks


def hash_channel(key: Any, n: int) -> int:
    """Which of `n` instances a keyed record goes to under hash partitioning. The one definition: Hash
    places records by it, and a resumed job re-partitions a keyed reduce's state by it when the reduce's
    parallelism changed (checkpoint/rescale.py), so each key's state lands where its records now go."""
    return stable_hash(key) % n


def _no_selector(record: Any) -> Any:
    raise AssertionError("send_selected() on a group without a key selector")


class Placement:
    """Which of one group's channels get a record.

    `targets(key, keyed)` serves the encode-once path (a record bound for several channels, or an
    array). `send(payload, key, keyed)` is the common path of a router with this one group: it picks
    one channel and hands it the record as it is. `send_many` takes unkeyed lists, where the router
    allows it (`BaseRouter.routes_many`).

    A placement that `holds_records` (a combiner) keeps some records back instead of choosing channels
    for them: the router hands it every record through `send`, never asks it for `targets`, and calls
    `finish` before the end-of-stream signals go out.
    """

    holds_records = False

    def __init__(self, group: OutputGroup, start: int) -> None:
        self.group = group
        self.writers = group.writers
        self.selector: Callable[[Any], Any] = group.key_selector or _no_selector
        self.n = len(group.writers)
        self.next = start % max(self.n, 1)   # round robin's next channel: every upstream instance
        #                                       starts at its own offset, so counts stay even

    def targets(self, key: Any, keyed: bool) -> Sequence[int]:
        raise NotImplementedError

    def send(self, payload: Any, key: Any, keyed: bool) -> None:
        if type(payload) is np.ndarray:
            self.send_array(payload, key, keyed)
            return
        for t in self.targets(key, keyed):
            self.writers[t].send_object(payload, key, keyed)

    def send_selected(self, payload: Any, key: Any, keyed: bool) -> None:
        """`send` for a group with its own key selector: the record goes with the key it gives."""
        self.send(payload, self.selector(payload), True)

    def send_array(self, payload: np.ndarray, key: Any, keyed: bool) -> None:
        """An array travels as its raw bytes in a frame of its own, never inside a batch (DESIGN §7:
        the receiver gets a view on ring memory)."""
        kind, body = codec.encode_body(payload)
        parts, nbytes = codec.frame(kind, body, codec.encode_key(key) if keyed else None)
        for t in self.targets(key, keyed):
            self.writers[t].send_single(parts, nbytes)

    def send_many(self, records: list) -> None:
        raise NotImplementedError(f"{type(self).__name__} places records one at a time")

    # After `send_selected_many` raised: the index of the record whose selector or placement failed.
    failed_at = 0

    def send_selected_many(self, records: list) -> None:
        """`send_selected` over a list (hash groups with a key selector: BaseRouter.routes_selected_many)."""
        send_selected = self.send_selected
        i = 0
        try:
            for i, payload in enumerate(records):  # noqa: B007 (i names the failing record)
                send_selected(payload, None, True)
        except BaseException:
            self.failed_at = i
            raise

    @property
    def waited_s(self) -> float:
        """Seconds spent waiting for room (balance only)."""
        return 0.0

    def announce_upcoming(self, records: int) -> None:
        """How many records the producer will still send (balance only; see balance.py)."""

    def drain(self) -> None:
        """Send on every record held back (combiners only)."""

    def finish(self) -> None:
        """End of input, before the StopSignals: send on what is held back (combiners only)."""


class RoundRobin(Placement):
    """Each record to the next channel in turn."""

    def targets(self, key: Any, keyed: bool) -> Sequence[int]:
        i = self.next
        self.next = i + 1 if i + 1 < self.n else 0
        return (i,)

    def send(self, payload: Any, key: Any, keyed: bool) -> None:
        if type(payload) is np.ndarray:
            self.send_array(payload, key, keyed)
            return
        i = self.next
        self.next = i + 1 if i + 1 < self.n else 0
        self.writers[i].send_object(payload, key, keyed)

    def send_many(self, records: list) -> None:
        """As `send` one by one: over n channels, records[k::n] go to the k-th channel after the
        current one, so per-record work drops to a list slice."""
        writers, n, start = self.writers, self.n, self.next
        for k in range(min(n, len(records))):
            writers[(start + k) % n].send_many(records[k::n])
        self.next = (start + len(records)) % n


# Most keys whose channel a Hash placement remembers; past it, it starts again (a job with more distinct
# keys than this pays the hash as before, for the keys it has not seen since).
KNOWN_KEYS_MAX = 4096


class Hash(RoundRobin):
    """A keyed record to the channel of its key's stable hash; an unkeyed one round robin.

    A group-by has few distinct keys and many records: the channel of a str or int key is remembered,
    which saves encoding and hashing the key for every record (a third of a keyed hop's cost with 50
    keys). Only exact str and int keys: those equal in Python are equal keys (`True == 1`, an IntEnum
    member, a float equal to an int go through the full hash, whose own rules place them).
    """

    def __init__(self, group: OutputGroup, start: int) -> None:
        super().__init__(group, start)
        self._known: dict[Any, int] = {}

    def _channel(self, key: Any) -> int:
        t = type(key)
        if t is str or t is int:
            i = self._known.get(key)
            if i is None:
                known = self._known
                if len(known) >= KNOWN_KEYS_MAX:
                    known.clear()
                i = known[key] = hash_channel(key, self.n)
            return i
        try:
            return hash_channel(key, self.n)
        except UnstableKeyError as exc:
            raise _unstable_key(self.group, exc) from None

    def targets(self, key: Any, keyed: bool) -> Sequence[int]:
        if not keyed:
            return super().targets(key, keyed)
        try:
            return (hash_channel(key, self.n),)
        except UnstableKeyError as exc:
            raise _unstable_key(self.group, exc) from None

    def send(self, payload: Any, key: Any, keyed: bool) -> None:
        if not keyed or type(payload) is np.ndarray:
            super().send(payload, key, keyed)
            return
        self.writers[self._channel(key)].send_object(payload, key, True)

    def send_selected(self, payload: Any, key: Any, keyed: bool) -> None:
        # `keyby(selector)`'s own path: not through `send`, a frame less per record.
        key = self.selector(payload)
        if type(payload) is np.ndarray:
            self.send_array(payload, key, True)
            return
        self.writers[self._channel(key)].send_object(payload, key, True)

    def send_selected_many(self, records: list) -> None:
        # The loop of a group-by's sending side: a remembered key's channel is a dict lookup inline.
        selector, writers, known, channel = self.selector, self.writers, self._known, self._channel
        i = 0
        try:
            for i, payload in enumerate(records):  # noqa: B007 (i names the failing record)
                key = selector(payload)
                if type(payload) is np.ndarray:
                    self.send_array(payload, key, True)
                    continue
                t = type(key)
                c = known.get(key) if t is str or t is int else None
                writers[channel(key) if c is None else c].send_object(payload, key, True)
        except BaseException:
            self.failed_at = i
            raise


class Balanced(RoundRobin):
    """Each record to the channel with the most room by credits (balance.py). Arrays, and records on
    the encode-once path, go round robin, as they always have."""

    def __init__(self, group: OutputGroup, start: int) -> None:
        super().__init__(group, start)
        self.balancer = Balancer(group.writers)

    def send(self, payload: Any, key: Any, keyed: bool) -> None:
        if type(payload) is np.ndarray:
            self.send_array(payload, key, keyed)
            return
        self.writers[self.balancer.pick(self.group.flush)].send_object(payload, key, keyed)

    def send_many(self, records: list) -> None:
        self.balancer.send_many(records, self.group.flush)

    @property
    def waited_s(self) -> float:
        return self.balancer.waited_s

    def announce_upcoming(self, records: int) -> None:
        self.balancer.upcoming = records


class Broadcast(Placement):
    def targets(self, key: Any, keyed: bool) -> Sequence[int]:
        return range(self.n)


class Custom(Placement):
    """The user's partitioner `(key, n) -> index or indices`, checked on every call."""

    def targets(self, key: Any, keyed: bool) -> Sequence[int]:
        assert self.group.partitioner is not None   # a custom group always has one (graph/ checks)
        return _custom_targets(self.group.partitioner, key, self.n)


def choose_placement(group: OutputGroup, start: int, may_balance: bool) -> Placement:
    """The placement for one group's `strategy`; balance where the channels report what they took and
    this group is the record's only destination (`may_balance`), round robin otherwise."""
    strategy = group.strategy
    if strategy == HASH:
        return Hash(group, start)
    if strategy == BROADCAST:
        return Broadcast(group, start)
    if strategy == CUSTOM:
        return Custom(group, start)
    if strategy == BALANCE and may_balance and len(group.writers) > 1 and can_balance(group.writers):
        return Balanced(group, start)
    if strategy in (ROUND_ROBIN, BALANCE):
        return RoundRobin(group, start)
    raise ValueError(f"output group to {group.target!r}: unknown partitioning strategy {strategy!r}; "
                     f"the strategies are {', '.join(STRATEGIES)}")
