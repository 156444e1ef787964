"""sophia_memory: one async get/put API over six memory tiers.

>>> from sophia_memory import Memory, Tier
>>> async with Memory.open() as mem:                       # doctest: +SKIP
...     await mem.put("user:42", {"cart": [1, 2]}, tier=Tier.SESSION, ttl=3600)
...     await mem.get("user:42")
"""

from .clock import Clock, ManualClock, SystemClock
from .codecs import Codec, JsonCodec, MsgpackCodec, SignedPickleCodec
from .config import MemoryConfig
from .errors import (
    BackendError,
    ConfigError,
    DecodeError,
    InvalidArgumentError,
    InvalidKeyError,
    MissingDependencyError,
    SignatureError,
    SophiaMemoryError,
    TierUnavailableError,
    UnsupportedValueError,
    ValueTooLargeError,
    VersionConflictError,
    WriteRefusedError,
)
from .memory import Cached, Memory
from .policies import EvictionPolicy, FIFOPolicy, LRUPolicy
from .tiers import Entry, Hit, Record, Tier

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "Cached",
    "Clock",
    "Codec",
    "ConfigError",
    "DecodeError",
    "Entry",
    "EvictionPolicy",
    "FIFOPolicy",
    "Hit",
    "InvalidArgumentError",
    "InvalidKeyError",
    "JsonCodec",
    "LRUPolicy",
    "ManualClock",
    "Memory",
    "MemoryConfig",
    "MissingDependencyError",
    "MsgpackCodec",
    "Record",
    "SignatureError",
    "SignedPickleCodec",
    "SophiaMemoryError",
    "SystemClock",
    "Tier",
    "TierUnavailableError",
    "UnsupportedValueError",
    "ValueTooLargeError",
    "VersionConflictError",
    "WriteRefusedError",
    "__version__",
]
