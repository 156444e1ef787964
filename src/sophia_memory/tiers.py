"""Tiers, the records backends move, and the entries the front returns."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Entry", "Hit", "Record", "Tier"]


class Tier(enum.IntEnum):
    """The six memory levels, fastest first. ``get`` searches them in this order."""

    GPU = 0
    SESSION = 1
    CORTEX = 2
    PERSISTENT = 3
    VECTOR = 4
    WORKFLOW = 5

    @property
    def budget_ms(self) -> float:
        """The platform's p95 latency ceiling for this tier, in milliseconds."""
        return _BUDGET_MS[self]

    def __str__(self) -> str:
        return f"Tier.{self.name}"


_BUDGET_MS = {
    Tier.GPU: 10.0,
    Tier.SESSION: 50.0,
    Tier.CORTEX: 100.0,
    Tier.PERSISTENT: 200.0,
    Tier.VECTOR: 300.0,
    Tier.WORKFLOW: 400.0,
}


@dataclass(slots=True)
class Record:
    """What a backend stores under a key: an opaque payload plus the metadata every tier keeps.

    ``payload`` is ``bytes`` for backends that serialise; backends that keep live Python objects
    (they declare :class:`~sophia_memory.backends.base.ObjectStore`) hold the value itself.
    ``expires_at`` is an absolute time on the memory's clock (seconds), ``None`` for no expiry.
    ``home`` is True when this tier is where the item was put (it spills on eviction) and False
    for a promoted copy (dropped on eviction). ``size`` is the payload's size in bytes, used by
    byte-bounded eviction. ``version`` is the workflow version (L5) or 0.
    """

    payload: Any
    expires_at: float | None = None
    home: bool = True
    size: int = 0
    version: int = 0
    created_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def expired(self, now: float) -> bool:
        """True when the record has an expiry at or before ``now``."""
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True, slots=True)
class Entry:
    """A value together with where it was found and its metadata (``Memory.get_entry``)."""

    key: str
    value: Any
    tier: Tier
    version: int
    expires_at: float | None
    created_at: float
    home: bool
    #: Metadata stored with the item (``put(meta=)``, loader timings, Cortex columns).
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result: the key, its similarity score and its value (``Memory.search``)."""

    key: str
    score: float
    value: Any
