"""Routing: which downstream instance(s) receive each record, and encoding each record once.

A task has one OutputGroup per downstream operator. Each group partitions independently:

    balance      the default of an unkeyed stream: each chunk to whichever instance has the most room,
                 by credits (see balance.py), as Pool and Ray hand work to whoever is free; round robin
                 where the channels cannot report what was taken (mp queues, Ray, inline) or when the
                 stream also feeds another operator
    round_robin  asked for (`round_robin()`, `keyby(..., "round_robin")`): even, deterministic counts;
                 every upstream instance starts at its own offset
    hash         a *stable* hash of the key (keys.py: crc32 of canonical bytes), identical in every
                 process, run and backend, and equal for keys equal in Python (1, 1.0, True); every
                 value, falsy ones included, is a key; a key type without a stable hash is refused
    broadcast    every instance
    custom       a user partitioner `(key, n) -> int | iterable of int`

A key chosen by `keyby` travels with the record, and with everything derived from it, until the next
`keyby`, so a keyed stream stays partitioned through later operators. Each strategy is a placement
(placement.py), chosen once per group when the router is built; a hash group towards a reduce that
combines holds its keyed records back as partial aggregates (combiner.py) until it is full or the input
ends (`send_stop`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from procflow.runtime.communication import codec
from procflow.runtime.communication.combiner import with_combiner
from procflow.runtime.communication.keys import stable_hash
from procflow.runtime.communication.placement import (
    BALANCE,
    BROADCAST,
    CUSTOM,
    HASH,
    ROUND_ROBIN,
    OutputGroup,
    Placement,
    choose_placement,
)
from procflow.runtime.communication.queue_descriptor.base import ChannelWriter
from procflow.runtime.communication.queue_descriptor.driver import DriverWriter

__all__ = ["BaseRouter", "OutputGroup", "stable_hash"]


# Turns of the wait for room on one of several full channels (`_control_everywhere`): room on another
# is seen within a turn. The longest keeps a barrier's delay small against a checkpoint interval (seconds)
# at a few hundred wake-ups a second while several consumers stall.
_FIRST_TURN_S = 0.5e-3
_LAST_TURN_S = 8e-3


def _nowhere(payload: Any, key: Any, keyed: bool) -> None:
    """Where a router without output groups sends a record."""


class BaseRouter:
    """Sends each emitted record to its channels; one per task.

    How a record leaves is decided once, here, not per record:

        one channel, nothing to choose   ─► that channel's `send_object` (`fast_route`, and `route`);
                                             not where a combiner holds records back (combiner.py)
        one group                        ─► its placement's `send`: pick a channel, hand the record over
        several groups, or a group that may send one record to several channels (broadcast, custom)
                                         ─► encode the record once, copy the bytes to each channel
    """

    def __init__(self, groups: list[OutputGroup], parallel_index: int = 0) -> None:
        self.groups = groups
        self._packer = msgpack.Packer(default=codec._default, strict_types=True, use_bin_type=True)
        self._routed = 0
        # Records that may reach several channels take the encode-once path.
        self._fan_out = len(groups) > 1 or any(g.strategy in (BROADCAST, CUSTOM) for g in groups)
        self._placements: list[Placement] = [with_combiner(choose_placement(g, parallel_index, not self._fan_out))
                                             for g in groups]
        hooked = type(self).route is not BaseRouter.route   # a subclass sees every record (inline)
        # One downstream instance, nothing to choose: records go straight to that channel's own
        # `send_object`, which batches any record and counts them. Half the per-record cost of a
        # source on small records.
        group = groups[0] if len(groups) == 1 else None
        self._direct: ChannelWriter | None = None
        if (group is not None and len(group.writers) == 1 and group.key_selector is None
                and group.strategy in (ROUND_ROBIN, HASH, BALANCE) and group.writers[0].sends_anything
                and not self._placements[0].holds_records and not hooked):
            self._direct = group.writers[0]
        # What `route` calls for one record, by the table in the docstring.
        self._send: Callable[[Any, Any, bool], None]
        if self._direct is not None:
            self._send = self._direct.send_object
        elif self._fan_out:
            self._send = self._route_encoded
        elif group is None:
            self._send = _nowhere   # no downstream (a sink): what it emits is counted, and goes nowhere
        elif group.key_selector is not None:
            self._send = self._placements[0].send_selected
        else:
            self._send = self._placements[0].send
        # `route_many` can hand whole slices to the channels when placement needs no per-record decision:
        # one downstream operator, spread round robin (or by hash, which spreads unkeyed records the same
        # way) or balanced, no key selector to run, channels that batch any object, and no subclass
        # hooking `route`.
        self.routes_many = (
            group is not None and not self._fan_out and group.key_selector is None
            and group.strategy in (ROUND_ROBIN, HASH, BALANCE) and all(w.sends_anything for w in group.writers)
            and not hooked)
        # `route_selected_many` runs the key selector of the one hash group over a whole list (a map's
        # chunk before a keyby): one call per chunk instead of four frames per record. An error names
        # its record through `failed_at` (the index in the list), which a map turns into its input's.
        self.routes_selected_many = (
            group is not None and not self._fan_out and group.key_selector is not None
            and group.strategy == HASH and not hooked)
        self.failed_at = 0
        # The cheapest callable that routes one record as `route` does: the channel's own `send_object`
        # where there is one channel and nothing to choose (a frame less per record), else `route`.
        self.fast_route: Callable[[Any, Any, bool], None] = (
            self._direct.send_object if self._direct is not None else self.route)

    @property
    def records_out(self) -> int:
        """Records emitted (once each, however many channels they reached)."""
        return self._direct.objects_sent if self._direct is not None else self._routed

    def route(self, payload: Any, key: Any, keyed: bool) -> None:
        """Send one record (with the key it carries, if `keyed`) to its channel(s)."""
        self._routed += 1
        self._send(payload, key, keyed)

    def announce_upcoming(self, records: int) -> None:
        """The producer will send this many more records after the ones it routes next: balanced groups
        use it to shrink their queues as the input runs out (balance.py)."""
        for placement in self._placements:
            placement.announce_upcoming(records)

    def route_many(self, records: list) -> None:
        """Unkeyed records in emission order.

        Only when `routes_many` is True (the caller routes record by record otherwise, so that an error
        in a key selector or a partitioner names its record). Round robin places them exactly as `route`
        would one by one; a balanced group hands out slices by room.
        """
        if self._direct is not None:
            self._direct.send_many(records)
            return
        self._routed += len(records)
        self._placements[0].send_many(records)

    def route_selected_many(self, records: list) -> None:
        """Records in emission order, each keyed by the group's key selector and placed by its hash, as
        `route` would one by one. Only when `routes_selected_many` is True. On an exception,
        `failed_at` is the index of the record that raised; those before it were sent."""
        placement = self._placements[0]
        try:
            placement.send_selected_many(records)
        except BaseException:
            self.failed_at = placement.failed_at
            self._routed += self.failed_at
            raise
        self._routed += len(records)

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
        for placement in self._placements:
            group = placement.group
            gkey, gkeyed = key, keyed
            if group.key_selector is not None:
                gkey, gkeyed = group.key_selector(payload), True
            if placement.holds_records:   # a combiner keeps the record (as itself), to send on later
                placement.send(payload, gkey, gkeyed)
                continue
            targets = placement.targets(gkey, gkeyed)
            key_packed = None
            if gkeyed:
                try:
                    key_packed = codec.pack(self._packer, gkey)
                except (TypeError, ValueError, OverflowError):
                    key_packed = None
            # `single` is None only where `packed` holds the record; said again for the type checker.
            if single is None and packed is not None and (key_packed is not None or not gkeyed):
                for t in targets:
                    group.writers[t].send_record(packed, key_packed)
            else:
                body = single if single is not None else (codec.PLAIN, [packed])
                parts, nbytes = codec.frame(body[0], body[1], codec.encode_key(gkey) if gkeyed else None)
                for t in targets:
                    group.writers[t].send_single(parts, nbytes)

    def flush(self) -> None:
        for group in self.groups:
            for w in group.writers:
                w.flush()

    @property
    def has_pending(self) -> bool:
        return any(w.has_pending for g in self.groups for w in g.writers)

    def send_stop(self, signal: Any) -> None:
        """Exactly one StopSignal on every output channel, after what combiners held back."""
        for placement in self._placements:
            placement.finish()
        self._control_everywhere(signal)

    def send_barrier(self, barrier: Any) -> None:
        """A checkpoint barrier on every output channel, after every record routed before it: what
        combiners hold leaves first, as partial aggregates (so no state stays in the router)."""
        for placement in self._placements:
            if placement.holds_records:
                placement.drain()
        self._control_everywhere(barrier)

    def _control_everywhere(self, signal: Any) -> None:
        """`signal` on every output channel, none of them waiting behind another's full ring (issue 20):
        each takes it now where there is room; then only the channels still full are waited on, all
        retried after each wait. Sent one after another, the barrier for channel 2 waited until channel
        1's consumer drained its ring: one slow or aligning consumer delayed every other's alignment.

        Returns once every channel has it: the task sends nothing else meanwhile, so nothing routed
        after `signal` can overtake it, and a channel that kept it sends only it (try_send_control)."""
        writers = [w for group in self.groups for w in group.writers]
        # A chain link runs the next member's snapshot and sends by call: the channels go first.
        writers.sort(key=lambda w: w.runs_downstream)
        waiting = [w for w in writers if not w.try_send_control(signal)]
        turn, wait_s = 0, _FIRST_TURN_S
        while waiting:
            if len(waiting) == 1:
                waiting[0].wait_for_room(None)   # as send_control would: until it has room
            else:
                # A process sleeps on one futex at a time: take turns, so that room on any channel is
                # seen within a turn; turns lengthen while no channel takes it, to spare the CPU.
                waiting[turn % len(waiting)].wait_for_room(wait_s)
                turn += 1
                wait_s = min(2 * wait_s, _LAST_TURN_S)
            still = [w for w in waiting if not w.try_send_control(signal)]
            if len(still) < len(waiting):
                wait_s = _FIRST_TURN_S
            waiting = still

    def ship_to_driver(self) -> None:
        """Ship now what waits for a collect the driver runs (batched otherwise for up to 100 ms): a
        task's final checkpoint ack must come after every record it sent the driver."""
        for group in self.groups:
            for w in group.writers:
                if isinstance(w, DriverWriter):
                    w.ship()

    @property
    def blocked_seconds(self) -> float:
        """Seconds spent waiting on downstream: full rings, and balanced groups with no room."""
        return sum(w.blocked_seconds for g in self.groups for w in g.writers) + \
            sum(p.waited_s for p in self._placements)

    def get_connections_info(self) -> list[dict]:
        return [{"target": g.target, "strategy": g.strategy, "instances": len(g.writers),
                 "queue_ids": list(g.queue_ids)} for g in self.groups]

    def close(self) -> None:
        for group in self.groups:
            for w in group.writers:
                w.close()
