"""Tiers, the records backends move, and the entries the front returns."""

from __future__ import annotations

import enum
import itertools
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Entry", "Hit", "Record", "Tier", "next_version"]


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
    byte-bounded eviction. ``version`` is the workflow version (L5: 1, 2, ...); in the other
    tiers a number that every write changes (:func:`next_version`), which conditional writes
    compare (``put(expected_version=)``); 0 for a record written without one.
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


class _Versions:
    """The counter behind :func:`next_version`: a random start per process, and a new one in
    a forked child, so two processes writing the same key never hand out the same number
    (short of a 2**-30 chance over 2**30 writes)."""

    __slots__ = ("next",)

    def __init__(self) -> None:
        self.next: Callable[[], int] = int
        self.reseed()

    def reseed(self) -> None:
        self.next = itertools.count(secrets.randbits(61) + (1 << 32)).__next__


_versions = _Versions()
os.register_at_fork(after_in_child=_versions.reseed)


def next_version() -> int:
    """The version a write to a tier that keeps no versions gives its item: unique to the
    write, never 0, below 2**63."""
    return _versions.next()
