"""Backends by URL scheme, and how third parties add theirs.

A factory takes the parsed URL and the tier and returns a :class:`Backend`. Built in:
``memory://`` (in-process LRU), ``sqlite:///path`` (embedded SQL), ``host://`` (host-memory
pools for L0). More are found through the ``sophia_memory.backends`` entry-point group (the
entry point's name is the scheme) or registered with :func:`register`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import ConfigError
from .base import (
    Backend,
    BarePayloads,
    Evicting,
    Invalidating,
    ObjectStore,
    Purging,
    Remote,
    Searchable,
    Versioned,
)

if TYPE_CHECKING:
    from ..config import MemoryConfig
    from ..tiers import Tier

__all__ = ["Backend", "BackendURL", "BarePayloads", "Evicting", "Invalidating", "ObjectStore",
           "Purging", "Remote", "Searchable", "Versioned", "open_backend", "parse_url",
           "register"]


@dataclass
class BackendURL:
    """A backend URL taken apart. ``options`` is the query string; factories pop what they
    understand and anything left over is refused."""

    raw: str
    scheme: str
    netloc: str
    path: str
    options: dict[str, str] = field(default_factory=dict)

    def pop_int(self, name: str, default: int | None) -> int | None:
        value = self.options.pop(name, None)
        if value is None:
            return default
        if value.lower() in ("none", "0", ""):
            return None
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{self.redacted()}: option {name}={value!r} is not an integer") \
                from None

    def redacted(self) -> str:
        """The URL with any password replaced, safe for logs and errors."""
        if "@" in self.netloc:
            creds, host = self.netloc.rsplit("@", 1)
            user = creds.split(":", 1)[0]
            return f"{self.scheme}://{user}:***@{host}{self.path}"
        return f"{self.scheme}://{self.netloc}{self.path}"


Factory = Callable[[BackendURL, "Tier", "MemoryConfig"], Backend]
_FACTORIES: dict[str, Factory] = {}


def register(scheme: str, factory: Factory) -> None:
    """Make ``scheme://...`` URLs open backends made by ``factory``."""
    _FACTORIES[scheme.lower()] = factory


