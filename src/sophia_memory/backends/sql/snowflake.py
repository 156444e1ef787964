"""Snowflake backend (``snowflake://user:pw@account/DB/SCHEMA?warehouse=WH&role=R``) for the
CORTEX, PERSISTENT, VECTOR and WORKFLOW tiers.

Each tier is one table in the configured database and schema (default schema
``SOPHIA_AI_MEMORY``), created if missing (``?create=0`` to never run DDL):

===========  ==========================  ===================================================
tier         default table               layout
===========  ==========================  ===================================================
CORTEX       ``CORTEX_CACHE_ENHANCED``   the platform's columns (``CACHE_KEY``,
                                         ``CACHE_VALUE VARIANT``, ``GPU_PROCESSED``,
                                         ``PROCESSING_TIME_MS``, ``GPU_MEMORY_USED_MB``,
                                         ``TTL``, ...) like the SQLite Cortex layout
PERSISTENT   ``PERSISTENT_MEMORY``       key/value
VECTOR       ``VECTOR_MEMORY``           key/value plus ``EMBEDDING VECTOR(FLOAT, dim)``,
                                         similarity computed in SQL
WORKFLOW     ``WORKFLOW_STATE``          one row per ``(key, version)``
===========  ==========================  ===================================================

Every row keeps the codec's payload losslessly in ``PAYLOAD BINARY``; when that payload holds a
JSON-compatible value (default msgpack or JSON codec, under 1 MiB), its JSON form is stored in
a ``VARIANT`` column as well (``CACHE_VALUE`` for Cortex, ``VALUE_JSON`` elsewhere) so analysts
can query it. ``EXPIRES_AT`` and ``CREATED_AT`` are seconds on the memory's clock.

Identifiers (database, schema, table, warehouse, role) are validated and quoted; every value is
bound as a parameter (``qmark``). The only text built into SQL besides identifiers are integers
(``LIMIT``, a vector dimension). Single ``put`` calls are group-committed into one ``MERGE``,
``put_many`` goes through a session-scoped staging table (``write_pandas``) and one ``MERGE``
(small batches use a bound ``MERGE`` directly), ``get_many`` is one query. See
:mod:`.snowflake_engine` for threads and connections, and
:func:`~sophia_memory.backends.sql.open_snowflake` for the URL's options; the front guards this
backend with a timeout and a circuit breaker (it is :class:`~sophia_memory.backends.base.Remote`).

Credentials come from the URL or from ``SNOWFLAKE_ACCOUNT``, ``SNOWFLAKE_USER``,
``SNOWFLAKE_PASSWORD``, ``SNOWFLAKE_PRIVATE_KEY_PATH`` (+ ``SNOWFLAKE_PRIVATE_KEY_PASSPHRASE``)
for key-pair authentication, ``SNOWFLAKE_DATABASE``, ``SNOWFLAKE_SCHEMA``,
``SNOWFLAKE_WAREHOUSE``, ``SNOWFLAKE_ROLE``, ``SNOWFLAKE_AUTHENTICATOR``; the URL wins.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from ...errors import BackendError, ConfigError, DecodeError, ValueTooLargeError
from ...tiers import Record
from ..base import Backend
from .snowflake_engine import SnowflakeEngine, driver

if TYPE_CHECKING:
    from .._url import BackendURL

__all__ = ["CORTEX_LAYOUT", "DEFAULT_LAYOUT", "Column", "Layout", "SnowflakeBackend",
           "SnowflakeSettings", "check_identifier"]

DEFAULT_SCHEMA = "SOPHIA_AI_MEMORY"
DEFAULT_TABLES = {"CORTEX": "CORTEX_CACHE_ENHANCED", "PERSISTENT": "PERSISTENT_MEMORY",
                  "VECTOR": "VECTOR_MEMORY", "WORKFLOW": "WORKFLOW_STATE"}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,254}")  # fullmatch: "$" would allow "\n"
_ACCOUNT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}")
#: Rows per bound MERGE (each row binds ~15 values); more go through a staging table.
MERGE_ROWS = 256
#: Keys per ``IN (...)`` list.
IN_CHUNK = 1000
#: Payloads larger than this get no VARIANT form (it would only cost time and storage).
VARIANT_MAX = 1 << 20
#: Snowflake's default maximum for a BINARY value (8 MiB).
BINARY_MAX = 8 << 20
#: The URL options :meth:`SnowflakeSettings.from_url` reads (where and how to connect).
SETTINGS_OPTIONS = ("authenticator", "create", "login_timeout", "private_key_file", "readers",
                    "role", "warehouse")


def check_identifier(name: str, what: str = "identifier") -> str:
    """``name`` upper-cased (as Snowflake folds unquoted names) if it is a plain identifier
    (letters, digits, ``_`` and ``$``, not starting with a digit); ConfigError otherwise."""
    if not isinstance(name, str) or not _IDENT.fullmatch(name):
        raise ConfigError(f"invalid Snowflake {what} {name!r}: letters, digits, _ and $ only, "
                          "not starting with a digit")
    return name.upper()


# -- configuration ----------------------------------------------------------------------------


@dataclass
class SnowflakeSettings:
    """Where and how to connect; built from a URL plus the ``SNOWFLAKE_*`` environment."""

    account: str
    user: str
    database: str
    schema: str = DEFAULT_SCHEMA
    password: str | None = field(default=None, repr=False)
    private_key_file: str | None = None
    private_key_passphrase: str | None = field(default=None, repr=False)
    warehouse: str | None = None
    role: str | None = None
    authenticator: str | None = None
    create: bool = True
    readers: int = 4
    login_timeout: int = 30

    def __post_init__(self) -> None:
        if not self.account or not _ACCOUNT.fullmatch(self.account):
            raise ConfigError(f"invalid Snowflake account identifier {self.account!r} (set it in "
                              "the URL host or SNOWFLAKE_ACCOUNT)")
        if not self.user:
            raise ConfigError("no Snowflake user: put it in the URL or set SNOWFLAKE_USER")
        if not self.database:
            raise ConfigError("no Snowflake database: write snowflake://user@account/DB/SCHEMA "
                              "or set SNOWFLAKE_DATABASE")
        self.database = check_identifier(self.database, "database")
        self.schema = check_identifier(self.schema, "schema")
        if self.warehouse is not None:
            self.warehouse = check_identifier(self.warehouse, "warehouse")
        if self.role is not None:
            self.role = check_identifier(self.role, "role")
        if not (self.password or self.private_key_file or self.authenticator):
            raise ConfigError("no Snowflake credentials: give a password (URL or "
                              "SNOWFLAKE_PASSWORD), a key pair (SNOWFLAKE_PRIVATE_KEY_PATH) or "
                              "an authenticator")
        if self.readers < 1:
            raise ConfigError("Snowflake readers must be at least 1")

    def identity(self) -> tuple[Any, ...]:
        """What makes two tiers share an engine (secrets included only as equality)."""
        return (self.account.lower(), self.user, self.database, self.schema, self.warehouse,
                self.role, self.authenticator, self.private_key_file, hash(self.password),
                self.readers)

    def connect_kwargs(self, call_timeout: float) -> dict[str, Any]:
        """Keyword arguments for ``snowflake.connector.connect``."""
        kw: dict[str, Any] = {
            "account": self.account, "user": self.user, "database": self.database,
            "schema": self.schema, "paramstyle": "qmark", "autocommit": True,
            "login_timeout": self.login_timeout,
            "network_timeout": max(1, math.ceil(call_timeout)),
            "application": "sophia_memory",
        }
        if self.private_key_file:
            kw["private_key_file"] = self.private_key_file
            if self.private_key_passphrase:
                kw["private_key_file_pwd"] = self.private_key_passphrase
            kw["authenticator"] = "SNOWFLAKE_JWT"
        elif self.password:
            kw["password"] = self.password
        if self.authenticator:
            kw["authenticator"] = self.authenticator
        for name in ("warehouse", "role"):
            value = getattr(self, name)
            if value:
                kw[name] = value
        return kw

    @classmethod
    def from_url(cls, url: BackendURL, environ: Mapping[str, str] | None = None,
                 ) -> SnowflakeSettings:
        """Parse ``snowflake://[user[:password]@]account[/DB[/SCHEMA]]?options`` (the
        connection options: :data:`SETTINGS_OPTIONS`; the caller checks that there are no
        others); whatever the URL leaves out is read from ``SNOWFLAKE_*``."""
        env = os.environ if environ is None else environ
        creds, _, host = url.netloc.rpartition("@")
        user, _, password = creds.partition(":")
        account = unquote(host).removesuffix(".snowflakecomputing.com")
        parts = [p for p in url.path.split("/") if p]
        if len(parts) > 2:
            raise ConfigError(f"{url.redacted()}: the path is /DATABASE[/SCHEMA]")
        readers = url.count("readers", 4)
        login_timeout = url.count("login_timeout", 30)
        create = url.flag("create", True)
        return cls(
            account=account or env.get("SNOWFLAKE_ACCOUNT", ""),
            user=unquote(user) or env.get("SNOWFLAKE_USER", ""),
            password=unquote(password) or env.get("SNOWFLAKE_PASSWORD") or None,
            database=parts[0] if parts else env.get("SNOWFLAKE_DATABASE", ""),
            schema=parts[1] if len(parts) > 1 else env.get("SNOWFLAKE_SCHEMA", DEFAULT_SCHEMA),
            private_key_file=url.text_or_none("private_key_file")
            or env.get("SNOWFLAKE_PRIVATE_KEY_PATH") or None,
            private_key_passphrase=env.get("SNOWFLAKE_PRIVATE_KEY_PASSPHRASE") or None,
            warehouse=url.text_or_none("warehouse") or env.get("SNOWFLAKE_WAREHOUSE") or None,
            role=url.text_or_none("role") or env.get("SNOWFLAKE_ROLE") or None,
            authenticator=url.text_or_none("authenticator")
            or env.get("SNOWFLAKE_AUTHENTICATOR") or None,
            create=create, readers=readers, login_timeout=login_timeout,
        )


# -- table layouts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One column: its DDL type, the type it is bound/staged as, and the SQL (``{}`` is the
    bound or staged value) that turns the latter into the former."""

    name: str
    ddl: str
    stage: str
    expr: str = "{}"
    #: The Python type a Record.extra entry must have to live in this column (meta columns).
    pytype: type | None = None


