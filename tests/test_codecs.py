"""Property tests for the three codecs (DESIGN.md §3 "Values" and "Codec").

* MsgpackCodec (the default): every supported value comes back equal *and of the same type*
  (tuple stays tuple, bytes stays bytes, arrays keep dtype and shape, torch stays torch);
  anything it did not write is refused with DecodeError and nothing else.
* JsonCodec: JSON values round-trip; bytes and arrays are refused at encode.
* SignedPickleCodec: arbitrary picklable objects round-trip; anything unsigned, tampered
  with or signed with another key is refused with SignatureError *before* unpickling.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import json
import math
import os
import pickle
import shlex
import struct
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sophia_memory import (
    ConfigError,
    DecodeError,
    JsonCodec,
    Memory,
    MsgpackCodec,
    SignatureError,
    SignedPickleCodec,
    Tier,
    UnsupportedValueError,
)
from sophia_memory.codecs import codec_from_name

KEY = b"k" * 32
OTHER_KEY = b"o" * 32

# -- helpers ---------------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Deep equality that also demands equal types, treats NaN as equal to NaN, tells -0.0
    from 0.0 and compares arrays bit for bit with their dtype and shape."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return same_array(a, b)
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, torch.Tensor):
        return same_tensor(a, b)
    return bool(a == b)


def same_array(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape
            and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    def raw(t: torch.Tensor) -> bytes:
        if t.numel() == 0:
            return b""
        return bytes(t.detach().contiguous().flatten().view(torch.uint8).numpy().tobytes())

    return a.dtype == b.dtype and a.shape == b.shape and raw(a) == raw(b)


def roundtrip(codec: Any, value: Any) -> Any:
    data = codec.encode(value)
    assert isinstance(data, bytes)
    return codec.decode(data)


# -- strategies ------------------------------------------------------------------------------

big_ints = st.one_of(
    st.integers(min_value=2**63, max_value=2**200),
    st.integers(min_value=-(2**200), max_value=-(2**63) - 1),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, -(2**64)]),
)
msgpack_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), big_ints,
    st.floats(allow_nan=True, allow_infinity=True), st.text(), st.binary(),
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(st.text(max_size=8), inner, max_size=5),
    ),
    max_leaves=25,
)

NUMPY_DTYPES = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="="),
    hnp.unsigned_integer_dtypes(endianness="="),
    hnp.floating_dtypes(sizes=(16, 32, 64), endianness="="),
    hnp.complex_number_dtypes(endianness="="),
    hnp.integer_dtypes(endianness=">"),
    hnp.floating_dtypes(sizes=(32, 64), endianness=">"),
    hnp.datetime64_dtypes(endianness="="),
)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)
numpy_arrays = NUMPY_DTYPES.flatmap(lambda dt: hnp.arrays(dt, SHAPES))

TORCH_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8,
                torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64]


@st.composite
def torch_tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = draw(st.sampled_from(TORCH_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    base = draw(hnp.arrays(np.float32, shape, elements=st.floats(-1000, 1000, width=32)))
    t = torch.from_numpy(base).to(dtype)
    if t.dim() >= 2 and draw(st.booleans()):
        t = t.transpose(0, 1)  # non-contiguous
    return t


# -- MsgpackCodec ----------------------------------------------------------------------------

msgpack_codec = MsgpackCodec()


@given(msgpack_values)
def test_msgpack_roundtrips_plain_values_with_their_types(value: Any) -> None:
    assert msgpack_codec.measure(value) > 0
    assert same(roundtrip(msgpack_codec, value), value)


# What measure sees besides plain data: keys that are not str, dict subclasses, deep lists.
measure_inputs = st.recursive(
    st.one_of(msgpack_scalars, st.just(np.zeros(3)), st.just(object())),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers(0, 3)), inner, max_size=4),
        st.dictionaries(st.text(max_size=6), inner, max_size=3).map(collections.OrderedDict),
    ),
    max_leaves=20,
)


# Plain data only, mostly ASCII: what the fast measure walks without handing over.
plain_inputs = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(),
              st.text(st.characters(max_codepoint=127), max_size=6), st.text(max_size=3)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(st.characters(max_codepoint=127), max_size=6), inner,
                        max_size=4),
    ),
    max_leaves=20,
)


def _measured(measure: Any, value: Any, binary: bool) -> tuple[str, Any]:
    try:
        return "size", measure(value, binary)
    except UnsupportedValueError as exc:
        return "refused", str(exc)


@given(st.one_of(plain_inputs, measure_inputs), st.booleans())
@example({"k": 1, "s": "v", "l": [None, 1.5, "x", [{}]]}, True)
@example({"": [np.zeros(3)], 0: None}, False)  # keys are checked before values
@settings(max_examples=300)
def test_the_fast_measure_equals_the_general_one(value: Any, binary: bool) -> None:
    """The put path's measure (plain data in fewer steps) gives the general walk's size and
    refuses what it refuses, with the same message, for either codec."""
    from sophia_memory.codecs import _measure, _measure_plain
    assert _measured(_measure_plain, value, binary) == _measured(_measure, value, binary)


@pytest.mark.parametrize("value", [
    2**64, -(2**64), 2**63, -(2**63) - 1, 2**1000, -(2**1000),
    (), (1, (2, (3,))), [(), [()]], {"t": (b"x", None)}, b"", "", {"": {}},
    float("nan"), float("inf"), float("-inf"), -0.0, True, False, [True, 1, 1.0],
])
def test_msgpack_roundtrips_edge_values(value: Any) -> None:
    assert same(roundtrip(msgpack_codec, value), value)


def test_msgpack_keeps_bool_int_float_distinct_inside_containers() -> None:
    out = roundtrip(msgpack_codec, {"b": [True, 1, 1.0], "t": (0, False, 0.0)})
    assert [type(x) for x in out["b"]] == [bool, int, float]
    assert [type(x) for x in out["t"]] == [int, bool, float]
    assert type(out["t"]) is tuple


@given(numpy_arrays)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_msgpack_roundtrips_numpy_arrays(arr: np.ndarray[Any, Any]) -> None:
    out = roundtrip(msgpack_codec, arr)
    assert type(out) is np.ndarray
    assert same_array(out, arr)


@given(numpy_arrays, st.integers(1, 3))
def test_msgpack_roundtrips_non_contiguous_views(arr: np.ndarray[Any, Any], step: int) -> None:
    assume(arr.ndim >= 1)
    view = arr[::step]
    if arr.ndim >= 2:
        view = view.swapaxes(0, 1)
    out = roundtrip(msgpack_codec, view)
    assert same_array(out, view)
    assert out.flags.writeable  # a private copy, not a read-only view into the payload


@pytest.mark.parametrize("arr", [
    np.array(3.5, dtype=np.float16),              # 0-d
    np.zeros((0,), dtype=np.float32),             # empty
    np.zeros((3, 0, 2), dtype=np.complex128),     # empty with a non-zero dim
    np.array([True, False]),                      # bool
    np.array([1 + 2j, np.nan], dtype=np.complex64),
    np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
    np.arange(24, dtype=np.float64).reshape(2, 3, 4)[:, 1, ::2],
    np.array([1, 2], dtype=">i4"),
    np.array(["2020-01-01"], dtype="M8[s]"),
    np.array(["ab", "c"], dtype="U3"),
])
def test_msgpack_roundtrips_array_edge_cases(arr: np.ndarray[Any, Any]) -> None:
    out = roundtrip(msgpack_codec, arr)
    assert type(out) is np.ndarray
    assert same_array(out, arr)


@pytest.mark.parametrize("scalar", [
    np.float16(1.5), np.float32(-0.0), np.float64(np.nan), np.int8(-7), np.uint64(2**64 - 1),
    np.int64(-(2**63)), np.bool_(True), np.complex64(1 - 2j), np.complex128(3j),
    np.datetime64("2020-01-01"),
])
def test_msgpack_roundtrips_numpy_scalars(scalar: np.generic) -> None:
    out = roundtrip(msgpack_codec, scalar)
    assert type(out) is type(scalar)
    assert same(out, scalar)


@given(torch_tensors())
def test_msgpack_roundtrips_torch_tensors_as_torch(t: torch.Tensor) -> None:
    out = roundtrip(msgpack_codec, t)
    assert isinstance(out, torch.Tensor)
    assert same_tensor(out, t)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.bool, torch.uint16,
                                   torch.uint32, torch.uint64, torch.float8_e4m3fn,
                                   torch.float8_e5m2])
def test_msgpack_roundtrips_torch_dtypes_numpy_lacks(dtype: torch.dtype) -> None:
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3).to(dtype)
    out = roundtrip(msgpack_codec, t)
    assert out.dtype == dtype
    assert out.shape == (2, 3)
    assert same_tensor(out, t)


def test_msgpack_roundtrips_torch_zero_dim_empty_and_grad_tensors() -> None:
    for t in (torch.tensor(2.5, dtype=torch.bfloat16), torch.zeros(0, 3),
              torch.ones(3, requires_grad=True), torch.nn.Parameter(torch.ones(2, 2))):
        out = roundtrip(msgpack_codec, t)
        assert isinstance(out, torch.Tensor)
        assert same_tensor(out, t)


@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_.]{0,15}", fullmatch=True),
                       st.one_of(numpy_arrays, torch_tensors()), min_size=1, max_size=5),
       st.booleans())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_msgpack_roundtrips_state_dicts(sd: dict[str, Any], ordered: bool) -> None:
    value = collections.OrderedDict(sd) if ordered else sd
    out = roundtrip(msgpack_codec, value)
    assert isinstance(out, dict)
    assert list(out) == list(value)
    for name, arr in value.items():
        assert type(out[name]) is type(arr)
        assert same(out[name], arr)


async def test_a_torch_state_dict_survives_a_sqlite_tier(tmp_path: Path) -> None:
    def make() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)).to(
            torch.bfloat16)

    sd = make().state_dict()
    async with Memory.open(path=str(tmp_path / "sd.db")) as mem:
        await mem.put("model", sd, tier=Tier.PERSISTENT)
    async with Memory.open(path=str(tmp_path / "sd.db")) as mem:
        out = await mem.get("model")
    assert list(out) == list(sd)
    for name, t in sd.items():
        assert same_tensor(out[name], t)
    make().load_state_dict(out)


@pytest.mark.parametrize("value", [
    object(), {1, 2}, frozenset(), 1 + 2j, range(3), {"a": {1: "int key"}},
    [[[[object()]]]], np.ma.array([1, 2]),
])
def test_msgpack_measure_refuses_unsupported_values(value: Any) -> None:
    with pytest.raises(UnsupportedValueError):
        msgpack_codec.measure(value)


@pytest.mark.parametrize("value", [np.array([1, None], dtype=object),
                                   np.zeros(2, dtype=[("a", "i4")]),
                                   "lone \ud800 surrogate", {"key \udfff": 1}])
def test_msgpack_measure_refuses_what_encode_refuses(value: Any) -> None:
    with pytest.raises(UnsupportedValueError):
        msgpack_codec.encode(value)  # encode refuses ...
    with pytest.raises(UnsupportedValueError):
        msgpack_codec.measure(value)  # ... so the check at put must too


@pytest.mark.parametrize("value", [
    object(), {1, 2}, 1 + 2j, [[[[object()]]]], np.array([1, None], dtype=object),
    "lone \ud800 surrogate",
])
def test_msgpack_encode_refuses_unsupported_values(value: Any) -> None:
    with pytest.raises(UnsupportedValueError):
        msgpack_codec.encode(value)


def test_msgpack_encode_refuses_non_str_dict_keys() -> None:
    with pytest.raises(UnsupportedValueError):
        msgpack_codec.encode({1: "one"})


# -- MsgpackCodec: foreign and corrupt payloads -------------------------------------------------


_NOT_PLAIN = object()


def plain_msgpack(body: bytes) -> Any:
    """The reference reading of ``body``: plain msgpack (no extension types), or _NOT_PLAIN
    when it is not that. What it reads, the codec must read alike."""
    try:
        value = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception:
        return _NOT_PLAIN

    def plain(v: Any) -> bool:
        if isinstance(v, msgpack.ExtType):
            return False
        if isinstance(v, list):
            return all(plain(x) for x in v)
        if isinstance(v, dict):
            return all(plain(x) for x in v.values())
        return True

    return value if plain(value) else _NOT_PLAIN


def check_decode(data: bytes) -> None:
    """``data`` decodes to what the reference reads, or raises DecodeError (and nothing
    else) where the reference reads nothing plain; a foreign tag is always refused."""
    expected = plain_msgpack(data[1:]) if data[:1] == b"\x01" else _NOT_PLAIN
    try:
        out = msgpack_codec.decode(data)
    except DecodeError:
        assert expected is _NOT_PLAIN, f"decode refused plain msgpack {data!r}"
        return
    assert data[:1] == b"\x01", f"decode accepted a payload without the msgpack tag: {data!r}"
    if expected is not _NOT_PLAIN:
        assert msgpack.packb(out, use_bin_type=True) == msgpack.packb(expected,
                                                                     use_bin_type=True)


@given(st.binary(max_size=200))
@example(b"\x01\x93\x01\xa1a\xc3")  # [1, "a", True]
def test_msgpack_decode_of_random_bytes_raises_only_decode_error(data: bytes) -> None:
    check_decode(data)
    # and a valid payload still round-trips (a decoder refusing everything fails here)
    assert msgpack_codec.decode(msgpack_codec.encode(data)) == data


@given(st.binary(max_size=200))
@example(b"\x82\xa1k\x01\xa1l\x90")  # {"k": 1, "l": []}
def test_msgpack_decode_of_random_msgpack_tagged_bytes_raises_only_decode_error(
        data: bytes) -> None:
    check_decode(b"\x01" + data)


ext_headers = st.tuples(
    st.sampled_from(["numpy", "npscalar", "torch", "cupy", "nope", ""]),
    st.one_of(st.sampled_from(["<f4", "|O", "O,i4", "bfloat16", "float8_e5m2", "load",
                               "Tensor", "<M8[s]", "|V3", "complex32", "object"]), st.text()),
    st.lists(st.integers(-3, 2**40), max_size=4),
)


@given(ext_headers, st.binary(max_size=64))
def test_msgpack_decode_of_crafted_array_extensions_raises_only_decode_error(
        header: tuple[str, str, list[int]], raw: bytes) -> None:
    h = msgpack.packb(list(header))
    payload = b"\x01" + msgpack.packb(msgpack.ExtType(1, struct.pack("<I", len(h)) + h + raw))
    try:
        out = msgpack_codec.decode(payload)
    except DecodeError:
        return
    assert isinstance(out, (np.ndarray, np.generic, torch.Tensor))
    assert not (isinstance(out, np.ndarray) and out.dtype.hasobject)


@given(st.integers(0, 127), st.binary(max_size=40))
@example(2, b"\x92\x01\xa1a")  # the tuple extension over [1, "a"]
@example(3, b"-0x1f")  # the big-int extension
def test_msgpack_decode_of_crafted_extensions_raises_only_decode_error(
        code: int, data: bytes) -> None:
    try:
        out = msgpack_codec.decode(b"\x01" + msgpack.packb(msgpack.ExtType(code, data)))
    except DecodeError:
        # what must be read is read: a tuple over plain msgpack, a big int in hex
        assert not (code == 2 and isinstance(plain_msgpack(data), list)), data
        assert not (code == 3 and data == b"-0x1f")
        return
    assert code in (1, 2, 3), f"unknown extension {code} was decoded to {out!r}"
    if code == 2 and isinstance(plain_msgpack(data), list):
        assert out == tuple(plain_msgpack(data))


def test_msgpack_refuses_payloads_of_other_codecs() -> None:
    for payload in (JsonCodec().encode([1]), SignedPickleCodec(KEY).encode([1]),
                    pickle.dumps([1]), b""):
        with pytest.raises(DecodeError):
            msgpack_codec.decode(payload)


def test_msgpack_refuses_object_dtype_and_unknown_extension() -> None:
    h = msgpack.packb(["numpy", "|O", [1]])
    evil = b"\x01" + msgpack.packb(msgpack.ExtType(1, struct.pack("<I", len(h)) + h + b"\0" * 8))
    with pytest.raises(DecodeError, match="object"):
        msgpack_codec.decode(evil)
    with pytest.raises(DecodeError, match="extension"):
        msgpack_codec.decode(b"\x01" + msgpack.packb(msgpack.ExtType(42, b"")))


def _run_isolated(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter: a crash there must not take the test run down."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, check=False)


def test_msgpack_decode_of_deeply_nested_tuple_extensions_does_not_crash() -> None:
    proc = _run_isolated("""
        import msgpack
        from sophia_memory import DecodeError, MsgpackCodec
        p = msgpack.packb([])
        for _ in range(5000):
            p = msgpack.packb(msgpack.ExtType(2, p))
        try:
            MsgpackCodec().decode(b"\\x01" + p)
            print("DECODED")
        except DecodeError:
            print("DECODE_ERROR")
    """)
    assert proc.returncode == 0, f"decoder crashed: rc={proc.returncode} {proc.stderr[-500:]}"
    assert proc.stdout.strip() == "DECODE_ERROR"


def test_msgpack_value_accepted_by_measure_decodes_without_crashing() -> None:
    proc = _run_isolated("""
        from sophia_memory import MsgpackCodec, UnsupportedValueError
        c = MsgpackCodec()
        v = ()
        for _ in range(250):
            v = (v,)
        try:
            c.measure(v)
        except UnsupportedValueError:
            print("REFUSED")
        else:
            print("OK" if c.decode(c.encode(v)) == v else "DIFFERENT")
    """)
    assert proc.returncode == 0, f"decoder crashed: rc={proc.returncode} {proc.stderr[-500:]}"
    assert proc.stdout.strip() in ("OK", "REFUSED")


# -- JsonCodec --------------------------------------------------------------------------------

json_codec = JsonCodec()
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), big_ints,
              st.floats(allow_nan=False, allow_infinity=False), st.text()),
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=25,
)


@given(json_values)
def test_json_roundtrips_json_values(value: Any) -> None:
    assert json_codec.measure(value) > 0
    assert same(roundtrip(json_codec, value), value)


def test_json_payload_is_plain_utf8_json_after_the_tag() -> None:
    import json

    data = json_codec.encode({"é": [1, 2.5, None, True]})
    assert data[:1] == b"\x02"
    assert json.loads(data[1:].decode("utf-8")) == {"é": [1, 2.5, None, True]}


def test_json_tuples_come_back_as_lists() -> None:
    assert roundtrip(json_codec, (1, (2, 3))) == [1, [2, 3]]


@pytest.mark.parametrize("value", [
    b"bytes", {"a": b"x"}, np.zeros(3), np.float32(1.0), torch.zeros(2), float("nan"),
    float("inf"), [1, float("-inf")], {1: "int key"}, object(), {1, 2},
])
def test_json_refuses_what_json_cannot_hold(value: Any) -> None:
    with pytest.raises(UnsupportedValueError):
        json_codec.encode(value)


def test_json_refuses_lone_surrogates_with_a_typed_error() -> None:
    with pytest.raises(UnsupportedValueError):
        json_codec.encode("x\ud800")


@given(st.binary(max_size=200))
@example(b'{"a": [1, 2.5, null, "x"]}')
def test_json_decode_of_random_bytes_raises_only_decode_error(data: bytes) -> None:
    try:
        expected = json.loads(data)
    except (ValueError, RecursionError):
        expected = _NOT_PLAIN
    try:
        out = json_codec.decode(b"\x02" + data)
    except DecodeError:
        assert expected is _NOT_PLAIN, f"decode refused valid JSON {data!r}"
    else:
        assert expected is not _NOT_PLAIN
        assert json.dumps(out) == json.dumps(expected)
    with pytest.raises(DecodeError):
        json_codec.decode(b"\x01" + data)


def test_json_decode_of_deeply_nested_payload_raises_decode_error() -> None:
    with pytest.raises(DecodeError):
        json_codec.decode(b"\x02" + b"[" * 100_000 + b"]" * 100_000)


# -- SignedPickleCodec ------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    x: int
    y: float


pickle_scalars = st.one_of(
    msgpack_scalars.filter(lambda v: not (isinstance(v, float) and math.isnan(v))),
    st.complex_numbers(allow_nan=False),
    st.decimals(allow_nan=False),
    st.fractions(),
    st.datetimes(),
    st.dates(),
    st.builds(Point, st.integers(), st.floats(allow_nan=False)),
)
pickle_values = st.recursive(
    pickle_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.lists(inner, max_size=4).map(tuple),
        st.frozensets(st.integers() | st.text(), max_size=4),
        st.sets(st.integers() | st.text(), max_size=4),
        st.dictionaries(st.integers() | st.text() | st.tuples(st.integers()), inner,
                        max_size=4),
    ),
    max_leaves=20,
)


@given(pickle_values)
def test_signed_pickle_roundtrips_picklable_objects(value: Any) -> None:
    codec = SignedPickleCodec(KEY)
    out = roundtrip(codec, value)
    assert out == value
    assert type(out) is type(value)


def test_signed_pickle_roundtrips_types_the_default_codec_refuses() -> None:
    codec = SignedPickleCodec("a str key, 16+ bytes long")
    value = {"set": {1, 2}, 3: Point(1, 2.0), "when": datetime.datetime(2024, 1, 2),
             "d": decimal.Decimal("1.10"), "f": fractions.Fraction(1, 3), "c": 1 + 2j}
    assert roundtrip(codec, value) == value


@given(pickle_values, st.data())
def test_signed_pickle_refuses_any_altered_byte(value: Any, data: st.DataObject) -> None:
    codec = SignedPickleCodec(KEY)
    payload = bytearray(codec.encode(value))
    pos = data.draw(st.integers(0, len(payload) - 1), label="position")
    payload[pos] ^= data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(SignatureError):
        codec.decode(bytes(payload))


@given(pickle_values, st.data())
def test_signed_pickle_refuses_truncated_or_extended_payloads(value: Any,
                                                              data: st.DataObject) -> None:
    codec = SignedPickleCodec(KEY)
    payload = codec.encode(value)
    cut = data.draw(st.integers(0, len(payload) - 1), label="cut")
    with pytest.raises(SignatureError):
        codec.decode(payload[:cut])
    with pytest.raises(SignatureError):
        codec.decode(payload + data.draw(st.binary(min_size=1, max_size=8), label="tail"))


def test_signed_pickle_refuses_payloads_signed_with_another_key() -> None:
    payload = SignedPickleCodec(OTHER_KEY).encode({"a": 1})
    with pytest.raises(SignatureError):
        SignedPickleCodec(KEY).decode(payload)


class _Exploit:
    """Unpickling this runs a shell command that creates the file it names."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_the_exploit_really_works_when_unpickled_unchecked(tmp_path: Path) -> None:
    """Guard for the tests below: the payload does run code when given to plain pickle."""
    marker = tmp_path / "pwned-control"
    pickle.loads(pickle.dumps(_Exploit(marker)))  # the point of this control
    assert marker.exists()