def parse_url(url: str) -> BackendURL:
    """Split a backend URL; ConfigError when it is not one."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"malformed backend URL {url!r}: expected scheme://...")
    try:
        parts = urlsplit(url)
        options = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
    except ValueError as exc:
        raise ConfigError(f"malformed backend URL: {exc}") from None
    if not re.fullmatch(r"[a-z][a-z0-9+.\-]*", parts.scheme.lower()):
        raise ConfigError(f"malformed backend URL {url!r}: missing or invalid scheme")
    return BackendURL(url, parts.scheme.lower(), parts.netloc, unquote(parts.path), options)


def _lookup(scheme: str) -> Factory:
    if scheme in _FACTORIES:
        return _FACTORIES[scheme]
    for ep in entry_points(group="sophia_memory.backends"):
        if ep.name == scheme:
            factory: Factory = ep.load()
            _FACTORIES[scheme] = factory
            return factory
    known = ", ".join(sorted(_FACTORIES))
    raise ConfigError(f"no backend for URL scheme {scheme!r}; known schemes: {known} "
                      "(or install a package providing a 'sophia_memory.backends' entry point)")


def open_backend(url: str, tier: Tier, config: MemoryConfig) -> Backend:
    """Open the backend ``url`` names, for ``tier``."""
    parsed = parse_url(url)
    backend = _lookup(parsed.scheme)(parsed, tier, config)
    if parsed.options:
        from .._core import close_now

        close_now(backend)  # nothing it opened may outlive the refusal
        raise ConfigError(f"{parsed.redacted()}: unknown option(s) "
                          f"{', '.join(sorted(parsed.options))}")
    return backend


def _memory(url: BackendURL, tier: Tier, config: MemoryConfig) -> Backend:
    from .memory import MemoryBackend

    if url.netloc or url.path not in ("", "/"):
        raise ConfigError(f"memory:// takes no host or path, got {url.raw!r}")
    return MemoryBackend(
        max_items=url.pop_int("max_items", config.session_max_items),
        max_bytes=url.pop_int("max_bytes", config.session_max_bytes),
        policy=url.options.pop("policy", "lru"),
    )


def _sqlite(url: BackendURL, tier: Tier, config: MemoryConfig) -> Backend:
    from .sqlite import SQLiteBackend

    if url.netloc:
        raise ConfigError(f"sqlite URL {url.raw!r} has a host; write sqlite:///absolute/path "
                          "or sqlite:///./relative/path")
    path = url.path[1:] if url.path.startswith("/./") else url.path
    if not path or path == "/":
        path = str(config.resolved_path())
    table = url.options.pop("table", tier.name.lower())
    synchronous = url.options.pop("synchronous", "normal")
    versioned = url.options.pop("versioned", "1" if tier.name == "WORKFLOW" else "0")
    if versioned not in ("0", "1"):
        raise ConfigError(f"{url.redacted()}: versioned must be 0 or 1")
    if versioned == "1":
        from .sqlite_versioned import SQLiteVersionedBackend

        retain = url.pop_int("retain", config.workflow_retain)
        return SQLiteVersionedBackend(path, table, synchronous, retain)
    if url.options.pop("vector", "1" if tier.name == "VECTOR" else "0") == "1":
        from .sqlite_vector import SQLiteVectorBackend

        return SQLiteVectorBackend(path, table, synchronous,
                                   dim=url.pop_int("dim", config.vector_dim),
                                   metric=url.options.pop("metric", config.vector_metric))
    layout = url.options.pop("layout", "cortex" if tier.name == "CORTEX" else "kv")
    if layout not in ("cortex", "kv"):
        raise ConfigError(f"{url.redacted()}: layout must be cortex or kv")
    from .sqlite import CORTEX_LAYOUT, DEFAULT_LAYOUT

    return SQLiteBackend(path, table, synchronous,
                         CORTEX_LAYOUT if layout == "cortex" else DEFAULT_LAYOUT)


def _host(url: BackendURL, tier: Tier, config: MemoryConfig) -> Backend:
    from ..pools import device_memory, plan_pools
    from .hostpool import HostPoolBackend

    # memory= is a size ("4GiB") or a device preset ("GH200") to rehearse its pools on.
    total = device_memory(url.options.pop("memory", config.host_pool_memory),
                          "host pool memory")
    budgets = plan_pools(config.gpu_pools, total, config.gpu_reserve, device="host memory")
    block = url.pop_int("block", 512) or 512
    return HostPoolBackend(budgets, url.options.pop("default_pool", None), block)


def _cupy(url: BackendURL, tier: Tier, config: MemoryConfig) -> Backend:
    from .gpupool import open_cupy

    return open_cupy(url, config)  # host pools, with one warning, when there is no GPU


def _redis(url: BackendURL, tier: Tier, config: MemoryConfig) -> Backend:
    from urllib.parse import urlencode

    from .redis import RedisBackend

    prefix = url.options.pop("prefix", "sm:")
    try:
        timeout = float(url.options.pop("timeout", config.call_timeout))
    except ValueError:
        raise ConfigError(f"{url.redacted()}: timeout must be a number of seconds") from None
    tracking = url.options.pop("tracking", "1")
    if tracking not in ("0", "1"):
        raise ConfigError(f"{url.redacted()}: tracking must be 0 or 1")
    rest = ""
    if "+" not in url.scheme:  # the rest is the driver's (db, ssl options, ...)
        rest = f"?{urlencode(url.options)}" if url.options else ""
        url.options.clear()
    return RedisBackend.from_url(f"{url.scheme}://{url.netloc}{url.path}{rest}", prefix,
                                 timeout, tracking == "1")


def _snowflake(url: BackendURL, tier: Tier, config: MemoryConfig) -> Backend:
    from .snowflake import open_snowflake

    return open_snowflake(url, tier, config)


register("memory", _memory)
register("sqlite", _sqlite)
register("host", _host)
register("cupy", _cupy)
register("snowflake", _snowflake)
for _scheme in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster",
                "redis+sentinel", "rediss+sentinel"):
    register(_scheme, _redis)