def _cols(*spec: tuple[str, str, str, str]) -> tuple[Column, ...]:
    return tuple(Column(*s) for s in spec)


_RECORD_COLUMNS = _cols(
    ("PAYLOAD", "BINARY NOT NULL", "VARCHAR", "TO_BINARY({}, 'BASE64')"),
    ("EXPIRES_AT", "FLOAT", "FLOAT", "{}::FLOAT"),
    ("HOME", "BOOLEAN NOT NULL", "BOOLEAN", "{}::BOOLEAN"),
    ("SIZE_BYTES", "NUMBER(38,0) NOT NULL", "NUMBER(38,0)", "{}::NUMBER(38,0)"),
    ("VERSION", "NUMBER(38,0) NOT NULL", "NUMBER(38,0)", "{}::NUMBER(38,0)"),
    ("CREATED_AT", "FLOAT NOT NULL", "FLOAT", "{}::FLOAT"),
    ("EXTRA", "VARCHAR", "VARCHAR", "{}::VARCHAR"),
)


@dataclass(frozen=True)
class Layout:
    """A tier table's columns. ``meta`` columns hold ``Record.extra`` entries of the same
    (lower-cased) name when they have the column's Python type; ``derived`` ones are computed on
    write and not read back."""

    key: str = "MEMORY_KEY"
    variant: str = "VALUE_JSON"
    meta: tuple[Column, ...] = ()
    derived: tuple[str, ...] = ()

    @property
    def written(self) -> tuple[Column, ...]:
        """Every column a write binds, in row order (key first)."""
        return (Column(self.key, "VARCHAR NOT NULL", "VARCHAR", "{}::VARCHAR"),
                Column(self.variant, "VARIANT", "VARCHAR", "PARSE_JSON({})"),
                *_RECORD_COLUMNS, *self.meta)

    @property
    def read(self) -> tuple[str, ...]:
        """The columns a read selects, in :meth:`SnowflakeBackend._record` order."""
        meta = tuple(c.name for c in self.meta if c.name not in self.derived)
        return tuple(c.name for c in _RECORD_COLUMNS) + meta

    def ddl(self, table: str, primary: tuple[str, ...] | None = None) -> str:
        cols = ",\n    ".join(f"{c.name} {c.ddl}" for c in self.written)
        pk = ", ".join(primary or (self.key,))
        return (f"CREATE TABLE IF NOT EXISTS {table} (\n    {cols},\n"
                f"    UPDATED_AT TIMESTAMP_NTZ DEFAULT CURRENT_TIMESTAMP(),\n"
                f"    PRIMARY KEY ({pk})\n)")


