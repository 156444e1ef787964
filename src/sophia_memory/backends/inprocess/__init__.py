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
#: ``session_max_items`` and ``session_max_bytes``) and the eviction policy (``lru``, ``fifo``).
OPTIONS = ("max_bytes", "max_items", "policy")


def open_memory(url: BackendURL, tier: Tier, config: MemoryConfig) -> Backend:
    """A bounded in-process store (``memory://?max_items=10000&policy=lru``)."""
    url.check(OPTIONS)
    if url.netloc or url.path not in ("", "/"):
        raise ConfigError(f"memory:// takes no host or path, got {url.raw!r}")

    from .memory import MemoryBackend

    return MemoryBackend(max_items=url.integer("max_items", config.session_max_items),
                         max_bytes=url.integer("max_bytes", config.session_max_bytes),
                         policy=url.text("policy", "lru"))
