"""The bounded store: a dict of records that asks its policy what to evict."""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import ConfigError, ValueTooLargeError
from ..tiers import Record
from ._base import EvictionListener, EvictionPolicy
from ._classic import LRUPolicy

__all__ = ["BoundedStore"]


class BoundedStore:
    """A dict of records bounded by item count and/or total ``Record.size`` in bytes.

    ``set`` evicts by the policy until the new record fits, then inserts; each evicted record
    goes to ``listener``. A record larger than ``max_bytes`` on its own raises
    :class:`ValueTooLargeError` and changes nothing. Overwriting a key never evicts that key.
    """

    __slots__ = ("_access", "_insert", "_remove", "_update", "bytes", "data", "evictions",
                 "listener", "max_bytes", "max_items", "policy", "touch")

    def __init__(self, max_items: int | None = None, max_bytes: int | None = None,
                 policy: EvictionPolicy | None = None) -> None:
        if max_items is not None and max_items < 1:
            raise ConfigError(f"max_items must be at least 1, got {max_items}")
        if max_bytes is not None and max_bytes < 1:
            raise ConfigError(f"max_bytes must be at least 1, got {max_bytes}")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.data: dict[str, Record] = {}
        self.bytes = 0
        self.evictions = 0
        self.listener: EvictionListener | None = None
        self.policy = policy if policy is not None else LRUPolicy()
        self.policy.bind(max_items, max_bytes, self._sizeof)
        # Bound after bind: a policy may choose its hooks there.
        self._access = self.policy.access
        #: Marks a held key used (the policy's access hook, a C-level call for every policy).
        self.touch = self._access
        self._insert = self.policy.insert
        self._update = self.policy.update
        self._remove = self.policy.remove

    def _sizeof(self, key: str) -> int:
        return self.data[key].size

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

    def fits(self, size: int, pool: str | None = None) -> bool:
        """Whether a record of ``size`` bytes could be held at all (``pool``: unused, one
        store has no named pools)."""
        return self.max_bytes is None or size <= self.max_bytes

    def full(self, size: int) -> bool:
        """Whether inserting a new record of ``size`` bytes would evict something."""
        return ((self.max_items is not None and len(self.data) >= self.max_items)
                or (self.max_bytes is not None and self.bytes + size > self.max_bytes))

    def admit(self, key: str, size: int) -> bool:
        """Whether a copy of ``key`` offered by a slower tier should be inserted: always
        when it is here already or fits without evicting, else when the policy says it is
        worth more than its victim (:meth:`EvictionPolicy.admit`). The policy records the
        offer either way."""
        worth = self.policy.admit(key)
        return worth or key in self.data or not self.full(size)

    def set(self, key: str, rec: Record) -> None:
        """Insert or replace, evicting others first so the limits hold afterwards."""
        size = rec.size
        max_bytes = self.max_bytes
        if max_bytes is not None and size > max_bytes:
            raise ValueTooLargeError(size, max_bytes, "the store's max_bytes")
        data = self.data
        old = data.get(key)
        if old is not None:
            if max_bytes is None or size <= old.size:  # nothing to evict: replace in place
                data[key] = rec
                self.bytes += size - old.size
                self._update(key)
                return
            del data[key]
            self.bytes -= old.size
            self._remove(key)
        max_items = self.max_items
        if ((max_items is not None and len(data) >= max_items)
                or (max_bytes is not None and self.bytes + size > max_bytes)):
            self._make_room(size)
        data[key] = rec
        self.bytes += size
        self._insert(key)

    def _make_room(self, size: int) -> None:
        data, victim = self.data, self.policy.victim
        max_items, max_bytes = self.max_items, self.max_bytes
        while data and (
            (max_items is not None and len(data) >= max_items)
            or (max_bytes is not None and self.bytes + size > max_bytes)
        ):
            key = victim()
            evicted = self.pop(key)
            self.evictions += 1
            if evicted is not None and self.listener is not None:
                self.listener(key, evicted)

    def pop(self, key: str) -> Record | None:
        """Remove and return the record under ``key`` (None when absent)."""
        rec = self.data.pop(key, None)
        if rec is not None:
            self.bytes -= rec.size
            self._remove(key)
        return rec

    def clear(self) -> None:
        keys = list(self.data)
        self.data.clear()
        self.bytes = 0
        for key in keys:
            self._remove(key)