DEFAULT_LAYOUT = Layout()

#: The platform's ``CORTEX_CACHE_ENHANCED`` columns, like the SQLite Cortex layout.
CORTEX_LAYOUT = Layout(key="CACHE_KEY", variant="CACHE_VALUE", meta=(
    Column("GPU_PROCESSED", "NUMBER(38,0)", "NUMBER(38,0)", "{}::NUMBER(38,0)", int),
    Column("PROCESSING_TIME_MS", "FLOAT", "FLOAT", "{}::FLOAT", float),
    Column("GPU_MEMORY_USED_MB", "FLOAT", "FLOAT", "{}::FLOAT", float),
    Column("TTL", "FLOAT", "FLOAT", "{}::FLOAT", float),
    Column("PROMPT_EMBEDDING", "BINARY", "VARCHAR", "TO_BINARY({}, 'BASE64')", bytes)),
    derived=("TTL",))


def json_form(payload: bytes) -> str | None:
    """The JSON text of a payload's value when the codec wrote a JSON-compatible value
    (default msgpack codec or JSON codec), else None. Decoding never runs code."""
    if not payload or len(payload) > VARIANT_MAX or payload[0] not in (0x01, 0x02):
        return None
    from ...codecs import JsonCodec, MsgpackCodec

    try:
        value = (MsgpackCodec() if payload[0] == 0x01 else JsonCodec()).decode(payload)
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (DecodeError, TypeError, ValueError, RecursionError):
        return None


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _fits(value: Any, column: Column) -> bool:
    """Whether ``value`` can live in a meta column exactly (else it stays in EXTRA)."""
    if column.pytype is None or type(value) is not column.pytype:
        return False
    if isinstance(value, int):
        return abs(value) < 10**38
    if isinstance(value, float):
        return math.isfinite(value)
    return True


