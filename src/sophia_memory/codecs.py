"""Codecs turn values into the bytes that serialising backends store, and back.

Three codecs ship; each payload starts with the codec's tag byte so a reader can tell what
wrote it and refuse what it was not configured to read:

* :class:`MsgpackCodec` (tag ``0x01``, the default): MessagePack with extensions for NumPy,
  torch and CuPy arrays, tuples and big integers. Decoding never executes code.
* :class:`JsonCodec` (tag ``0x02``): plain JSON for readers in other languages. JSON types only
  (no bytes, no arrays); tuples come back as lists.
* :class:`SignedPickleCodec` (tag ``0x03``): opt-in pickle for arbitrary objects. It needs a
  signing key; every payload carries an HMAC-SHA256 over its body, and a payload that is
  unsigned, signed with another key or tampered with raises :class:`SignatureError` before
  anything is unpickled.

Every codec also *measures* a value: it checks at ``put`` that the value is storable (raising
:class:`UnsupportedValueError` there, not deep inside a backend) and estimates its size for
byte-bounded tiers that keep live objects.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import struct
import threading
from typing import Any, Protocol, runtime_checkable

import msgpack
import numpy as np

from ._arrays import array_kind, check_dtype, from_numpy, nbytes, to_numpy
from .errors import ConfigError, DecodeError, SignatureError, UnsupportedValueError

__all__ = ["Codec", "JsonCodec", "MsgpackCodec", "SignedPickleCodec", "codec_from_name"]

_TAG_MSGPACK = 0x01
_TAG_JSON = 0x02
_TAG_PICKLE = 0x03
_TAG_NAMES = {_TAG_MSGPACK: "msgpack", _TAG_JSON: "json", _TAG_PICKLE: "signed pickle"}

_EXT_ARRAY = 1
_EXT_TUPLE = 2
_EXT_BIGINT = 3
# Nesting limits. Tuples travel as msgpack extensions whose decoding recurses through the
# C unpacker, so their nesting is held far below the depth that overflows the C stack.
_MAX_DEPTH = 128
_VIEW_FROM = 16_384  # payload bytes from which decoding reads through a memoryview
_MAX_EXT_DEPTH = 32
_ext_depth = threading.local()


@runtime_checkable
class Codec(Protocol):
    """Turns values into bytes and back. Implementations must be safe to share across tasks."""

    name: str

    def measure(self, value: Any) -> int:
        """Check that ``value`` can be encoded and return its approximate encoded size.

        Raises :class:`UnsupportedValueError` for anything the codec cannot store.
        """
        ...

    def encode(self, value: Any) -> bytes:
        """The payload for ``value`` (tag byte first). Raises ``UnsupportedValueError``."""
        ...

    def decode(self, data: bytes) -> Any:
        """The value of a payload. Raises :class:`DecodeError` for foreign or corrupt data."""
        ...


def _describe(value: object) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


def _check_str(value: str) -> int:
    if not value.isascii():
        try:
            return len(value.encode("utf-8")) + 5
        except UnicodeEncodeError:
            raise UnsupportedValueError("strings must be valid UTF-8 (no lone surrogates)") \
                from None
    return len(value) + 5


_INT_MIN = -(2**63)
_UINT_MAX = 2**64 - 1


def _bigint_size(value: int) -> int:
    """Encoded size of an integer beyond 64 bits: hex digits plus the extension header."""
    return (value.bit_length() + 3) // 4 + 9


def _measure(value: Any, binary: bool, depth: int = 0, tuples: int = 0) -> int:
    """Validate the structure of ``value`` and estimate its encoded size in bytes."""
    cls = type(value)
    if cls is str:
        return len(value) + 5 if value.isascii() else _check_str(value)
    if cls is int:
        return 9 if _INT_MIN <= value <= _UINT_MAX else _bigint_size(value)
    if cls is float or cls is bool or value is None:
        return 9
    if depth > _MAX_DEPTH:
        raise UnsupportedValueError(f"value is nested deeper than {_MAX_DEPTH} levels")
    sequence = cls is list or cls is tuple
    if sequence or isinstance(value, dict):
        size = 5
        if cls is tuple:
            if tuples >= _MAX_EXT_DEPTH:
                raise UnsupportedValueError(f"tuples nest deeper than {_MAX_EXT_DEPTH} levels")
            tuples += 1
        if not sequence:
            for k in value:
                if type(k) is not str:
                    raise UnsupportedValueError(f"dict keys must be str, got {_describe(k)}")
                size += len(k) + 5 if k.isascii() else _check_str(k)
        for item in value if sequence else value.values():
            c = type(item)  # scalars inline: most items are, and a call costs more
            if c is str and item.isascii():
                size += len(item) + 5
            elif c is int:
                size += 9 if _INT_MIN <= item <= _UINT_MAX else _bigint_size(item)
            elif c is float or c is bool or item is None:
                size += 9
            else:
                size += _measure(item, binary, depth + 1, tuples)
        return size
    if cls is bytes:
        if not binary:
            raise UnsupportedValueError("this codec (json) cannot store bytes")
        return len(value) + 5
    kind = array_kind(value)
    if kind is not None:
        if not binary:
            raise UnsupportedValueError("this codec (json) cannot store arrays")
        if kind != "torch":
            check_dtype(value.dtype)
        return nbytes(value, kind) + 64
    raise UnsupportedValueError(
        f"cannot store a value of type {_describe(value)}: supported are None, bool, int, "
        "float, str, bytes, list, tuple, dict with str keys, and NumPy/torch/CuPy arrays"
    )


def _measure_plain(value: Any, binary: bool = True, depth: int = 0) -> int:
    """:func:`_measure` for the common case, in fewer steps: exact dicts with ASCII str keys
    and lists of ASCII strs, 64-bit ints, floats, bools, None and such dicts and lists. The
    first thing outside that (a tuple, bytes, an array, a big int, non-ASCII text, a
    subclass) hands the container it is in to :func:`_measure`, which gives the same result
    and raises the same errors (a test holds the two equal)."""
    cls = type(value)
    if depth > _MAX_DEPTH:
        return _measure(value, binary, depth)
    if cls is dict:
        size = 5
        try:
            for k, item in value.items():
                if type(k) is not str or not k.isascii():
                    return _measure(value, binary, depth)
                c = type(item)
                if c is str and item.isascii():
                    size += len(k) + len(item) + 10
                elif (c is int and _INT_MIN <= item <= _UINT_MAX) or c is float \
                        or c is bool or item is None:
                    size += len(k) + 14
                elif c is dict or c is list:
                    size += len(k) + 5 + _measure_plain(item, binary, depth + 1)
                else:
                    return _measure(value, binary, depth)
        except UnsupportedValueError:
            # A value refused before every key was seen: _measure checks the keys first,
            # and its error is the one to raise.
            return _measure(value, binary, depth)
        return size
    if cls is list:
        size = 5
        for item in value:
            c = type(item)
            if c is str and item.isascii():
                size += len(item) + 5
            elif (c is int and _INT_MIN <= item <= _UINT_MAX) or c is float or c is bool \
                    or item is None:
                size += 9
            elif c is dict or c is list:
                size += _measure_plain(item, binary, depth + 1)
            else:
                return _measure(value, binary, depth)
        return size
    return _measure(value, binary, depth)


def _pack_array(value: Any, kind: str) -> msgpack.ExtType:
    arr, dtype = to_numpy(value, kind)  # type: ignore[arg-type]
    header = msgpack.packb([kind, dtype, list(arr.shape)])
    raw = np.ascontiguousarray(arr).tobytes()
    return msgpack.ExtType(_EXT_ARRAY, struct.pack("<I", len(header)) + header + raw)


def _unpack_array(data: bytes) -> Any:
    (hlen,) = struct.unpack_from("<I", data)
    kind, dtype, shape = msgpack.unpackb(data[4 : 4 + hlen])
    np_dtype = np.dtype(dtype) if kind != "torch" else None
    if np_dtype is None:
        # torch dtypes: the raw data has the element width of the stored numpy view.
        np_dtype = _torch_np_dtype(dtype)
    if np_dtype.hasobject:
        raise DecodeError("refusing an object-dtype array payload")
    arr = np.frombuffer(data, dtype=np_dtype, offset=4 + hlen).reshape(shape).copy()
    return from_numpy(arr, kind, dtype)


_TORCH_WIDTHS = {
    "bfloat16": "<i2", "float8_e4m3fn": "|u1", "float8_e5m2": "|u1", "complex32": "<i4",
    "bool": "|b1", "uint16": "<u2", "uint32": "<u4", "uint64": "<u8",
}


def _torch_np_dtype(name: str) -> np.dtype[Any]:
    if name in _TORCH_WIDTHS:
        return np.dtype(_TORCH_WIDTHS[name])
    try:
        return np.dtype(name)
    except TypeError as exc:
        raise DecodeError(f"unknown torch dtype {name!r} in payload") from exc


def _default(value: Any) -> Any:
    cls = type(value)
    if cls is tuple:
        return msgpack.ExtType(_EXT_TUPLE, _packer_packb(list(value)))
    if cls is int:
        # hex: no digit limit (int_max_str_digits spares power-of-two bases), linear time
        return msgpack.ExtType(_EXT_BIGINT, hex(value).encode())
    if isinstance(value, dict):  # dict subclasses (OrderedDict state_dicts) as plain dicts
        return dict(value)
    kind = array_kind(value)
    if kind is not None:
        return _pack_array(value, kind)
    raise UnsupportedValueError(f"cannot store a value of type {_describe(value)}")


def _packer_packb(value: Any) -> bytes:
    return msgpack.packb(value, default=_default, use_bin_type=True, strict_types=True)


_tls = threading.local()


def _top_packb(value: Any) -> bytes:
    """``_packer_packb`` for a whole value, with this thread's reusable Packer (half the cost
    of building one per call). Nested values packed from ``_default`` use fresh packers, so
    this one is never re-entered; after an error it starts empty again."""
    try:
        packer = _tls.packer
    except AttributeError:
        packer = _tls.packer = msgpack.Packer(default=_default, use_bin_type=True,
                                              strict_types=True)
    out: bytes = packer.pack(value)
    return out


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_ARRAY:
        return _unpack_array(data)
    if code == _EXT_TUPLE:
        depth = getattr(_ext_depth, "n", 0)
        if depth >= _MAX_EXT_DEPTH:
            raise DecodeError(f"tuples nest deeper than {_MAX_EXT_DEPTH} levels")
        _ext_depth.n = depth + 1
        try:
            return tuple(_unpackb(data))
        finally:
            _ext_depth.n = depth
    if code == _EXT_BIGINT:
        text = data.decode()
        # hex since 2026-12; decimal payloads written before still read
        return int(text, 16) if text.startswith(("0x", "-0x")) else int(text)
    raise DecodeError(f"unknown msgpack extension type {code}")


def _unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=True,
                           use_list=True)


def _check_tag(data: bytes, tag: int, name: str) -> None:
    if not data or data[0] != tag:
        found = _TAG_NAMES.get(data[0], "an unknown format") if data else "an empty payload"
        raise DecodeError(f"payload was written as {found}; this memory reads {name}")


class MsgpackCodec:
    """The default codec: MessagePack plus array/tuple/bigint extensions; never runs code."""

    name = "msgpack"

    #: ``measure(value) -> int``: a plain function, one call less on every in-process put.
    measure = staticmethod(_measure_plain)

    def encode(self, value: Any) -> bytes:
        _measure_plain(value)
        try:
            return b"\x01" + _top_packb(value)
        except (TypeError, ValueError, OverflowError) as exc:
            if isinstance(exc, UnsupportedValueError):
                raise
            raise UnsupportedValueError(f"cannot encode value: {exc}") from exc

    def decode(self, data: bytes) -> Any:
        if not data or data[0] != _TAG_MSGPACK:
            _check_tag(data, _TAG_MSGPACK, self.name)
        try:
            # A small payload is cheaper to slice than to wrap in a memoryview.
            body = data[1:] if len(data) < _VIEW_FROM else memoryview(data)[1:]
            return msgpack.unpackb(body, ext_hook=_ext_hook, raw=False, strict_map_key=True,
                                   use_list=True)
        except DecodeError:
            raise
        except Exception as exc:  # msgpack raises several unrelated types on corrupt input
            raise DecodeError(f"corrupt msgpack payload: {exc}") from exc


class JsonCodec:
    """JSON for readers in other languages: JSON types only; tuples come back as lists."""

    name = "json"

    def measure(self, value: Any) -> int:
        return _measure_plain(value, False)

    def encode(self, value: Any) -> bytes:
        _measure_plain(value, False)
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            return b"\x02" + text.encode()
        except ValueError as exc:  # includes UnicodeEncodeError
            raise UnsupportedValueError(f"cannot encode value as JSON: {exc}") from exc

    def decode(self, data: bytes) -> Any:
        _check_tag(data, _TAG_JSON, self.name)
        try:
            return json.loads(bytes(memoryview(data)[1:]))
        except (ValueError, RecursionError) as exc:
            raise DecodeError(f"corrupt JSON payload: {exc}") from exc


class SignedPickleCodec:
    """Pickle, opt-in, for arbitrary objects; refuses any payload without a valid HMAC.

    Only use it when every writer of the store is trusted with the signing key: whoever holds
    the key can make this codec execute code on decode.
    """

    name = "pickle"
    _MAC_LEN = 32

    def __init__(self, key: bytes | str) -> None:
        key_bytes = key.encode() if isinstance(key, str) else bytes(key)
        if len(key_bytes) < 16:
            raise ConfigError("the signed pickle codec needs a signing key of at least 16 bytes")
        self._key = key_bytes

    def _mac(self, body: bytes | memoryview) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()

    def measure(self, value: Any) -> int:
        return len(self.encode(value))

    def encode(self, value: Any) -> bytes:
        try:
            body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise UnsupportedValueError(f"cannot pickle value: {exc}") from exc
        return b"\x03" + self._mac(body) + body

    def decode(self, data: bytes) -> Any:
        if not data or data[0] != _TAG_PICKLE:
            raise SignatureError("payload is not a signed pickle; refusing to unpickle it")
        view = memoryview(data)
        mac, body = view[1 : 1 + self._MAC_LEN], view[1 + self._MAC_LEN :]
        if len(mac) != self._MAC_LEN or not hmac.compare_digest(mac, self._mac(body)):
            raise SignatureError("signed pickle payload failed its signature check")
        return pickle.loads(body)


def codec_from_name(name: str, signing_key: bytes | str | None = None) -> Codec:
    """The codec called ``name`` (``msgpack``, ``json`` or ``pickle``)."""
    if name == "msgpack":
        return MsgpackCodec()
    if name == "json":
        return JsonCodec()
    if name == "pickle":
        if signing_key is None:
            raise ConfigError("codec 'pickle' needs signing_key (SOPHIA_MEMORY_SIGNING_KEY)")
        return SignedPickleCodec(signing_key)
    raise ConfigError(f"unknown codec {name!r}; choose msgpack, json or pickle")
