"""Eviction policies and the bounded store that applies them.

A :class:`BoundedStore` holds records in a dict and asks its :class:`EvictionPolicy` which key
to give up whenever an insert pushes it over its item or byte limit (the cachetools shape:
eviction lives in one place, a policy only orders keys). Evicted records are handed to a
listener, which is how the front spills items whose home is the evicting tier.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator

from .errors import ConfigError, ValueTooLargeError
from .tiers import Record

__all__ = ["BoundedStore", "EvictionListener", "EvictionPolicy", "FIFOPolicy", "LRUPolicy",
           "policy_from_name"]

EvictionListener = Callable[[str, Record], None]


class EvictionPolicy(ABC):
    """Orders the keys of one store for eviction. Subclasses override the four hooks."""

    @abstractmethod
    def insert(self, key: str) -> None:
        """``key`` was added (it was not present)."""

    @abstractmethod
    def access(self, key: str) -> None:
        """``key`` was read or overwritten."""

    @abstractmethod
    def remove(self, key: str) -> None:
        """``key`` left the store (deleted, expired or evicted)."""

    @abstractmethod
    def victim(self) -> str:
        """The key to evict next. Only called on a non-empty store."""


class LRUPolicy(EvictionPolicy):
    """Least recently used: reads and overwrites move a key to the back of the queue."""

    def __init__(self) -> None:
        self._order: OrderedDict[str, None] = OrderedDict()
        self.access = self._order.move_to_end  # type: ignore[method-assign]  # hot path

    def insert(self, key: str) -> None:
        self._order[key] = None

    def access(self, key: str) -> None:
        self._order.move_to_end(key)

    def remove(self, key: str) -> None:
        self._order.pop(key, None)

    def victim(self) -> str:
        return next(iter(self._order))


class FIFOPolicy(LRUPolicy):
    """First in, first out: reads do not change the order (cheaper hits, lower hit ratio)."""

    def __init__(self) -> None:
        super().__init__()
        self.access = self._noop  # type: ignore[method-assign]

    @staticmethod
    def _noop(key: str) -> None:
        return None


_POLICIES: dict[str, Callable[[], EvictionPolicy]] = {"lru": LRUPolicy, "fifo": FIFOPolicy}


def policy_from_name(name: str) -> EvictionPolicy:
    """A fresh policy by name (``lru`` or ``fifo``)."""
    try:
        return _POLICIES[name.lower()]()
    except KeyError:
        raise ConfigError(f"unknown eviction policy {name!r}; choose one of "
                          f"{', '.join(sorted(_POLICIES))}") from None


class BoundedStore:
    """A dict of records bounded by item count and/or total ``Record.size`` in bytes.

    ``set`` evicts by the policy until the new record fits, then inserts; each evicted record
    goes to ``listener``. A record larger than ``max_bytes`` on its own raises
    :class:`ValueTooLargeError` and changes nothing.
    """

    __slots__ = ("_access", "bytes", "data", "evictions", "listener", "max_bytes", "max_items",
                 "policy")

    def __init__(self, max_items: int | None = None, max_bytes: int | None = None,
                 policy: EvictionPolicy | None = None) -> None:
        if max_items is not None and max_items < 1:
            raise ConfigError(f"max_items must be at least 1, got {max_items}")
        if max_bytes is not None and max_bytes < 1:
            raise ConfigError(f"max_bytes must be at least 1, got {max_bytes}")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.policy = policy if policy is not None else LRUPolicy()
        self._access = self.policy.access
        self.data: dict[str, Record] = {}
        self.bytes = 0
        self.evictions = 0
        self.listener: EvictionListener | None = None

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.data))

    def peek(self, key: str) -> Record | None:
        """The record under ``key`` (marking it used), or None."""
        rec = self.data.get(key)
        if rec is not None:
            self._access(key)
        return rec

    def fits(self, size: int) -> bool:
        """Whether a record of ``size`` bytes could be held at all."""
        return self.max_bytes is None or size <= self.max_bytes

    def set(self, key: str, rec: Record) -> None:
        """Insert or replace, evicting others first so the limits hold afterwards."""
        if not self.fits(rec.size):
            raise ValueTooLargeError(rec.size, self.max_bytes, "the store's max_bytes")
        old = self.data.pop(key, None)
        if old is not None:
            self.bytes -= old.size
            self.policy.remove(key)
        while self.data and (
            (self.max_items is not None and len(self.data) >= self.max_items)
            or (self.max_bytes is not None and self.bytes + rec.size > self.max_bytes)
        ):
            victim = self.policy.victim()
            evicted = self.pop(victim)
            self.evictions += 1
            if evicted is not None and self.listener is not None:
                self.listener(victim, evicted)
        self.data[key] = rec
        self.bytes += rec.size
        self.policy.insert(key)

    def pop(self, key: str) -> Record | None:
        """Remove and return the record under ``key`` (None when absent)."""
        rec = self.data.pop(key, None)
        if rec is not None:
            self.bytes -= rec.size
            self.policy.remove(key)
        return rec

    def clear(self) -> None:
        self.data.clear()
        self.bytes = 0
        for key in list(getattr(self.policy, "_order", ())):
            self.policy.remove(key)
