"""Routing: which downstream instance(s) receive each record, and encoding each record once.

A task has one OutputGroup per downstream operator. Each group partitions independently:

    round_robin  the default; every upstream instance starts at its own offset, so counts stay even
    balance      to whichever instance has the least work queued, by credits (see balance.py); round
                 robin where the channels cannot report what was taken (mp queues, Ray, inline) or
                 when the stream also feeds another operator
    hash         a *stable* hash of the key (keys.py: crc32 of canonical bytes), identical in every
                 process, run and backend, and equal for keys equal in Python (1, 1.0, True); every
                 value, falsy ones included, is a key; a key type without a stable hash is refused
    broadcast    every instance
    custom       a user partitioner `(key, n) -> int | iterable of int`

A key chosen by `keyby` travels with the record, and with everything derived from it, until the next
`keyby`, so a keyed stream stays partitioned through later operators.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from procflow.runtime.communication import codec
from procflow.runtime.communication.balance import Balancer, can_balance
from procflow.runtime.communication.keys import UnstableKeyError, stable_hash
from procflow.runtime.communication.queue_descriptor.base import ChannelWriter

ROUND_ROBIN, HASH, BROADCAST, CUSTOM, BALANCE = "round_robin", "hash", "broadcast", "custom", "balance"


__all__ = ["BaseRouter", "OutputGroup", "stable_hash"]


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
    _next: int = field(default=0)
    balancer: Balancer | None = None

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


class BaseRouter:
    """Sends each emitted record to its channels; one per task."""

    def __init__(self, groups: list[OutputGroup], parallel_index: int = 0) -> None:
        self.groups = groups
        for group in groups:
            group._next = parallel_index % max(len(group.writers), 1)
        self._packer = msgpack.Packer(default=codec._default, strict_types=True, use_bin_type=True)
        self._routed = 0
        # Records that may reach several channels take the encode-once path.
        self._fan_out = len(groups) > 1 or any(g.strategy in (BROADCAST, CUSTOM) for g in groups)
        for group in groups:
            if group.strategy == BALANCE and len(group.writers) > 1 and not self._fan_out \
                    and can_balance(group.writers):
                group.balancer = Balancer(group.writers)
        # One downstream instance, nothing to choose: `route` is that channel's own `send_object`, which
        # batches any record and counts them. Half the per-record cost of a source on small records.
        self._direct: ChannelWriter | None = None
        if (len(groups) == 1 and len(groups[0].writers) == 1 and groups[0].key_selector is None
                and groups[0].strategy in (ROUND_ROBIN, HASH, BALANCE) and groups[0].writers[0].sends_anything
                and type(self).route is BaseRouter.route):
            self._direct = groups[0].writers[0]
            self.route = self._direct.send_object   # type: ignore[method-assign]
        # `route_many` can hand whole slices to the channels when placement needs no per-record decision:
        # one downstream operator, spread round robin (or by hash, which spreads unkeyed records the same
        # way) or balanced, no key selector to run, channels that batch any object, and no subclass
        # hooking `route`.
        group = groups[0] if len(groups) == 1 else None
        self.routes_many = (
            group is not None and not self._fan_out and group.key_selector is None
            and group.strategy in (ROUND_ROBIN, HASH, BALANCE) and all(w.sends_anything for w in group.writers)
            and type(self).route is BaseRouter.route)

    @property
    def records_out(self) -> int:
        """Records emitted (once each, however many channels they reached)."""
        return self._direct.objects_sent if self._direct is not None else self._routed

    def route(self, payload: Any, key: Any, keyed: bool) -> None:
        self._routed += 1
        if self._fan_out or type(payload) is np.ndarray:
            self._route_encoded(payload, key, keyed)
            return
        for group in self.groups:
            if group.key_selector is not None:
                gkey, gkeyed = group.key_selector(payload), True
            else:
                gkey, gkeyed = key, keyed
            if gkeyed and group.strategy == HASH:
                try:
                    target = stable_hash(gkey) % len(group.writers)
                except UnstableKeyError as exc:
                    raise _unstable_key(group, exc) from None
            elif group.balancer is not None:
                target = group.balancer.pick(group.flush)
            else:
                target = group._next
                group._next = target + 1 if target + 1 < len(group.writers) else 0
            group.writers[target].send_object(payload, gkey, gkeyed)

    def announce_upcoming(self, records: int) -> None:
        """The producer will send this many more records after the ones it routes next: balanced groups
        use it to shrink their queues as the input runs out (balance.py)."""
        for group in self.groups:
            if group.balancer is not None:
                group.balancer.upcoming = records

    def route_many(self, records: list) -> None:
        """Unkeyed records in emission order.

        Only when `routes_many` is True (the caller routes record by record otherwise, so that an error
        in a key selector or a partitioner names its record). Round robin places them exactly as `route`
        would one by one: over n channels, records[k::n] go to the k-th channel after the current one,
        so per-record work drops to a list slice. A balanced group hands out slices by room.
        """
        if self._direct is not None:
            self._direct.send_many(records)
            return
        self._routed += len(records)
        group = self.groups[0]
        if group.balancer is not None:
            group.balancer.send_many(records, group.flush)
            return
        writers = group.writers
        n = len(writers)
        start = group._next
        for k in range(min(n, len(records))):
            writers[(start + k) % n].send_many(records[k::n])
        group._next = (start + len(records)) % n

    def _route_encoded(self, payload: Any, key: Any, keyed: bool) -> None:
        """Several channels (or an array) get one record: encode it once, copy the bytes to each."""
        packed = single = None
        if type(payload) is not np.ndarray:
            try:
                packed = codec.pack(self._packer, payload)
            except (TypeError, ValueError, OverflowError):
                packed = None
        if packed is None or len(packed) > 1 << 20:
            single = codec.encode_body(payload)
        for group in self.groups:
            gkey, gkeyed = key, keyed
            if group.key_selector is not None:
                gkey, gkeyed = group.key_selector(payload), True
            targets = self._targets(group, gkey, gkeyed)
            key_packed = None
            if gkeyed:
                try:
                    key_packed = codec.pack(self._packer, gkey)
                except (TypeError, ValueError, OverflowError):
                    key_packed = None
            if single is None and (key_packed is not None or not gkeyed):
                for t in targets:
                    group.writers[t].send_record(packed, key_packed)
            else:
                body = single if single is not None else (codec.PLAIN, [packed])
                parts, nbytes = codec.frame(body[0], body[1], codec.encode_key(gkey) if gkeyed else None)
                for t in targets:
                    group.writers[t].send_single(parts, nbytes)

    def _targets(self, group: OutputGroup, key: Any, keyed: bool) -> Sequence[int]:
        n = len(group.writers)
        strategy = group.strategy
        if strategy in (ROUND_ROBIN, BALANCE) or (strategy == HASH and not keyed):
            i = group._next
            group._next = (i + 1) % n
            return (i,)
        if strategy == HASH:
            try:
                return (stable_hash(key) % n,)
            except UnstableKeyError as exc:
                raise _unstable_key(group, exc) from None
        if strategy == BROADCAST:
            return range(n)
        return _custom_targets(group.partitioner, key, n)

    def flush(self) -> None:
        for group in self.groups:
            for w in group.writers:
                w.flush()

    @property
    def has_pending(self) -> bool:
        return any(w.has_pending for g in self.groups for w in g.writers)

    def send_stop(self, signal: Any) -> None:
        """Exactly one StopSignal on every output channel."""
        for group in self.groups:
            for w in group.writers:
                w.send_control(signal)

    @property
    def blocked_seconds(self) -> float:
        """Seconds spent waiting on downstream: full rings, and balanced groups with no room."""
        return sum(w.blocked_seconds for g in self.groups for w in g.writers) + \
            sum(g.balancer.waited_s for g in self.groups if g.balancer is not None)

    def get_connections_info(self) -> list[dict]:
        return [{"target": g.target, "strategy": g.strategy, "instances": len(g.writers),
                 "queue_ids": list(g.queue_ids)} for g in self.groups]

    def close(self) -> None:
        for group in self.groups:
            for w in group.writers:
                w.close()
