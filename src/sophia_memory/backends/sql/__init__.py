"""SQL backends: SQLite (``sqlite:///path``, the embedded default for L2-L5) and Snowflake
(``snowflake://``), with the engine code they share (one engine per database within the
process, a writer thread with group commit: :mod:`._batching`).

The factories here read the URL options; the backend modules are imported only when a URL of
theirs is opened. Each factory checks every option before it opens anything (see
:mod:`sophia_memory.backends`): an unknown option, or one that does not apply to the table asked
for (``retain`` on a table that keeps no versions), is a
:class:`~sophia_memory.errors.ConfigError` naming the valid ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...errors import ConfigError

if TYPE_CHECKING:
    from ...config import MemoryConfig
    from ...tiers import Tier
    from .._url import BackendURL
    from ..base import Backend

__all__ = ["SNOWFLAKE_OPTIONS", "SQLITE_OPTIONS", "open_snowflake", "open_sqlite"]

_SQLITE_COMMON = ("synchronous", "table", "versioned")
#: The options of ``sqlite://`` URLs, per kind of table (``versioned=1``, ``vector=1``, else a
#: key/value table in the ``kv`` or ``cortex`` layout).
SQLITE_OPTIONS = {
    "versioned": (*_SQLITE_COMMON, "retain"),
    "vector": (*_SQLITE_COMMON, "vector", "dim", "metric"),
    "kv": (*_SQLITE_COMMON, "vector", "layout"),
}
_SQLITE_CONTEXT = {"versioned": "a versioned table (versioned=1)",
                   "vector": "a vector table (vector=1)", "kv": "a key/value table"}

_SNOWFLAKE_COMMON = ("statement_timeout", "table", "timeout", "variant")
#: The options of ``snowflake://`` URLs per tier (plus the connection options of
#: :data:`~.snowflake.SETTINGS_OPTIONS`).
SNOWFLAKE_OPTIONS = {
    "CORTEX": _SNOWFLAKE_COMMON,
    "PERSISTENT": _SNOWFLAKE_COMMON,
    "VECTOR": (*_SNOWFLAKE_COMMON, "dim", "metric"),
    "WORKFLOW": (*_SNOWFLAKE_COMMON, "retain"),
}
_METRICS = ("cosine", "ip")


def open_sqlite(url: BackendURL, tier: Tier, config: MemoryConfig) -> Backend:
    """The backend for ``tier`` that ``sqlite:///path?options`` names (an empty path: the
    configured file). The table kind follows the tier (WORKFLOW versioned, VECTOR vector,
    CORTEX in the Cortex layout) unless ``versioned``, ``vector`` or ``layout`` say otherwise;
    options: :data:`SQLITE_OPTIONS`."""
    url.check({name for names in SQLITE_OPTIONS.values() for name in names})
    if url.netloc:
        raise ConfigError(f"sqlite URL {url.raw!r} has a host; write sqlite:///absolute/path "
                          "or sqlite:///./relative/path")
    versioned = url.flag("versioned", tier.name == "WORKFLOW")
    vector = not versioned and url.flag("vector", tier.name == "VECTOR")
    kind = "versioned" if versioned else "vector" if vector else "kv"
    url.check(SQLITE_OPTIONS[kind], _SQLITE_CONTEXT[kind])

    from .sqlite import CORTEX_LAYOUT, DEFAULT_LAYOUT, SQLiteBackend, check_identifier

    path = url.path[1:] if url.path.startswith("/./") else url.path
    if not path or path == "/":
        path = str(config.resolved_path())
    table = check_identifier(url.text("table", tier.name.lower()))
    synchronous = url.choice("synchronous", "normal", ("normal", "full"))
    if versioned:
        from .sqlite_versioned import SQLiteVersionedBackend

        retain = url.integer("retain", config.workflow_retain)  # checked before it opens
        return SQLiteVersionedBackend(path, table, synchronous, retain)
    if vector:
        from .sqlite_vector import SQLiteVectorBackend

        dim = url.integer("dim", config.vector_dim)
        metric = url.choice("metric", config.vector_metric, _METRICS)
        return SQLiteVectorBackend(path, table, synchronous, dim=dim, metric=metric)
    layout = url.choice("layout", "cortex" if tier.name == "CORTEX" else "kv", ("cortex", "kv"))
    return SQLiteBackend(path, table, synchronous,
                         CORTEX_LAYOUT if layout == "cortex" else DEFAULT_LAYOUT)


def open_snowflake(url: BackendURL, tier: Tier, config: MemoryConfig) -> Backend:
    """The backend for ``tier`` that ``snowflake://user:pw@account/DB/SCHEMA?options`` names
    (CORTEX, PERSISTENT, VECTOR and WORKFLOW); options: :data:`SNOWFLAKE_OPTIONS` and
    :data:`~.snowflake.SETTINGS_OPTIONS`."""
    from .snowflake import (
        CORTEX_LAYOUT,
        DEFAULT_LAYOUT,
        DEFAULT_TABLES,
        SETTINGS_OPTIONS,
        SnowflakeBackend,
        SnowflakeSettings,
        check_identifier,
    )

    if tier.name not in SNOWFLAKE_OPTIONS:
        raise ConfigError(f"the Snowflake backend serves CORTEX, PERSISTENT, VECTOR and "
                          f"WORKFLOW, not {tier}")
    url.check((*SNOWFLAKE_OPTIONS[tier.name], *SETTINGS_OPTIONS), f"the {tier.name} tier")
    table = check_identifier(url.text("table", DEFAULT_TABLES[tier.name]), "table name")
    kw: dict[str, Any] = {"call_timeout": url.seconds("timeout", config.call_timeout),
          "statement_timeout": url.integer("statement_timeout", None),
          "variant": url.flag("variant", True)}
    settings = SnowflakeSettings.from_url(url)
    # Everything is checked; only now is an engine (threads, connections) acquired.
    if tier.name == "WORKFLOW":
        from .snowflake_versioned import SnowflakeVersionedBackend

        retain = url.integer("retain", config.workflow_retain)  # checked before it opens
        return SnowflakeVersionedBackend(settings, table, retain=retain, **kw)
    if tier.name == "VECTOR":
        from .snowflake_vector import SnowflakeVectorBackend

        return SnowflakeVectorBackend(settings, table, dim=url.integer("dim", config.vector_dim),
                                      metric=url.choice("metric", config.vector_metric, _METRICS),
                                      **kw)
    layout = CORTEX_LAYOUT if tier.name == "CORTEX" else DEFAULT_LAYOUT
    return SnowflakeBackend(settings, table, layout=layout, **kw)
