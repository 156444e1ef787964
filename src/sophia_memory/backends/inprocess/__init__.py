"""In-process backends: ``memory://``, a bounded dict of live objects (:mod:`.memory`), the
default L1.

The factory checks every URL option first: :data:`OPTIONS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import ConfigError

if TYPE_CHECKING:
    from ...config import MemoryConfig
    from ...tiers import Tier
    from .._url import BackendURL
    from ..base import Backend

__all__ = ["OPTIONS", "open_memory"]

#: ``memory://`` options: bounds in items and bytes (``none`` or ``0``: unbounded; defaults
#: ``session_max_items`` and ``session_max_bytes``) and the eviction policy (one of
#: :data:`~sophia_memory.policies.POLICY_NAMES`: ``fifo``, ``lru``, ``s3fifo``, ``sieve``,
#: ``wtinylfu``; default :data:`~sophia_memory.policies.DEFAULT_POLICY`), and ``admission``
#: (``0``, the default: every hit below is promoted; ``1``: a hit below is promoted here only
#: when it is seen more often than what it would evict, so a scan cannot flush this tier; it
#: costs recency-heavy workloads, see benchmarks/results/hit_ratio_latest.md).
OPTIONS = ("admission", "max_bytes", "max_items", "policy")


def open_memory(url: BackendURL, tier: Tier, config: MemoryConfig) -> Backend:
    """A bounded in-process store (``memory://?max_items=10000&policy=wtinylfu``)."""
    url.check(OPTIONS)
    from ...policies import DEFAULT_POLICY, POLICY_NAMES, policy_name

    policy = url.text("policy", DEFAULT_POLICY)
    try:
        policy = policy_name(policy)
    except ConfigError:
        raise ConfigError(f"{url.redacted()}: option policy={policy!r}: takes one of "
                          f"{', '.join(POLICY_NAMES)}") from None
    if url.netloc or url.path not in ("", "/"):
        raise ConfigError(f"memory:// takes no host or path, got {url.raw!r}")

    from .memory import MemoryBackend

    return MemoryBackend(max_items=url.integer("max_items", config.session_max_items),
                         max_bytes=url.integer("max_bytes", config.session_max_bytes),
                         policy=policy, admission=url.flag("admission", False))
