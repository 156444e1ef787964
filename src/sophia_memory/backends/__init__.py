"""Backends by URL scheme, and how third parties add theirs.

The built-in backends come in families, one subpackage each:

* :mod:`.inprocess` - ``memory://`` (a bounded in-process store, the default L1);
* :mod:`.sql` - ``sqlite:///path`` (embedded, the default for L2-L5) and ``snowflake://``;
* :mod:`.redis` - ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``,
  ``redis+cluster://``;
* :mod:`.pools` - ``host://`` and ``cupy://<device>`` (the L0 pools).

**The factory convention.** A factory ``factory(url, tier, config)`` gets the parsed
:class:`BackendURL`, checks *every* option before it opens anything
(:meth:`BackendURL.check`: an unknown option is a :class:`~sophia_memory.errors.ConfigError`
naming it, the closest valid spelling and every valid option), reads the values with
``BackendURL``'s typed readers, and only then builds and returns the open backend. So a refused
URL leaves nothing behind to close. More factories are found through the
``sophia_memory.backends`` entry-point group (the entry point's name is the scheme) or
registered with :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ._url import BackendURL, parse_url
from .base import (
    Backend,
    BarePayloads,
    Conditional,
    Evicting,
    Invalidating,
    ObjectStore,
    Purging,
    Remote,
    Searchable,
    Versioned,
)
from .inprocess import open_memory
from .pools import open_cupy, open_host
from .pools.hostpool import check_pool_value, is_pool_value
from .redis import SCHEMES as REDIS_SCHEMES
from .redis import open_redis
from .sql import open_snowflake, open_sqlite

if TYPE_CHECKING:
    from ..config import MemoryConfig
    from ..tiers import Tier

__all__ = ["Backend", "BackendURL", "BarePayloads", "Conditional", "Evicting", "Invalidating",
           "ObjectStore", "Purging", "Remote", "Searchable", "Versioned", "check_pool_value",
           "is_pool_value", "open_backend", "parse_url", "register"]

Factory = Callable[[BackendURL, "Tier", "MemoryConfig"], Backend]
_FACTORIES: dict[str, tuple[Factory, tuple[str, ...] | None]] = {}


def register(scheme: str, factory: Factory, options: Collection[str] | None = None) -> None:
    """Make ``scheme://...`` URLs open backends made by ``factory``.

    ``options``: the option names the scheme takes; :func:`open_backend` then refuses any
    other before it calls ``factory``. Without it the factory checks its options itself (as
    the built-in ones do, whose valid options depend on the tier), before it opens anything.
    """
    _FACTORIES[scheme.lower()] = (factory, None if options is None else tuple(options))


def _lookup(scheme: str) -> tuple[Factory, tuple[str, ...] | None]:
    if scheme in _FACTORIES:
        return _FACTORIES[scheme]
    for ep in entry_points(group="sophia_memory.backends"):
        if ep.name == scheme:
            factory: Factory = ep.load()
            register(scheme, factory)
            return _FACTORIES[scheme]
    known = ", ".join(sorted(_FACTORIES))
    raise ConfigError(f"no backend for URL scheme {scheme!r}; known schemes: {known} "
                      "(or install a package providing a 'sophia_memory.backends' entry point)")


def open_backend(url: str, tier: Tier, config: MemoryConfig) -> Backend:
    """Open the backend ``url`` names, for ``tier``. Every option of ``url`` is checked before
    anything is opened: ConfigError for a malformed URL, an unknown scheme or option, or a bad
    value."""
    parsed = parse_url(url)
    factory, options = _lookup(parsed.scheme)
    if options is not None:
        parsed.check(options)
    return factory(parsed, tier, config)


register("memory", open_memory)
register("sqlite", open_sqlite)
register("snowflake", open_snowflake)
register("host", open_host)
register("cupy", open_cupy)
for _scheme in REDIS_SCHEMES:
    register(_scheme, open_redis)
