"""Backend URLs taken apart, and the one way factories read their options.

Every factory follows one convention: it calls :meth:`BackendURL.check` with the option names
valid for what the URL asks for, *before* it opens anything, then reads the values with the
typed readers below (each raises :class:`~sophia_memory.errors.ConfigError` naming the option
and what it takes). So a misspelt or misplaced option is refused while nothing exists that would
need closing.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from .._support import scrubbed
from ..errors import ConfigError

__all__ = ["BackendURL", "parse_url", "scrubbed"]


@dataclass
class BackendURL:
    """A backend URL taken apart. ``options`` is the query string (the last value of a
    repeated name); read it with the typed readers once :meth:`check` has passed."""

    raw: str
    scheme: str
    netloc: str
    path: str
    options: dict[str, str] = field(default_factory=dict)

    def check(self, valid: Collection[str], context: str = "") -> None:
        """ConfigError unless every option is in ``valid``: the message names each unknown
        option, the closest valid spelling, and every valid option (``context`` says which
        configuration they are valid for, e.g. ``"versioned=1"``)."""
        unknown = sorted(set(self.options) - set(valid))
        if not unknown:
            return
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(valid), n=1)
            hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
        where = f" for {context}" if context else ""
        listed = ", ".join(sorted(valid)) or "none"
        raise ConfigError(f"{self.redacted()}: unknown option(s) {', '.join(hints)}; "
                          f"valid options{where}: {listed}")

    def _fail(self, name: str, value: str, takes: str) -> ConfigError:
        return ConfigError(f"{self.redacted()}: option {name}={value!r}: {takes}")

    def text(self, name: str, default: str) -> str:
        """The option's text, or ``default``."""
        return self.options.get(name, default)

    def text_or_none(self, name: str) -> str | None:
        """The option's text; None when it is absent or empty."""
        return self.options.get(name) or None

    def integer(self, name: str, default: int | None) -> int | None:
        """An integer option; ``none``, ``0`` or an empty value mean None (no limit)."""
        value = self.options.get(name)
        if value is None:
            return default
        if value.lower() in ("none", "0", ""):
            return None
        try:
            return int(value)
        except ValueError:
            raise self._fail(name, value, "takes an integer (or none)") from None

    def count(self, name: str, default: int) -> int:
        """A positive integer option."""
        value = self.options.get(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            raise self._fail(name, value, "takes a positive integer")
        return number

    def seconds(self, name: str, default: float) -> float:
        """A positive number of seconds."""
        value = self.options.get(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            number = 0.0
        if not number > 0 or number == float("inf"):
            raise self._fail(name, value, "takes a number of seconds > 0")
        return number

    def flag(self, name: str, default: bool) -> bool:
        """A ``0``/``1`` option."""
        value = self.options.get(name)
        if value is None:
            return default
        if value not in ("0", "1"):
            raise self._fail(name, value, "takes 0 or 1")
        return value == "1"

    def choice(self, name: str, default: str, choices: Sequence[str]) -> str:
        """One of ``choices`` (lower-case names; the value's case does not matter)."""
        value = self.options.get(name, default)
        if value.lower() not in choices:
            raise self._fail(name, value, f"takes one of {', '.join(choices)}")
        return value.lower()

    def redacted(self) -> str:
        """The URL without its query and with any password replaced, safe for logs and
        errors (:func:`scrubbed`)."""
        return scrubbed(self.raw, query=False)


def parse_url(url: str) -> BackendURL:
    """Split a backend URL; ConfigError when it is not one."""
    if not isinstance(url, str):
        raise ConfigError(f"malformed backend URL {url!r}: expected scheme://...")
    if "://" not in url:
        raise ConfigError(f"malformed backend URL {scrubbed(url)!r}: expected scheme://...")
    try:
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:
        raise ConfigError(f"malformed backend URL: {exc}") from None
    options = dict(pairs)
    if len(options) < len(pairs):  # a repeated option: which one was meant is not known
        names = [name for name, _ in pairs]
        twice = next(name for name in names if names.count(name) > 1)
        raise ConfigError(f"{parts.scheme}:// URL gives option {twice!r} more than once")
    if "," not in parts.netloc:  # one host (a cluster's list is checked by its backend)
        try:
            parts.port  # noqa: B018 - read for its check
        except ValueError:
            raise ConfigError(f"malformed backend URL {scrubbed(url)!r}: the port is not a "
                              "number from 0 to 65535 (a password must percent-encode '/', "
                              "'?', '#' and '@')") from None
    if not re.fullmatch(r"[a-z][a-z0-9+.\-]*", parts.scheme.lower()):
        raise ConfigError(f"malformed backend URL {scrubbed(url)!r}: missing or invalid "
                          "scheme")
    return BackendURL(url, parts.scheme.lower(), parts.netloc, unquote(parts.path), options)
