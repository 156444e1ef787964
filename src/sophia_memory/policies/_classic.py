"""Queue policies: LRU, FIFO, SIEVE and S3-FIFO.

Each keeps its queues in ``OrderedDict``s: C-level moves, and the oldest key in O(1) (a plain
dict used as a queue slows down as deleted slots pile up at its front).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection

from ._base import BufferedReads, EvictionPolicy

__all__ = ["FIFOPolicy", "LRUPolicy", "S3FIFOPolicy", "SievePolicy"]


class LRUPolicy(EvictionPolicy):
    """Least recently used: reads and overwrites move a key to the back of the queue."""

    def __init__(self) -> None:
        self._order: OrderedDict[str, None] = OrderedDict()
        # Hot path: the hooks are the dict's own C methods.
        self.access = self._order.move_to_end  # type: ignore[method-assign]
        self.update = self._order.move_to_end  # type: ignore[method-assign]

    def insert(self, key: str) -> None:
        self._order[key] = None

    def access(self, key: str) -> None:
        self._order.move_to_end(key)

    def update(self, key: str) -> None:
        self._order.move_to_end(key)

    def remove(self, key: str) -> None:
        self._order.pop(key, None)

    def held_keys(self) -> Collection[str]:
        return self._order.keys()

    def victim(self) -> str:
        return next(iter(self._order))

    def next_victim(self) -> str | None:
        return next(iter(self._order), None)


class FIFOPolicy(LRUPolicy):
    """First in, first out: reads do not change the order (cheaper hits, lower hit ratio). An
    overwrite re-enters the queue at the back."""

    def __init__(self) -> None:
        super().__init__()
        self.access = self._noop  # type: ignore[method-assign]

    @staticmethod
    def _noop(key: str) -> None:
        return None


class SievePolicy(EvictionPolicy):
    """SIEVE (Zhang et al., NSDI 2024): a FIFO queue with one "visited" bit per key and a hand
    that sweeps from the oldest key to the newest. A hit only sets the bit; the hand clears
    set bits as it passes and evicts the first key whose bit is clear. Survivors keep their
    place (unlike CLOCK, which moves them to the front).

    The queue is two ordered dicts: ``_behind`` holds the keys the hand has passed (oldest
    first) and ``_ahead`` the keys from the hand to the newest; new keys join ``_ahead``. When
    the hand reaches the newest key it wraps: ``_behind`` becomes ``_ahead``.
    """

    def __init__(self) -> None:
        self._ahead: OrderedDict[str, None] = OrderedDict()
        self._behind: OrderedDict[str, None] = OrderedDict()
        self._visited: set[str] = set()
        self.access = self._visited.add  # type: ignore[method-assign,assignment]  # hot path
        self.update = self._visited.add  # type: ignore[method-assign,assignment]

    def insert(self, key: str) -> None:
        # Past the newest key the hand wraps to the oldest at the next eviction: a key added
        # then is the last it reaches, so it joins the passed keys.
        (self._ahead or self._behind)[key] = None

    def access(self, key: str) -> None:
        self._visited.add(key)

    def update(self, key: str) -> None:
        self._visited.add(key)

    def remove(self, key: str) -> None:
        if key in self._ahead:
            del self._ahead[key]
        else:
            self._behind.pop(key, None)
        self._visited.discard(key)

    def next_victim(self) -> str | None:
        return next(iter(self._ahead or self._behind), None)  # the key at the hand

    def victim(self) -> str:
        visited = self._visited
        while True:
            if not self._ahead:
                self._ahead, self._behind = self._behind, self._ahead
            key = next(iter(self._ahead))
            if key not in visited:
                return key
            visited.discard(key)
            del self._ahead[key]
            self._behind[key] = None


class S3FIFOPolicy(BufferedReads):
    """S3-FIFO (Yang et al., SOSP 2023): a small FIFO (10 % of the capacity) that new keys
    enter, a main FIFO, and a ghost FIFO of keys recently evicted from the small one.

    A key leaving the small queue moves to main if it was read at least ``move_threshold``
    times there, else it is evicted and remembered in the ghost; a key inserted while in the
    ghost goes straight to main (and so does a key that finds the small queue full before the
    store first evicts). Main is a CLOCK with a 2-bit counter per key: a key at its
    head with a count is moved to its tail with the count decremented. Sizes are in bytes
    when the store is bounded by bytes alone, else in items.

    Reads are recorded in a bounded buffer (a C-level append on the hot path) and counted
    when the store next writes; in a long run of reads without writes the oldest are dropped.
    """

    def __init__(self, small_ratio: float = 0.1, move_threshold: int = 2) -> None:
        if not 0 < small_ratio < 1:
            raise ValueError(f"small_ratio must be in (0, 1), got {small_ratio}")
        self.small_ratio = small_ratio
        self.move_threshold = move_threshold
        self._small: OrderedDict[str, int] = OrderedDict()
        self._main: OrderedDict[str, int] = OrderedDict()
        self._ghost: OrderedDict[str, int] = OrderedDict()
        self._freq: dict[str, int] = {}
        self._small_weight = self._main_weight = self._ghost_weight = 0
        self._small_max = 1
        self._main_max = self._ghost_max = 1 << 62
        self._weigh: Callable[[str], int] | None = None
        self._filling = True  # nothing evicted yet
        self._buffer_reads()

    def bind(self, max_items: int | None, max_bytes: int | None,
             sizeof: Callable[[str], int]) -> None:
        capacity = max_items
        if max_items is None and max_bytes is not None:
            capacity, self._weigh = max_bytes, sizeof
        if capacity is not None:
            self._small_max = max(1, int(capacity * self.small_ratio))
            self._main_max = capacity - self._small_max
            self._ghost_max = max(1, int(capacity * (1 - self.small_ratio)))
        if self._weigh is not None:  # an overwrite may change the weight
            self.update = self._reweigh  # type: ignore[method-assign]

    def _reweigh(self, key: str) -> None:
        self._drain()
        assert self._weigh is not None
        weight = self._weigh(key)
        if key in self._small:
            self._small_weight += weight - self._small[key]
            self._small[key] = weight
        elif key in self._main:
            self._main_weight += weight - self._main[key]
            self._main[key] = weight
        self._reads.append(key)

    def _drain(self) -> None:
        reads = self._reads
        if not reads:
            return
        freq = self._freq
        get = freq.get
        for key in reads:
            count = get(key)
            if count is not None and count < 3:
                freq[key] = count + 1
        reads.clear()

    def insert(self, key: str) -> None:
        if self._reads:
            self._drain()
        weight = 1 if self._weigh is None else self._weigh(key)
        self._freq[key] = 0
        ghost_weight = self._ghost.pop(key, None)
        if ghost_weight is not None:
            self._ghost_weight -= ghost_weight
            self._main[key] = weight
            self._main_weight += weight
        elif self._filling and self._small_weight >= self._small_max:
            self._main[key] = weight  # the first fill: small is full, main takes the rest
            self._main_weight += weight
        else:
            self._small[key] = weight
            self._small_weight += weight

    def remove(self, key: str) -> None:
        if self._reads:
            self._drain()
        if self._freq.pop(key, None) is None:
            return
        weight = self._small.pop(key, None)
        if weight is not None:
            self._small_weight -= weight
        else:
            self._main_weight -= self._main.pop(key)

    def victim(self) -> str:
        if self._reads:
            self._drain()
        self._filling = False
        small, main, freq = self._small, self._main, self._freq
        if small and self._main_weight <= self._main_max:
            while small:  # evict from small; keys read often enough move to main
                key = next(iter(small))
                if freq[key] < self.move_threshold and not self._passes(key):
                    self._remember(key, small[key])
                    return key
                weight = small.pop(key)
                self._small_weight -= weight
                main[key] = weight
                self._main_weight += weight
                freq[key] = 0
        while True:  # evict from main: CLOCK with a 2-bit counter
            key = next(iter(main))
            count = freq[key]
            if count == 0:
                return key
            freq[key] = min(count, 3) - 1
            main.move_to_end(key)

    def next_victim(self) -> str | None:
        return next(iter(self._small or self._main), None)

    def held_keys(self) -> Collection[str]:
        return self._freq.keys()  # small and main (a ghost key has no count)

    def _passes(self, key: str) -> bool:
        """Whether ``key``, leaving the small queue without the reads that move it to main,
        goes to main all the same (never, here; a subclass may admit it by frequency)."""
        return False

    def _remember(self, key: str, weight: int) -> None:
        ghost = self._ghost
        ghost[key] = weight
        self._ghost_weight += weight
        while self._ghost_weight > self._ghost_max and ghost:
            self._ghost_weight -= ghost.popitem(last=False)[1]
