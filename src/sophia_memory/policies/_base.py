"""The policy interface: what a bounded store tells its policy, and what it asks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Collection
from typing import Protocol, runtime_checkable

from ..tiers import Record
from ._sketch import FrequencySketch

__all__ = ["Admitting", "BufferedReads", "EvictionListener", "EvictionPolicy"]

EvictionListener = Callable[[str, Record], None]


class EvictionPolicy(ABC):
    """Orders the keys of one store for eviction. Subclasses override the four abstract hooks;
    the others have defaults that are right for any policy.

    The store calls, in this contract:

    * :meth:`bind` once, before anything else: the store's bounds, and how to weigh a key;
    * :meth:`insert` after a key was added, :meth:`access` when one was read,
      :meth:`update` when one was overwritten, :meth:`remove` after one left;
    * :meth:`victim` when the store is full: the key to evict next. The caller removes that
      key (which calls :meth:`remove`) before it calls any other hook, so a policy may move
      other keys between its queues while it chooses.

    ``access`` is on every hit of the in-process hot path: it must cost a C-level call (a
    dict, set or deque method), never a frequency-sketch update. Policies that need more per
    hit record the key in a bounded buffer and do the work when the store next writes.
    """

    def bind(self, max_items: int | None, max_bytes: int | None,
             sizeof: Callable[[str], int]) -> None:
        """The store's bounds and ``sizeof(key)``, the byte size of a key it holds. Policies
        that size queues (a window, a probation segment) measure them in bytes when the store
        is bounded by bytes alone, else in items."""
        return None

    @abstractmethod
    def insert(self, key: str) -> None:
        """``key`` was added (it was not present)."""

    @abstractmethod
    def access(self, key: str) -> None:
        """``key`` was read."""

    def update(self, key: str) -> None:
        """``key`` was overwritten (it stays). By default the old entry leaves and the new one
        enters; policies where an overwrite counts as a use override this."""
        self.remove(key)
        self.insert(key)

    @abstractmethod
    def remove(self, key: str) -> None:
        """``key`` left the store (deleted, expired or evicted)."""

    @abstractmethod
    def victim(self) -> str:
        """The key to evict next. Only called on a non-empty store; see the contract above."""

    def held_keys(self) -> Collection[str] | None:
        """A live view of exactly the keys this policy holds (inserted and not removed yet),
        where it keeps one; None by default. Read only: a shadow of
        :class:`AdaptivePolicy` that counts items uses it instead of a copy of the keys."""
        return None

    #: Offers from slower tiers, counted by :meth:`admit` (made at the first offer).
    _offers: FrequencySketch | None = None

    def admit(self, key: str) -> bool:
        """Whether ``key``, offered by a slower tier (a promotion), is worth more than the key
        this policy would evict to make room for it (TinyLFU admission), counting the offer.

        By default the estimate counts offers only (hits here are not counted: that would
        cost the hot path), so a key gets in when it was offered more often than the victim
        was: a scan, each key offered once, cannot displace keys that got in on a repeated
        offer. W-TinyLFU overrides this with its own sketch, which sees every access."""
        offers = self._offers
        if offers is None:
            offers = self._offers = FrequencySketch(_OFFERS)
        offers.increment(key)
        victim = self.next_victim()
        return victim is None or offers.estimate(key) > offers.estimate(victim)

    def seen(self, key: str) -> None:
        """Count a sighting of ``key`` other than an offer (a write to the store) in the
        estimate :meth:`admit` reads, so a key written here is not worth less than a key
        offered once. Hits are not counted (that would cost the hot path)."""
        offers = self._offers
        if offers is None:
            offers = self._offers = FrequencySketch(_OFFERS)
        offers.increment(key)

    def next_victim(self) -> str | None:
        """The key :meth:`victim` would most likely give up next, changing nothing; None
        when unknown (then :meth:`admit` admits every offer)."""
        return None


#: Keys the default admission sketch is sized for (it ages every 10x this many offers).
_OFFERS = 4096


class BufferedReads(EvictionPolicy):
    """A policy whose hits are recorded in a bounded buffer (a C-level append on the hot
    path) and counted when the store next writes (:meth:`_drain`); in a long run of reads
    without writes the oldest are dropped. Subclasses call :meth:`_buffer_reads` in
    ``__init__``."""

    #: Reads buffered between writes (the oldest are dropped beyond this).
    buffer_size = 1024

    def _buffer_reads(self) -> None:
        self._reads: deque[str] = deque(maxlen=self.buffer_size)
        self.access = self._reads.append  # type: ignore[method-assign,assignment]  # hot path
        self.update = self._reads.append  # type: ignore[method-assign,assignment]

    def access(self, key: str) -> None:
        self._reads.append(key)

    def update(self, key: str) -> None:
        self._reads.append(key)

    @abstractmethod
    def _drain(self) -> None:
        """Count the buffered reads."""


@runtime_checkable
class Admitting(Protocol):
    """A tier that decides whether a promoted copy is worth what it would evict."""

    def admit(self, key: str, size: int) -> bool:
        """Whether a copy of ``key`` (``size`` bytes) offered by a slower tier should be
        inserted. Records the offer in the tier's frequency estimate."""
        ...
