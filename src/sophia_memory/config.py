"""Configuration: explicit arguments over environment variables over a TOML file.

``Memory.open()`` always reads the environment (and the TOML file it may name); explicit
arguments win. Environment variables:

* ``SOPHIA_MEMORY_<TIER>_URL`` - a tier's backend URL, e.g. ``SOPHIA_MEMORY_SESSION_URL``;
  ``none`` switches the tier off.
* ``SOPHIA_MEMORY_PATH`` - the embedded SQLite file.
* ``SOPHIA_MEMORY_CONFIG`` - a TOML file with the same keys as :class:`MemoryConfig`
  (tiers in a ``[tiers]`` table, pools in ``[gpu_pools]``).
* ``SOPHIA_MEMORY_SIGNING_KEY`` - the key for the signed pickle codec.

Any other ``SOPHIA_MEMORY_*`` variable is refused with :class:`ConfigError` naming the closest
valid spelling: a misspelt variable would otherwise leave its default in place silently.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, InvalidArgumentError
from .pools import DEFAULT_POOLS
from .tiers import Tier

__all__ = ["DEFAULT_URLS", "MemoryConfig", "default_path", "tier_of"]

#: What each tier uses when nothing names its backend. ``None``: not available.
DEFAULT_URLS: dict[Tier, str | None] = {
    Tier.GPU: "host://",
    Tier.SESSION: "memory://",
    Tier.CORTEX: "sqlite:///?table=cortex_cache",
    Tier.PERSISTENT: "sqlite:///?table=persistent",
    Tier.VECTOR: "sqlite:///?table=vector",
    Tier.WORKFLOW: "sqlite:///?table=workflow",
}

_OFF = ("none", "off", "disabled", "")


#: Every SOPHIA_MEMORY_* variable the library reads; any other is a typo and refused.
ENV_VARIABLES = frozenset({
    *(f"SOPHIA_MEMORY_{tier.name}_URL" for tier in Tier),
    "SOPHIA_MEMORY_PATH", "SOPHIA_MEMORY_CONFIG", "SOPHIA_MEMORY_SIGNING_KEY",
})


def check_environment(environ: Mapping[str, str]) -> None:
    """Raise :class:`ConfigError` for a ``SOPHIA_MEMORY_*`` variable the library does not
    read (a misspelling would otherwise fall back to a default without a word), naming the
    closest valid spelling."""
    unknown = sorted(name for name in environ
                     if name.startswith("SOPHIA_MEMORY_") and name not in ENV_VARIABLES)
    if not unknown:
        return
    name = unknown[0]
    valid = sorted(ENV_VARIABLES)
    close = [v for v in valid if v == name.upper()] or \
        difflib.get_close_matches(name.upper(), valid, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else \
        f"the variables read are {', '.join(valid)}"
    more = f" (and {len(unknown) - 1} more: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
    raise ConfigError(f"unknown environment variable {name}{more}: {hint}")


def default_path() -> Path:
    """Where the embedded database lives unless configured: ``$SOPHIA_MEMORY_PATH``, else
    ``$XDG_DATA_HOME/sophia_memory/memory.db`` (``~/.local/share/...``)."""
    env = os.environ.get("SOPHIA_MEMORY_PATH")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sophia_memory" / "memory.db"


def tier_of(value: object) -> Tier:
    """A :class:`Tier` from a Tier, its name (any case) or its level number."""
    if isinstance(value, Tier):
        return value
    if isinstance(value, str):
        name = value.strip().upper()
        if name.startswith("L") and name[1:].isdigit():
            value = int(name[1:])
        elif name in Tier.__members__:
            return Tier[name]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 5:
        return Tier(value)
    raise InvalidArgumentError(f"unknown tier {value!r}; use one of "
                               f"{', '.join(str(t) for t in Tier)}")


@dataclass
class MemoryConfig:
    """Everything ``Memory.open`` can be told. Unset fields take the documented defaults."""

    #: Backend URL per tier; a tier absent here takes ``DEFAULT_URLS``; ``None`` turns it off.
    tiers: dict[Tier, str | None] = field(default_factory=dict)
    #: The embedded SQLite file (default: :func:`default_path`).
    path: str | None = None
    default_tier: Tier = Tier.SESSION
    #: Named L0 pools: fractions of usable memory or sizes with units.
    gpu_pools: dict[str, float | int | str] = field(default_factory=lambda: dict(DEFAULT_POOLS))
    gpu_reserve: float | int | str = 0.02
    #: Total memory of the host-memory pools standing in for a GPU.
    host_pool_memory: int | str = "1GiB"
    #: The vector tier's dimension (None: taken from the first vector) and default metric.
    vector_dim: int | None = None
    vector_metric: str = "cosine"
    #: Versions kept per workflow key (older ones are purged); None keeps all.
    workflow_retain: int | None = 100
    session_max_items: int | None = 100_000
    session_max_bytes: int | None = 512 * 2**20
    max_key_bytes: int = 1024
    max_value_bytes: int = 512 * 2**20
    codec: str = "msgpack"
    signing_key: str | bytes | None = None
    #: Copy hits from slower tiers into faster ones (in the background).
    promote: bool = True
    promotion_queue: int = 10_000
    #: Tiers whose own items are dropped, not spilled, when evicted.
    cache_only: frozenset[Tier] = frozenset()
    #: Seconds per call on remote tiers, and the circuit breaker's settings.
    call_timeout: float = 2.0
    breaker_threshold: int = 5
    breaker_reset: float = 30.0
    #: Seconds between background purges of expired rows (0: never).
    purge_interval: float = 300.0
    #: Bound of the spill buffer (items evicted from an in-process tier on their way to a
    #: slower one): a put that finds it full waits until the spiller has made room.
    spill_max_items: int = 10_000
    spill_max_bytes: int = 256 * 2**20

    def __repr__(self) -> str:
        """The fields, with each URL shown without its password and query and the signing
        key as ``***``: safe to log."""
        from ._support import scrubbed

        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "tiers":
                value = {t: u if u is None else scrubbed(u) for t, u in value.items()}
            elif f.name == "signing_key" and value is not None:
                value = "***"
            shown.append(f"{f.name}={value!r}")
        return f"MemoryConfig({', '.join(shown)})"

    def resolved_path(self) -> Path:
        return Path(self.path).expanduser() if self.path else default_path()

    def url_for(self, tier: Tier) -> str | None:
        return self.tiers[tier] if tier in self.tiers else DEFAULT_URLS[tier]

    @classmethod
    def build(cls, base: MemoryConfig | None = None, environ: Mapping[str, str] | None = None,
              **overrides: Any) -> MemoryConfig:
        """Defaults, then the TOML file, then the environment, then ``base``'s explicitly set
        fields, then ``overrides``; each later source wins."""
        env = os.environ if environ is None else environ
        check_environment(env)
        data: dict[str, Any] = {}
        toml_path = env.get("SOPHIA_MEMORY_CONFIG")
        if toml_path:
            data.update(_read_toml(Path(toml_path)))
        toml_tiers = data.pop("tiers", {})
        if not isinstance(toml_tiers, Mapping):
            raise ConfigError(f"[tiers] in {toml_path} must be a table of tier = URL")
        tiers = dict(toml_tiers)
        for tier in Tier:
            url = env.get(f"SOPHIA_MEMORY_{tier.name}_URL")
            if url is not None:
                tiers[tier] = url
        if env.get("SOPHIA_MEMORY_PATH"):
            data["path"] = env["SOPHIA_MEMORY_PATH"]
        if env.get("SOPHIA_MEMORY_SIGNING_KEY"):
            data["signing_key"] = env["SOPHIA_MEMORY_SIGNING_KEY"]
        if base is not None:
            explicit = base.__dict__.get("_explicit")
            for f in dataclasses.fields(cls):
                value = getattr(base, f.name)
                if f.name == "tiers":
                    tiers.update(value)
                elif explicit is None or f.name in explicit:
                    data[f.name] = value
        tiers.update(overrides.pop("tiers", None) or {})
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown option(s): {_with_hints(unknown)}")
        # None is "not given", except for the fields where it is a value that is not the
        # default (session_max_items=None: no item bound; workflow_retain=None: keep all).
        data.update({k: v for k, v in overrides.items() if v is not None or k in _NONE_IS_VALUE})
        data["tiers"] = tiers
        return cls._normalised(data)

    @classmethod
    def _normalised(cls, data: dict[str, Any]) -> MemoryConfig:
        if not isinstance(data["tiers"], Mapping):
            raise ConfigError(f"tiers must be a mapping of tier to URL, got {data['tiers']!r}")
        tiers: dict[Tier, str | None] = {}
        for key, url in data["tiers"].items():
            if url is not None and not isinstance(url, str):
                raise ConfigError(f"tier {key!r}: URL must be a string or None, got {url!r}")
            tiers[_config_tier(key)] = None if url is None or url.strip().lower() in _OFF else url
        data["tiers"] = tiers
        if "default_tier" in data:
            data["default_tier"] = _config_tier(data["default_tier"])
        if "cache_only" in data:
            if isinstance(data["cache_only"], (str, bytes)) or not hasattr(
                    data["cache_only"], "__iter__"):
                raise ConfigError("cache_only must be a collection of tiers")
            data["cache_only"] = frozenset(_config_tier(t) for t in data["cache_only"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown configuration key(s): {_with_hints(unknown)}")
        config = cls(**data)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ConfigError for any field of the wrong type or out of range."""
        for name, kinds in _FIELD_TYPES.items():
            value = getattr(self, name)
            if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
                shown = type(value).__qualname__ if name == "signing_key" else repr(value)
                raise ConfigError(f"{name} must be {_kind_names(kinds)}, got {shown}")
        if self.max_key_bytes < 1:
            raise ConfigError("max_key_bytes must be at least 1")
        if self.max_value_bytes < 1:
            raise ConfigError("max_value_bytes must be at least 1")
        if self.call_timeout <= 0 or self.breaker_threshold < 1 or self.breaker_reset <= 0:
            raise ConfigError("call_timeout, breaker_threshold and breaker_reset must be > 0")
        if self.spill_max_items < 1 or self.spill_max_bytes < 1:
            raise ConfigError("spill_max_items and spill_max_bytes must be at least 1")
        if self.codec not in ("msgpack", "json", "pickle"):
            raise ConfigError(f"unknown codec {self.codec!r}; choose msgpack, json or pickle")


