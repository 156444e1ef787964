"""W-TinyLFU with an adaptive window (the policy of Caffeine), and its frequency sketch.

References: Einziger, Friedman and Manes, "TinyLFU: A Highly Efficient Cache Admission
Policy" (ACM ToS 2017); Einziger, Eytan, Friedman and Manes, "Adaptive Software Cache
Management" (Middleware 2018); Caffeine's ``BoundedLocalCache`` and ``FrequencySketch``.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable

from ._base import BufferedReads
from ._sketch import FrequencySketch

__all__ = ["WTinyLFUPolicy"]

#: Hill climbing (Caffeine's constants): a step is 6.25 % of the capacity, shrinks by 2 % a
#: sample while the hit rate stays within 5 points, and restarts at full size beyond that.
_STEP = 0.0625
_STEP_DECAY = 0.98
_RESTART = 0.05
_TRANSFERS = 1000
#: A candidate at least this frequent that loses to its victim still gets in 1 time in 128,
#: so an attacker cannot pin a hot victim by flooding the sketch (Caffeine's HashDoS guard).
_WARM = 6


class WTinyLFUPolicy(BufferedReads):
    """Window TinyLFU with hill climbing, as in Caffeine.

    New keys enter a small LRU *window*. When the window is full, its oldest key (the
    candidate) is compared with the main space's victim by their frequency estimates
    (:class:`FrequencySketch`); the less frequent one is evicted (TinyLFU admission), so a
    scan only cycles through the window. The main space is a segmented LRU: *probation*
    (where candidates land) and *protected* (80 % of main: keys read again in probation).
    Every ``10 * capacity`` requests the hit rate of the last sample is compared with the one
    before and the window is grown or shrunk by a step in the direction that helped (hill
    climbing), so recency-heavy workloads get a large window (LRU-like) and frequency-heavy
    ones a small one. Sizes are in bytes when the store is bounded by bytes alone, else in
    items.

    Reads are recorded in a bounded buffer (a C-level append on the hot path) and applied,
    sketch update included, when the store next writes (as Caffeine drains its read buffer);
    in a long run of reads without a write the oldest are dropped, which only thins the
    sample.
    """

    #: Reads buffered between writes (the oldest are dropped beyond this).
    buffer_size = 256
    #: Requests per hill-climbing sample, in multiples of the capacity in items.
    climb_sample = 10

    def __init__(self, window: float = 0.01, protected: float = 0.8, adaptive: bool = True,
                 seed: int = 0) -> None:
        if not 0 < window < 1 or not 0 < protected < 1:
            raise ValueError("window and protected are fractions in (0, 1)")
        self.window_ratio = window
        self.protected_ratio = protected
        self.adaptive = adaptive
        self._window: OrderedDict[str, int] = OrderedDict()
        self._probation: OrderedDict[str, int] = OrderedDict()
        self._protected: OrderedDict[str, int] = OrderedDict()
        self._window_weight = self._probation_weight = self._protected_weight = 0
        self._weigh: Callable[[str], int] | None = None
        self._grows = True  # the sketch follows the number of keys (no item bound)
        self.sketch = FrequencySketch(16)
        self._random = random.Random(seed)
        self._buffer_reads()
        self._hits = self._misses = 0
        self._previous_rate = 0.0
        self._sample = self.climb_sample * self.sketch.capacity
        self._size(1 << 62)

    def _size(self, capacity: int) -> None:
        self.capacity = capacity
        self.window_max = max(1, capacity - int(capacity * (1 - self.window_ratio)))
        self.protected_max = int(self.protected_ratio * (capacity - self.window_max))
        self._step = -_STEP * capacity

    def bind(self, max_items: int | None, max_bytes: int | None,
             sizeof: Callable[[str], int]) -> None:
        if max_items is not None:
            self._size(max_items)
            self._grows = False
            self.sketch.resize(max_items)
            self._sample = self.climb_sample * max_items
        elif max_bytes is not None:
            self._size(max_bytes)
            self._weigh = sizeof
            self.update = self._reweigh  # type: ignore[method-assign]

    # -- the hooks ---------------------------------------------------------------------------

    def insert(self, key: str) -> None:
        if self._reads:
            self._drain()
        weight = 1 if self._weigh is None else self._weigh(key)
        self.sketch.increment(key)
        self._misses += 1
        window = self._window
        window[key] = weight
        self._window_weight += weight
        while self._window_weight > self.window_max and len(window) > 1:
            # Not full yet (a full store asked for a victim first): overflow into probation.
            old, old_weight = window.popitem(last=False)
            self._window_weight -= old_weight
            self._probation[old] = old_weight
            self._probation_weight += old_weight
        if self._grows and len(self) > self.sketch.capacity:
            self.sketch.resize(2 * len(self))
            self._sample = self.climb_sample * self.sketch.capacity
        if self._hits + self._misses >= self._sample:
            self._climb()

    def remove(self, key: str) -> None:
        if self._reads:
            self._drain()
        weight = self._window.pop(key, None)
        if weight is not None:
            self._window_weight -= weight
            return
        weight = self._probation.pop(key, None)
        if weight is not None:
            self._probation_weight -= weight
            return
        weight = self._protected.pop(key, None)
        if weight is not None:
            self._protected_weight -= weight

    def victim(self) -> str:
        if self._reads:
            self._drain()
        window, probation = self._window, self._probation
        main = probation or self._protected
        if window and self._window_weight >= self.window_max:
            candidate = next(iter(window))
            if not main:
                return candidate
            victim = next(iter(main))
            if not self._admit(candidate, victim):
                return candidate
            weight = window.pop(candidate)
            self._window_weight -= weight
            probation[candidate] = weight
            self._probation_weight += weight
            return victim
        return next(iter(main or window))

    def admit(self, key: str) -> bool:
        """Always: a key offered by a slower tier enters the window like any insert, and the
        window's exit is already TinyLFU admission against the main space's victim, with the
        sketch counting the key's sightings (the insert counts this one). A second filter in
        front of the window measured worse on every shared trace but one
        (``benchmarks/hit_ratio.py``), and a scan only cycles through the window anyway."""
        return True

    def seen(self, key: str) -> None:
        """Nothing: the sketch counts every insert and read already."""

    def __len__(self) -> int:
        return len(self._window) + len(self._probation) + len(self._protected)

    # -- internals ---------------------------------------------------------------------------

    def _admit(self, candidate: str, victim: str) -> bool:
        sketch = self.sketch
        candidate_freq = sketch.estimate(candidate)
        victim_freq = sketch.estimate(victim)
        if candidate_freq > victim_freq:
            return True
        return candidate_freq >= _WARM and self._random.getrandbits(7) == 0

    def _reweigh(self, key: str) -> None:
        if self._reads:
            self._drain()
        assert self._weigh is not None
        weight = self._weigh(key)
        for segment in (self._window, self._probation, self._protected):
            old = segment.get(key)
            if old is not None:
                segment[key] = weight
                if segment is self._window:
                    self._window_weight += weight - old
                elif segment is self._probation:
                    self._probation_weight += weight - old
                else:
                    self._protected_weight += weight - old
                break
        self._reads.append(key)

    def _drain(self) -> None:
        window, probation, protected = self._window, self._probation, self._protected
        increment = self.sketch.increment
        hits = 0
        for key in self._reads:
            if key in window:
                window.move_to_end(key)
            elif key in protected:
                protected.move_to_end(key)
            elif key in probation:
                weight = probation.pop(key)
                self._probation_weight -= weight
                protected[key] = weight
                self._protected_weight += weight
                if self._protected_weight > self.protected_max:
                    self._demote()
            else:
                continue  # gone since it was read
            increment(key)
            hits += 1
        self._reads.clear()
        self._hits += hits
        if self._hits + self._misses >= self._sample:
            self._climb()

    def _demote(self) -> None:
        protected, probation = self._protected, self._probation
        while self._protected_weight > self.protected_max and protected:
            key, weight = protected.popitem(last=False)
            self._protected_weight -= weight
            probation[key] = weight
            self._probation_weight += weight

    def _climb(self) -> None:
        requests = self._hits + self._misses
        rate = self._hits / requests
        self._hits = self._misses = 0
        if not self.adaptive:
            return
        change = rate - self._previous_rate
        amount = self._step if change >= 0 else -self._step
        if abs(change) >= _RESTART:
            self._step = _STEP * self.capacity * (1 if amount >= 0 else -1)
        else:
            self._step = _STEP_DECAY * amount
        self._previous_rate = rate
        self._demote()
        if int(amount) > 0:
            self._grow_window(int(amount))
        elif int(amount) < 0:
            self._shrink_window(-int(amount))

    def _grow_window(self, amount: int) -> None:
        quota = min(amount, self.protected_max)
        if quota <= 0:
            return
        self.protected_max -= quota
        self.window_max += quota
        self._demote()
        probation, protected = self._probation, self._protected

        def source(quota: int) -> OrderedDict[str, int]:
            if not probation or quota < next(iter(probation.values())):
                return protected
            return probation

        quota = self._transfer(quota, source, self._window)
        self.protected_max += quota
        self.window_max -= quota

    def _shrink_window(self, amount: int) -> None:
        quota = min(amount, max(0, self.window_max - 1))
        if quota <= 0:
            return
        self.protected_max += quota
        self.window_max -= quota
        window = self._window
        quota = self._transfer(quota, lambda quota: window, self._probation)
        self.protected_max -= quota
        self.window_max += quota

    def _transfer(self, quota: int, source: Callable[[int], OrderedDict[str, int]],
                  target: OrderedDict[str, int]) -> int:
        """Move keys from the head of ``source(quota left)`` to ``target`` while they fit in
        ``quota`` (at most ``_TRANSFERS`` of them); the quota left."""
        for _ in range(_TRANSFERS):
            segment = source(quota)
            if not segment:
                break
            key = next(iter(segment))
            weight = segment[key]
            if quota < weight:
                break
            quota -= weight
            del segment[key]
            self._weigh_segment(segment, -weight)
            target[key] = weight
            self._weigh_segment(target, weight)
        return quota

    def _weigh_segment(self, segment: OrderedDict[str, int], delta: int) -> None:
        if segment is self._window:
            self._window_weight += delta
        elif segment is self._probation:
            self._probation_weight += delta
        else:
            self._protected_weight += delta

