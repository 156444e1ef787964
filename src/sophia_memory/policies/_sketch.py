"""The frequency sketch TinyLFU admission reads: a count-min sketch of 4-bit counters behind a
doorkeeper, aged by halving (Caffeine's ``FrequencySketch``, with the TinyLFU paper's
doorkeeper)."""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["FrequencySketch"]

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
#: Halves both 4-bit counters of a byte (the sketch's aging step, done by ``translate``).
_HALVE = bytes((v >> 1) & 0x77 for v in range(256))


class FrequencySketch:
    """How often each key was seen lately: a count-min sketch of 4-bit counters (two to a
    byte, four rows, 16 counters per key of capacity, as in Caffeine) behind a doorkeeper.

    The doorkeeper is a Bloom filter that takes a key's first sighting, so keys seen once (most
    of a scan) never reach the counters. The estimate is the smallest of the key's four
    counters, plus one if the doorkeeper has it. After ``10 * capacity`` sightings every
    counter is halved and the doorkeeper cleared (aging: the sketch forgets what stopped
    being popular). Keys are hashed with ``hash()``, mixed so that aligned integers spread.
    """

    __slots__ = ("_additions", "_door", "_door_mask", "_mask", "_table", "_width",
                 "capacity", "sample_size")

    def __init__(self, capacity: int) -> None:
        self.resize(capacity)

    def resize(self, capacity: int) -> None:
        """Size for ``capacity`` keys (forgets every count)."""
        self.capacity = max(16, capacity)
        width = 1 << (4 * self.capacity - 1).bit_length()  # counters per row
        self._width = width
        self._mask = width - 1
        self._table = bytearray(width * 2)  # 4 rows x width counters, 2 counters a byte
        door_bits = 16 * width  # 64 bits per key of capacity
        self._door = bytearray(door_bits >> 3)
        self._door_mask = door_bits - 1
        self.sample_size = 10 * self.capacity
        self._additions = 0

    def increment(self, key: Hashable) -> None:
        """Count one sighting of ``key``."""
        h = (hash(key) * _GOLDEN) & _M64
        h1, h2 = h >> 32, (h >> 17) | 1
        door, dm = self._door, self._door_mask
        a, b = (h1 + 4 * h2) & dm, (h1 + 5 * h2) & dm
        ba, bb = 1 << (a & 7), 1 << (b & 7)
        if not (door[a >> 3] & ba and door[b >> 3] & bb):
            door[a >> 3] |= ba
            door[b >> 3] |= bb
        else:
            t, m, w = self._table, self._mask, self._width
            i = h1 & m
            v = t[i >> 1]
            if (v >> ((i & 1) << 2)) & 15 != 15:
                t[i >> 1] = v + (1 << ((i & 1) << 2))
            i = w + ((h1 + h2) & m)
            v = t[i >> 1]
            if (v >> ((i & 1) << 2)) & 15 != 15:
                t[i >> 1] = v + (1 << ((i & 1) << 2))
            i = 2 * w + ((h1 + 2 * h2) & m)
            v = t[i >> 1]
            if (v >> ((i & 1) << 2)) & 15 != 15:
                t[i >> 1] = v + (1 << ((i & 1) << 2))
            i = 3 * w + ((h1 + 3 * h2) & m)
            v = t[i >> 1]
            if (v >> ((i & 1) << 2)) & 15 != 15:
                t[i >> 1] = v + (1 << ((i & 1) << 2))
        self._additions += 1
        if self._additions >= self.sample_size:
            self._age()

    def estimate(self, key: Hashable) -> int:
        """How many times ``key`` was seen lately (0 to 16; never an undercount before aging).

        The rows are read in turn and the reading stops at a zero counter (the minimum can
        go no lower): most keys of a scan were never counted, and cost one row."""
        h = (hash(key) * _GOLDEN) & _M64
        h1, h2 = h >> 32, (h >> 17) | 1
        t, m = self._table, self._mask
        i = h1 & m
        low = (t[i >> 1] >> ((i & 1) << 2)) & 15
        if low:  # the other rows, unrolled (a loop costs a third more)
            w = self._width
            i = w + ((h1 + h2) & m)
            count = (t[i >> 1] >> ((i & 1) << 2)) & 15
            if count < low:  # noqa: PLR1730 (min() is a call: slower)
                low = count
            if low:
                i = 2 * w + ((h1 + 2 * h2) & m)
                count = (t[i >> 1] >> ((i & 1) << 2)) & 15
                if count < low:  # noqa: PLR1730 (min() is a call: slower)
                    low = count
                if low:
                    i = 3 * w + ((h1 + 3 * h2) & m)
                    count = (t[i >> 1] >> ((i & 1) << 2)) & 15
                    if count < low:  # noqa: PLR1730 (min() is a call: slower)
                        low = count
        door, dm = self._door, self._door_mask
        a = (h1 + 4 * h2) & dm
        if door[a >> 3] & (1 << (a & 7)):
            b = (h1 + 5 * h2) & dm
            if door[b >> 3] & (1 << (b & 7)):
                return low + 1
        return low

    def _age(self) -> None:
        self._table = self._table.translate(_HALVE)
        self._door = bytearray(len(self._door))
        self._additions //= 2
