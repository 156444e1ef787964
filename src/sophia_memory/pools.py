"""Sizing named memory pools: units, presets, fractions and validation.

Pools are given as fractions of usable memory (``0.40``) or absolute sizes with explicit
units (``"24GiB"`` = 24 * 2**30 bytes, ``"24GB"`` = 24 * 10**9 bytes; a bare int is bytes).
Usable memory is what the device reports minus a headroom reserve. Pools that do not fit raise
:class:`ConfigError` naming every pool and the totals.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["DEFAULT_POOLS", "PRESETS", "DevicePreset", "check_pool_name", "device_memory",
           "format_bytes", "match_preset", "parse_size", "plan_pools"]

#: Default pools in the platform's proportions 40 : 30 : 20 : 6 of usable memory.
DEFAULT_POOLS: dict[str, float] = {
    "active_models": 0.40, "inference_cache": 0.30, "vector_cache": 0.20, "buffer": 0.06,
}

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


@dataclass(frozen=True)
class DevicePreset:
    """A known accelerator: its marketing size and the memory it typically reports."""

    name: str
    nominal: str
    reported_bytes: int


#: Typical reported memory; detection from the device always wins over these.
PRESETS: dict[str, DevicePreset] = {
    "A10": DevicePreset("A10", "24 GB", int(22.5 * 2**30)),
    "H100": DevicePreset("H100", "80 GB", int(79.6 * 2**30)),
    "GH200": DevicePreset("GH200", "96 GB", 96 * 10**9),
    "H200": DevicePreset("H200", "141 GB", int(139.8 * 2**30)),
    "B200": DevicePreset("B200", "180 GB", int(178.4 * 2**30)),
}


def match_preset(device_name: str) -> DevicePreset | None:
    """The preset a detected device name belongs to (``"NVIDIA GH200 480GB"`` -> GH200)."""
    upper = device_name.upper()
    for key in sorted(PRESETS, key=len, reverse=True):  # GH200 before H200
        if re.search(rf"(?<![A-Z0-9]){key}(?![0-9])", upper):
            return PRESETS[key]
    return None


def device_memory(value: int | str, what: str = "memory") -> int:
    """Bytes of a device given as a size (``"96GB"``) or a preset name (``"GH200"``)."""
    if isinstance(value, str) and value.strip().upper() in PRESETS:
        return PRESETS[value.strip().upper()].reported_bytes
    return parse_size(value, what)


def parse_size(value: int | float | str, what: str = "size") -> int:
    """Bytes from an int (bytes) or a string with explicit units (GiB vs GB)."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{what}: size must not be negative, got {value}")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m and m.group(2).lower() in _UNITS:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ConfigError(f"{what}: cannot read {value!r} as a size; write e.g. '24GiB' (2**30) "
                      "or '24GB' (10**9)")


def format_bytes(n: int) -> str:
    """``n`` bytes in GiB/MiB with two decimals, for messages."""
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.2f} MiB"


def check_pool_name(name: str) -> None:
    """Refuse a pool name that is a near miss of one of the platform's pools (a typo such as
    ``inferance_cache``, which would otherwise make a pool of its own and leave the default
    one out), naming the closest spelling. Other names are pools of the user's own."""
    if name in DEFAULT_POOLS:
        return
    close = difflib.get_close_matches(name.lower(), list(DEFAULT_POOLS), n=1, cutoff=0.8)
    if close:
        raise ConfigError(f"unknown pool {name!r}: did you mean {close[0]!r}? (the platform's "
                          f"pools are {', '.join(DEFAULT_POOLS)}; another name makes a pool "
                          "of its own and must not look like one of them)")


def plan_pools(pools: Mapping[str, float | int | str], total: int,
               reserve: float | int | str = 0.02, device: str = "device") -> dict[str, int]:
    """Byte budgets for ``pools`` on a device reporting ``total`` bytes.

    Floats in (0, 1] are fractions of usable memory (``total`` minus ``reserve``); ints and
    strings are absolute sizes. Raises :class:`ConfigError` when they do not fit.
    """
    if not pools:
        raise ConfigError("at least one pool is needed")
    reserve_bytes = int(total * reserve) if isinstance(reserve, float) else parse_size(
        reserve, "reserve")
    usable = total - reserve_bytes
    if usable <= 0:
        raise ConfigError(f"{device}: reserve {format_bytes(reserve_bytes)} leaves no memory")
    budgets: dict[str, int] = {}
    for name, spec in pools.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}", name):
            raise ConfigError(f"invalid pool name {name!r}")
        check_pool_name(name)
        if isinstance(spec, float):
            if not 0 < spec <= 1:
                raise ConfigError(f"pool {name!r}: fraction must be in (0, 1], got {spec}")
            budgets[name] = int(spec * usable)
        else:
            budgets[name] = parse_size(spec, f"pool {name!r}")
        if budgets[name] <= 0:
            raise ConfigError(f"pool {name!r} has no memory")
    wanted = sum(budgets.values())
    if wanted > usable:
        listing = ", ".join(f"{n}={format_bytes(b)}" for n, b in budgets.items())
        raise ConfigError(
            f"pools do not fit on {device}: {listing}; total {format_bytes(wanted)} > usable "
            f"{format_bytes(usable)} ({format_bytes(total)} reported - "
            f"{format_bytes(reserve_bytes)} reserve), over by {format_bytes(wanted - usable)}"
        )
    return budgets