# -- the backend ------------------------------------------------------------------------------


class SnowflakeBackend(Backend):
    """One tier's table in Snowflake (key/value or the Cortex layout)."""

    scheme = "snowflake"
    layout: Layout = DEFAULT_LAYOUT

    def __init__(self, settings: SnowflakeSettings, table: str, *, call_timeout: float = 2.0,
                 layout: Layout | None = None, variant: bool = True,
                 statement_timeout: int | None = None) -> None:
        if layout is not None:
            self.layout = layout
        self.settings = settings
        self.table = check_identifier(table, "table name")
        self.call_timeout = call_timeout
        self.variant = variant
        connect_kwargs = settings.connect_kwargs(call_timeout)

        def connect() -> Any:
            return driver().connect(**connect_kwargs)

        self.engine = SnowflakeEngine.acquire(settings.identity(), connect, settings.readers,
                                              statement_timeout)
        self._closed = False
        self._ready = False
        self._schema = f'"{settings.database}"."{settings.schema}"'
        self._t = f'{self._schema}."{self.table}"'
        #: This session's staging table (``put_many``), named in full: the session's current
        #: schema may be another one, or none.
        self._stage_name = check_identifier(f"SOPHIA_STAGE_{self.table}"[:255],
                                            "staging table name")
        self._stage = f'{self._schema}."{self._stage_name}"'
        lay = self.layout
        self._k = lay.key
        self._select = ", ".join(lay.read)
        self._live = "(EXPIRES_AT IS NULL OR EXPIRES_AT > ?)"

    # -- DDL ----------------------------------------------------------------------------------

    def table_ddl(self) -> str:
        """The ``CREATE TABLE IF NOT EXISTS`` this backend runs (docs/snowflake.md)."""
        return self.layout.ddl(self._t)

    def _ensure(self, cur: Any) -> bool:
        """Create the schema and table on first use (unless ``create=0``); False when the
        table does not exist and cannot be created yet (reads then find nothing)."""
        if self._ready:
            return True
        if self.settings.create:
            eng = self.engine
            eng.once(f"schema {self._schema}", lambda: eng.execute(
                cur, f"CREATE SCHEMA IF NOT EXISTS {self._schema}"))
            eng.once(f"table {self._t}", lambda: eng.execute(cur, self.table_ddl()))
        self._ready = True
        return True

    # -- rows ---------------------------------------------------------------------------------

    def _row(self, key: str, r: Record) -> tuple[Any, ...]:
        """The bound values of one record, in ``layout.written`` order (binary as base64)."""
        payload = r.payload
        if len(payload) > BINARY_MAX:
            raise ValueTooLargeError(len(payload), BINARY_MAX, "Snowflake BINARY column")
        lay = self.layout
        rest = dict(r.extra)
        meta: list[Any] = []
        for col in lay.meta:
            name = col.name.lower()
            value = rest.get(name)
            if col.name in lay.derived:
                meta.append(self._derived(col, key, r))
                if name in rest and col.pytype is None:
                    del rest[name]
            elif value is not None and _fits(value, col):
                del rest[name]
                meta.append(_b64(value) if col.pytype is bytes else value)
            else:
                meta.append(None)
        return (key, json_form(payload) if self.variant else None, _b64(payload),
                r.expires_at, bool(r.home), int(r.size), int(r.version), float(r.created_at),
                json.dumps(rest) if rest else None, *meta)

    def _derived(self, col: Column, key: str, r: Record) -> Any:
        if col.name == "TTL" and r.expires_at is not None:
            return round(r.expires_at - r.created_at, 6)
        return None

    def _record(self, row: Sequence[Any]) -> Record:
        payload, expires_at, home, size, version, created_at, extra = row[:7]
        extras: dict[str, Any] = json.loads(extra) if extra else {}
        metas = [c for c in self.layout.meta if c.name not in self.layout.derived]
        for col, value in zip(metas, row[7:], strict=True):
            if value is not None and col.pytype is not None:
                extras[col.name.lower()] = (bytes(value) if col.pytype is bytes
                                            else col.pytype(value))
        return Record(bytes(payload), None if expires_at is None else float(expires_at),
                      bool(home), int(size), int(version), float(created_at), extras)

    # -- writes -------------------------------------------------------------------------------

    def _merge_sql(self, source: str, refs: Sequence[str]) -> str:
        cols = self.layout.written
        select = ", ".join(f"{c.expr.format(ref)} AS {c.name}"
                           for c, ref in zip(cols, refs, strict=True))
        names = [c.name for c in cols]
        updates = ", ".join(f"{n} = s.{n}" for n in names[1:])
        return (f"MERGE INTO {self._t} AS t USING (SELECT {select} FROM {source}) AS s "
                f"ON t.{self._k} = s.{self._k} "
                f"WHEN MATCHED THEN UPDATE SET {updates}, UPDATED_AT = CURRENT_TIMESTAMP() "
                f"WHEN NOT MATCHED THEN INSERT ({', '.join(names)}, UPDATED_AT) "
                f"VALUES ({', '.join(f's.{n}' for n in names)}, CURRENT_TIMESTAMP())")

    def _values(self, rows: Sequence[tuple[Any, ...]]) -> tuple[str, list[str], list[Any]]:
        """A ``VALUES`` source of bound rows: (source SQL, column refs, parameters)."""
        width = len(rows[0])
        marks = "(" + ", ".join("?" * width) + ")"
        params = [v for row in rows for v in row]
        return (f"VALUES {', '.join([marks] * len(rows))}",
                [f"column{i + 1}" for i in range(width)], params)

    def merge(self, cur: Any, rows: Sequence[tuple[Any, ...]]) -> None:
        """Upsert ``rows`` (distinct keys): bound MERGEs of up to MERGE_ROWS rows, or the
        staging table for more."""
        if not self._ensure(cur):
            raise BackendError(f"table {self._t} does not exist yet and cannot be created")
        if len(rows) > MERGE_ROWS:
            self._merge_staged(cur, rows)
            return
        source, refs, params = self._values(rows)
        self.engine.execute(cur, self._merge_sql(source, refs), params)

    def _load_stage(self, cur: Any, rows: Sequence[tuple[Any, ...]]) -> list[str]:
        """Load ``rows`` into this session's temporary staging table (emptied first) with
        ``write_pandas``; the staged column names."""
        pd: Any = importlib.import_module("pandas")  # comes with the driver's [pandas] extra

        eng = self.engine
        cols = self.layout.written
        ddl = ", ".join(f"{c.name} {c.stage}" for c in cols)
        eng.execute(cur, f"CREATE TEMPORARY TABLE IF NOT EXISTS {self._stage} ({ddl})")
        eng.execute(cur, f"TRUNCATE TABLE {self._stage}")
        data: dict[str, Any] = {}
        for i, col in enumerate(cols):
            values = [row[i] for row in rows]
            if col.stage == "FLOAT":
                data[col.name] = pd.array(values, dtype="Float64")
            elif col.stage.startswith("NUMBER"):
                data[col.name] = pd.array(values, dtype="Int64")
            elif col.stage == "BOOLEAN":
                data[col.name] = pd.array(values, dtype="boolean")
            else:
                data[col.name] = pd.Series(values, dtype=object)
        eng.bulk_load(pd.DataFrame(data), self._stage_name, self.settings.database,
                      self.settings.schema)
        return [c.name for c in cols]

    def _merge_staged(self, cur: Any, rows: Sequence[tuple[Any, ...]]) -> None:
        refs = self._load_stage(cur, rows)
        self.engine.execute(cur, self._merge_sql(self._stage, refs))

    async def put(self, key: str, record: Record) -> None:
        await self.engine.upsert(self, [self._row(key, record)])

    async def put_many(self, records: Mapping[str, Record]) -> None:
        if records:
            await self.engine.upsert(self, [self._row(k, r) for k, r in records.items()])

    # -- conditional writes (Conditional) -------------------------------------------------------

    async def read_for_update(self, key: str, now: float,
                              ) -> tuple[Record | None, tuple[Any, ...] | None]:
        """The record under ``key`` and, as the token, the stored columns every write of
        ours sets (payload, expiry, creation time, metadata, and the version each write
        makes unique); None where no row is."""
        rows = await self._query(f"SELECT {self._select} FROM {self._t} WHERE {self._k} = ?",
                                 [key])
        if not rows:
            return None, None
        rec = self._record(rows[0])
        return rec, (rec.payload, rec.expires_at, rec.created_at, rows[0][6], rec.version)

    async def put_if(self, key: str, record: Record, token: tuple[Any, ...] | None) -> bool:
        """One ``MERGE``: insert where no row is (``token`` None), or update the row only
        while its columns still equal ``token``. The token's values travel in the bound
        source row (as ``OLD_*`` columns), like the new values."""
        row = self._row(key, record)
        cols = list(self.layout.written)
        names = [c.name for c in cols]
        conds: list[str] = []
        if token is not None:
            payload, expires_at, created_at, extra, version = token
            olds = (("PAYLOAD", _b64(payload), "VARCHAR", "TO_BINARY({}, 'BASE64')"),
                    ("CREATED_AT", created_at, "FLOAT", "{}::FLOAT"),
                    ("VERSION", version, "NUMBER(38,0)", "{}::NUMBER(38,0)"),
                    ("EXPIRES_AT", expires_at, "FLOAT", "{}::FLOAT"),
                    ("EXTRA", extra, "VARCHAR", "{}::VARCHAR"))
            for name, value, stage, expr in olds:
                if value is None:
                    conds.append(f"t.{name} IS NULL")
                    continue
                cols.append(Column(f"OLD_{name}", stage, stage, expr))
                row = (*row, value)
                conds.append(f"t.{name} = s.OLD_{name}")
        source, refs, params = self._values([row])
        select = ", ".join(f"{c.expr.format(ref)} AS {c.name}"
                           for c, ref in zip(cols, refs, strict=True))
        merge = (f"MERGE INTO {self._t} AS t USING (SELECT {select} FROM {source}) AS s "
                 f"ON t.{self._k} = s.{self._k} ")
        if token is None:
            sql = (merge + f"WHEN NOT MATCHED THEN INSERT ({', '.join(names)}, UPDATED_AT) "
                   f"VALUES ({', '.join(f's.{n}' for n in names)}, CURRENT_TIMESTAMP())")
        else:
            updates = ", ".join(f"{n} = s.{n}" for n in names[1:])
            sql = (merge + f"WHEN MATCHED AND {' AND '.join(conds)} THEN UPDATE SET "
                   f"{updates}, UPDATED_AT = CURRENT_TIMESTAMP()")

        def run(cur: Any) -> int:
            if not self._ensure(cur):
                raise BackendError(f"table {self._t} does not exist yet and cannot be "
                                   "created")
            self.engine.execute(cur, sql, params)
            return max(0, cur.rowcount or 0)

        return bool(await self.engine.write(run))

    async def delete(self, key: str, now: float) -> bool:
        return await self.delete_many([key], now) > 0

    async def delete_many(self, keys: Iterable[str], now: float) -> int:
        """Removes the live records among ``keys``; expired rows are left to
        :meth:`purge_expired` (they read as absent already)."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return 0

        def run(cur: Any) -> int:
            if not self._ensure(cur):
                return 0
            removed = 0
            for chunk in _chunks(keys):
                marks = ", ".join("?" * len(chunk))
                self.engine.execute(cur, f"DELETE FROM {self._t} WHERE {self._k} IN ({marks}) "
                                         f"AND {self._live}", [*chunk, now])
                removed += max(0, cur.rowcount or 0)
            return removed

        return int(await self.engine.write(run))

    async def purge_expired(self, now: float) -> int:
        def run(cur: Any) -> int:
            if not self._ensure(cur):
                return 0
            self.engine.execute(cur, f"DELETE FROM {self._t} WHERE EXPIRES_AT IS NOT NULL AND "
                                     "EXPIRES_AT <= ?", [now])
            return max(0, cur.rowcount or 0)

        return int(await self.engine.write(run))

    # -- reads --------------------------------------------------------------------------------

    async def _query(self, sql: str, params: Sequence[Any]) -> list[Any]:
        def run(cur: Any) -> list[Any]:
            return self.engine.query(cur, sql, params) if self._ensure(cur) else []

        result: list[Any] = await self.engine.read(run)
        return result

    async def get(self, key: str, now: float) -> Record | None:
        rows = await self._query(f"SELECT {self._select} FROM {self._t} WHERE {self._k} = ?",
                                 [key])
        return self._record(rows[0]) if rows else None

    async def exists(self, key: str, now: float) -> bool:
        rows = await self._query(f"SELECT 1 FROM {self._t} WHERE {self._k} = ? AND "
                                 f"{self._live}", [key, now])
        return bool(rows)

    def _get_many_sql(self, marks: str) -> str:
        return (f"SELECT {self._k}, {self._select} FROM {self._t} "
                f"WHERE {self._k} IN ({marks})")

    async def get_many(self, keys: Iterable[str], now: float) -> dict[str, Record]:
        keys = list(dict.fromkeys(keys))
        if not keys:
            return {}

        def run(cur: Any) -> list[Any]:
            rows: list[Any] = []
            if not self._ensure(cur):
                return rows
            for chunk in _chunks(keys):
                rows += self.engine.query(cur, self._get_many_sql(", ".join("?" * len(chunk))),
                                          chunk)
            return rows

        return {row[0]: self._record(row[1:]) for row in await self.engine.read(run)}

    async def keys(self, prefix: str, now: float) -> list[str]:
        sql = f"SELECT {self._k} FROM {self._t} WHERE {self._live}"
        if prefix:
            rows = await self._query(f"{sql} AND STARTSWITH({self._k}, ?)", [now, prefix])
        else:
            rows = await self._query(sql, [now])
        return [r[0] for r in rows]

    # -- life cycle ---------------------------------------------------------------------------

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # closed outside a loop (a failed open): release here
                self.engine.release()
                return
            await asyncio.to_thread(self.engine.release)

    def stats(self) -> dict[str, Any]:
        eng = self.engine
        return {"table": f"{self.settings.database}.{self.settings.schema}.{self.table}",
                "statements": eng.statements, "write_batches": eng.write_batches,
                "merged_rows": eng.merged_rows, "bulk_loads": eng.bulk_loads,
                "pending_writes": eng.pending(), "connections": eng.connections()}

    def describe(self) -> str:
        s = self.settings
        wh = f", warehouse {s.warehouse}" if s.warehouse else ""
        return f"Snowflake {s.account} {s.database}.{s.schema}.{self.table}{wh}"


def _chunks(keys: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(keys), IN_CHUNK):
        yield keys[i : i + IN_CHUNK]
