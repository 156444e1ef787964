"""Eviction policies and the bounded store that applies them.

A :class:`BoundedStore` holds records in a dict and asks its :class:`EvictionPolicy` which key
to give up whenever an insert pushes it over its item or byte limit (the cachetools shape:
eviction lives in one place, a policy only orders keys). Evicted records are handed to a
listener, which is how the front spills items whose home is the evicting tier.

The policies, by name (``memory://?policy=NAME``, :func:`policy_from_name`):

* ``lru`` - :class:`LRUPolicy`, least recently used.
* ``fifo`` - :class:`FIFOPolicy`, first in, first out.
* ``sieve`` - :class:`SievePolicy`, SIEVE (a FIFO whose hand spares keys read since it
  last passed).
* ``s3fifo`` - :class:`S3FIFOPolicy`, S3-FIFO (small, main and ghost FIFO queues).
* ``wtinylfu`` - :class:`WTinyLFUPolicy`, W-TinyLFU with an adaptive window (Caffeine's
  policy): an LRU window, a segmented main space, admission by a frequency sketch. Its
  sketch also decides promotions (:meth:`EvictionPolicy.admit`).
* ``adaptive`` (the default) - :class:`AdaptivePolicy`: runs LRU, S3-FIFO (small queue 5 %
  and 10 %) and S3-FIFO with frequency admission (:class:`S3FIFOAdmittingPolicy`) as shadow
  caches of keys only and evicts as the one that has been hitting most lately, switching
  only when the lead pays for the keys a switch would have to fetch again.

``benchmarks/hit_ratio.py`` measures them all on real traces against libCacheSim and theine.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from ._adaptive import AdaptivePolicy, S3FIFOAdmittingPolicy
from ._base import Admitting, EvictionListener, EvictionPolicy
from ._classic import FIFOPolicy, LRUPolicy, S3FIFOPolicy, SievePolicy
from ._sketch import FrequencySketch
from ._store import BoundedStore
from ._tinylfu import WTinyLFUPolicy

__all__ = ["DEFAULT_POLICY", "POLICY_NAMES", "AdaptivePolicy", "Admitting", "BoundedStore",
           "EvictionListener", "EvictionPolicy", "FIFOPolicy", "FrequencySketch", "LRUPolicy",
           "S3FIFOAdmittingPolicy", "S3FIFOPolicy", "SievePolicy", "WTinyLFUPolicy",
           "policy_from_name", "policy_name"]

_POLICIES: dict[str, Callable[[], EvictionPolicy]] = {
    "adaptive": AdaptivePolicy,
    "fifo": FIFOPolicy,
    "lru": LRUPolicy,
    "s3fifo": S3FIFOPolicy,
    "sieve": SievePolicy,
    "wtinylfu": WTinyLFUPolicy,
}

#: Every policy name :func:`policy_from_name` takes (``-`` and ``_`` are ignored, so
#: ``w-tinylfu`` and ``s3_fifo`` work too).
POLICY_NAMES = tuple(sorted(_POLICIES))

#: The in-process tier's policy unless configured: the one ``benchmarks/hit_ratio.py`` finds
#: within 1 point of the best policy at every size of every shared trace.
DEFAULT_POLICY = "adaptive"


def policy_name(name: str) -> str:
    """The policy's name as in :data:`POLICY_NAMES`; ConfigError naming the valid ones when
    ``name`` is none of them."""
    canonical = name.lower().replace("-", "").replace("_", "")
    if canonical not in _POLICIES:
        raise ConfigError(f"unknown eviction policy {name!r}; choose one of "
                          f"{', '.join(POLICY_NAMES)}")
    return canonical


def policy_from_name(name: str) -> EvictionPolicy:
    """A fresh policy by name: one of :data:`POLICY_NAMES`. ConfigError names the valid ones."""
    return _POLICIES[policy_name(name)]()
