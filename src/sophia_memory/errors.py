"""The exceptions sophia_memory raises.

Every error derives from :class:`SophiaMemoryError`, so ``except SophiaMemoryError`` catches
everything the library raises on purpose. Errors caused by bad arguments also derive from the
matching built-in (``ValueError`` / ``TypeError`` / ``ImportError``) so generic handlers work.
Driver exceptions (sqlite3, redis, snowflake) are mapped to these types at the backend edge,
with the original kept as ``__cause__``.

The tree::

    SophiaMemoryError
    ├── ConfigError                 (ValueError)  bad configuration: URL, pool budgets, options
    ├── InvalidKeyError             (ValueError)  key not a str, empty, too long, reserved char
    ├── InvalidArgumentError        (ValueError)  other bad arguments: negative TTL, unknown tier
    ├── UnsupportedValueError       (TypeError)   value of a type no tier can store
    ├── ValueTooLargeError          (ValueError)  value over the configured size limit
    ├── DecodeError                               stored payload cannot be decoded safely
    │   └── SignatureError                        signed-pickle payload unsigned or tampered
    ├── TierUnavailableError                      a tier is down, switched off, or breaker open
    ├── VersionConflictError                      optimistic concurrency check failed (L5)
    ├── BackendError                              a backend failed in a way not covered above
    │   └── WriteRefusedError                     the tier reads but refuses writes (OOM, disk full)
    └── MissingDependencyError      (ImportError) optional driver missing; names the extra
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "ConfigError",
    "DecodeError",
    "InvalidArgumentError",
    "InvalidKeyError",
    "MissingDependencyError",
    "SignatureError",
    "SophiaMemoryError",
    "TierUnavailableError",
    "UnsupportedValueError",
    "ValueTooLargeError",
    "VersionConflictError",
    "WriteRefusedError",
]


class SophiaMemoryError(Exception):
    """Base class of every error raised by sophia_memory."""


class ConfigError(SophiaMemoryError, ValueError):
    """The configuration is invalid (malformed URL, pools that do not fit, unknown option)."""


class InvalidKeyError(SophiaMemoryError, ValueError):
    """A key is not a non-empty ``str`` within the length limit, or uses a reserved character."""


class InvalidArgumentError(SophiaMemoryError, ValueError):
    """An argument other than the key or value is invalid (negative TTL, unknown tier, ...)."""


class UnsupportedValueError(SophiaMemoryError, TypeError):
    """The value (or something nested in it) is of a type sophia_memory does not store."""


class ValueTooLargeError(SophiaMemoryError, ValueError):
    """The value is larger than ``max_value_bytes`` or than the whole bounded tier or pool.

    ``limit`` is the limit in bytes when known; ``what`` names the limit.
    """

    def __init__(self, size: int, limit: int | None, what: str = "max_value_bytes") -> None:
        over = f"the limit of {limit} bytes" if limit is not None else "the capacity"
        super().__init__(f"value is {size} bytes, over {over} ({what})")
        self.size = size
        self.limit = limit
        self.what = what


class DecodeError(SophiaMemoryError):
    """A stored payload cannot be decoded by the configured codec (foreign or corrupt data)."""


class SignatureError(DecodeError):
    """A signed-pickle payload carries no valid signature: it is refused, never unpickled."""


class TierUnavailableError(SophiaMemoryError):
    """A tier cannot serve the call: switched off, down, timed out, or its circuit is open."""

    def __init__(self, tier: object, reason: str) -> None:
        super().__init__(f"{tier} is unavailable: {reason}")
        self.tier = tier
        self.reason = reason


class VersionConflictError(SophiaMemoryError):
    """``expected_version`` did not match the stored version; ``current_version`` says what is."""

    def __init__(self, key: str, expected: int, current: int | None) -> None:
        super().__init__(f"key {key!r}: expected version {expected}, current is {current}")
        self.key = key
        self.expected_version = expected
        self.current_version = current


class BackendError(SophiaMemoryError):
    """A backend failed in a way no more specific error describes (driver error, I/O error)."""


class WriteRefusedError(BackendError):
    """The tier answers but refuses writes: Redis out of memory under ``noeviction``, a Redis
    that cannot persist (``MISCONF``) or is read-only, a full disk under SQLite. Reads keep
    being served; writes to the tier fail (as :class:`TierUnavailableError`, with this as the
    cause) until it accepts them again."""


class MissingDependencyError(SophiaMemoryError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the {package!r} package: pip install 'sophia-memory[{extra}]'"
        )
        self.package = package
        self.extra = extra