_NONE = type(None)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "path": (str, _NONE), "default_tier": (Tier,), "gpu_pools": (dict,),
    "gpu_reserve": (float, int, str), "host_pool_memory": (int, str),
    "workflow_retain": (int, _NONE), "vector_dim": (int, _NONE), "vector_metric": (str,),
    "session_max_items": (int, _NONE),
    "session_max_bytes": (int, _NONE), "max_key_bytes": (int,), "max_value_bytes": (int,),
    "codec": (str,), "signing_key": (str, bytes, _NONE), "promote": (bool,),
    "promotion_queue": (int,), "cache_only": (frozenset,), "call_timeout": (float, int),
    "breaker_threshold": (int,), "breaker_reset": (float, int), "purge_interval": (float, int),
    "spill_max_items": (int,), "spill_max_bytes": (int,),
}


#: Fields where None, passed as an option, is a value (not the default), not "not given".
_NONE_IS_VALUE = frozenset({"workflow_retain", "session_max_items", "session_max_bytes"})


def _with_hints(unknown: set[str]) -> str:
    """The unknown names, each with the closest field name where one is close."""
    fields = [f.name for f in dataclasses.fields(MemoryConfig)]
    shown = []
    for name in sorted(unknown):
        close = difflib.get_close_matches(str(name).lower(), fields, n=1, cutoff=0.6)
        shown.append(f"{name} (did you mean {close[0]}?)" if close else str(name))
    return ", ".join(shown)


def _kind_names(kinds: tuple[type, ...]) -> str:
    return " or ".join("None" if k is _NONE else k.__name__ for k in kinds)


def _config_tier(value: object) -> Tier:
    try:
        return tier_of(value)
    except InvalidArgumentError as exc:
        raise ConfigError(f"configuration names {exc}") from None


def _record_explicit_fields() -> None:
    """Make ``MemoryConfig(...)`` remember which fields the caller set, so that an explicit
    config object wins over the environment even where it repeats a default."""
    generated = MemoryConfig.__init__
    names = [f.name for f in dataclasses.fields(MemoryConfig)]

    def __init__(self: MemoryConfig, *args: Any, **kwargs: Any) -> None:
        generated(self, *args, **kwargs)
        self.__dict__["_explicit"] = frozenset(names[: len(args)]) | frozenset(kwargs)

    __init__.__doc__ = generated.__doc__
    MemoryConfig.__init__ = __init__  # type: ignore[method-assign]


_record_explicit_fields()


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read SOPHIA_MEMORY_CONFIG file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"SOPHIA_MEMORY_CONFIG file {path} is not valid TOML: {exc}") from None