def test_signed_pickle_never_unpickles_unsigned_or_forged_payloads(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    body = pickle.dumps(_Exploit(marker))
    codec = SignedPickleCodec(KEY)
    import hashlib
    import hmac

    forged = [
        body,                                                             # raw pickle
        b"\x03" + body,                                                   # tag, no MAC
        b"\x03" + b"\0" * 32 + body,                                      # zero MAC
        b"\x03" + hmac.new(OTHER_KEY, body, hashlib.sha256).digest() + body,  # wrong key
        codec.encode([1])[:33] + body,                                   # MAC of another body
    ]
    for payload in forged:
        with pytest.raises(SignatureError):
            codec.decode(payload)
    with pytest.raises(DecodeError):
        MsgpackCodec().decode(body)
    with pytest.raises(DecodeError):
        JsonCodec().decode(body)
    assert not marker.exists()


def test_signed_pickle_refuses_payloads_of_other_codecs() -> None:
    codec = SignedPickleCodec(KEY)
    for payload in (MsgpackCodec().encode({"a": 1}), JsonCodec().encode({"a": 1}), b"",
                    b"\x03"):
        with pytest.raises(SignatureError):
            codec.decode(payload)


@pytest.mark.parametrize("key", [b"", b"x" * 15, "y" * 15, "é" * 7])
def test_signed_pickle_needs_a_key_of_16_bytes(key: bytes | str) -> None:
    with pytest.raises(ConfigError):
        SignedPickleCodec(key)


def test_signed_pickle_key_length_counts_bytes() -> None:
    as_bytes = SignedPickleCodec(b"x" * 16)
    as_text = SignedPickleCodec("é" * 8)  # 8 characters, 16 bytes in UTF-8: accepted
    for codec in (as_bytes, as_text):
        assert codec.decode(codec.encode({"v": 1})) == {"v": 1}
    # a str key is its UTF-8 bytes: the same key given either way signs alike
    assert SignedPickleCodec("é" * 8).decode(SignedPickleCodec(("é" * 8).encode()).encode(1)) == 1
    with pytest.raises(SignatureError):
        as_text.decode(as_bytes.encode({"v": 1}))


def test_pickle_codec_is_opt_in_and_needs_a_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        codec_from_name("pickle")
    with pytest.raises(ConfigError):
        Memory.open(path=str(tmp_path / "p.db"), codec="pickle")
    with pytest.raises(ConfigError):
        Memory.open(path=str(tmp_path / "p.db"), codec="pickle", signing_key="too short")
    assert isinstance(codec_from_name("msgpack"), MsgpackCodec)
    with pytest.raises(ConfigError):
        codec_from_name("marshal")
