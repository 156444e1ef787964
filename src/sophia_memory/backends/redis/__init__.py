"""Redis backends (``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``,
``redis+cluster://`` and their ``rediss+`` forms) on ``redis.asyncio``: :mod:`.backend`.

The factory here checks the URL's options before anything is built. Our own options, on every
scheme: :data:`OPTIONS`. Plain ``redis://``, ``rediss://`` and ``unix://`` URLs also take the
connection options redis-py reads from a URL (:data:`DRIVER_OPTIONS`; e.g. ``db``,
``socket_timeout``, ``ssl_cert_reqs``). Options that would change what the client returns
(``decode_responses``, ``encoding``) are refused: the backend stores bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlencode

from ...errors import ConfigError

if TYPE_CHECKING:
    from ...config import MemoryConfig
    from ...tiers import Tier
    from .._url import BackendURL
    from ..base import Backend

__all__ = ["DRIVER_OPTIONS", "OPTIONS", "SCHEMES", "open_redis"]

#: The URL schemes of this family.
SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel",
           "rediss+sentinel")

#: Ours, on every scheme: the key prefix, the per-call deadline in seconds (default
#: ``call_timeout``), invalidation by key tracking (0/1), the auto-pipelined fast path (0/1)
#: and how many connections it shares among all callers (default 2).
OPTIONS = ("connections", "prefix", "timeout", "tracking", "wire")

_INTEGERS = ("db", "health_check_interval", "max_connections", "protocol", "socket_read_size",
             "ssl_min_version")
_NUMBERS = ("socket_connect_timeout", "socket_timeout")
#: What redis-py takes from a plain URL's query string: the names its
#: ``URL_QUERY_ARGUMENT_PARSERS`` parses (``timeout`` is ours here) and the text arguments of
#: its connection classes.
DRIVER_OPTIONS = (*_INTEGERS, *_NUMBERS, "client_name", "password", "retry_on_timeout",
                  "socket_keepalive", "ssl_ca_certs", "ssl_ca_data", "ssl_ca_path",
                  "ssl_cert_reqs", "ssl_certfile", "ssl_check_hostname", "ssl_ciphers",
                  "ssl_exclude_verify_flags", "ssl_include_verify_flags", "ssl_keyfile",
                  "ssl_password", "username")


def open_redis(url: BackendURL, tier: Tier, config: MemoryConfig) -> Backend:
    """The backend a Redis URL names (see the module doc for its options). Connects lazily:
    nothing is opened until the first call."""
    plain = "+" not in url.scheme
    if plain:
        url.check((*OPTIONS, *DRIVER_OPTIONS))
    else:
        url.check(OPTIONS, f"{url.scheme}:// (redis-py's options go in plain redis:// URLs)")
    for name in _INTEGERS + _NUMBERS:
        value = url.options.get(name)
        try:
            if value is not None:
                (int if name in _INTEGERS else float)(value)
        except ValueError:
            kind = "an integer" if name in _INTEGERS else "a number"
            raise ConfigError(f"{url.redacted()}: option {name}={value!r}: takes {kind}") \
                from None
    prefix = url.text("prefix", "sm:")
    if not prefix:
        raise ConfigError(f"{url.redacted()}: option prefix='': the tier's keys (and what "
                          "clear() removes) would be every key of the database; give a "
                          "prefix of this memory's own (default sm:)")
    timeout = url.seconds("timeout", config.call_timeout)
    tracking = url.flag("tracking", True)
    wire = url.flag("wire", False) if "wire" in url.options else None
    connections = url.options.get("connections", "2")
    if not connections.isdigit() or not 1 <= int(connections) <= 64:
        raise ConfigError(f"{url.redacted()}: option connections={connections!r}: takes an "
                          "integer from 1 to 64")
    driver = {k: v for k, v in url.options.items() if k in DRIVER_OPTIONS}
    query = f"?{urlencode(driver)}" if driver else ""

    from .backend import RedisBackend

    return RedisBackend.from_url(f"{url.scheme}://{url.netloc}{url.path}{query}", prefix,
                                 timeout, tracking, wire, connections=int(connections))
