"""Codec behaviours pinned down by mutation testing (``docs/mutation.md``, codecs section).

mutmut left these behaviours of :mod:`sophia_memory.codecs` unchecked by ``tests/test_codecs.py``:
the size model of ``measure`` (byte-bounded tiers count with it), the nesting limits at their
exact boundaries, the error messages users read, the strict-map-key and tag checks on decode,
the memoryview path for large payloads, decoding in a fresh thread and the exact JSON text.
Every test is deterministic and fast (no hypothesis, no clock).
"""

from __future__ import annotations

import pickle
import re
import threading
from typing import Any

import msgpack
import numpy as np
import pytest
import torch

from sophia_memory import (
    ConfigError,
    DecodeError,
    JsonCodec,
    MsgpackCodec,
    SignatureError,
    SignedPickleCodec,
    UnsupportedValueError,
)
from sophia_memory.codecs import codec_from_name

KEY = b"k" * 32
MSGPACK = MsgpackCodec()
JSON = JsonCodec()


def _nested(levels: int, wrap: Any) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = wrap(value)
    return value


def _tuple_payload(levels: int) -> bytes:
    """A msgpack payload of ``levels`` tuples nested in one another, built by hand (the
    encoder refuses to write more than its limit)."""
    data = msgpack.packb([0])
    for _ in range(levels - 1):
        data = msgpack.packb([msgpack.ExtType(2, data)])
    return b"\x01" + msgpack.packb(msgpack.ExtType(2, data))


def _array_payload(kind: str, dtype: str, shape: list[int], raw: bytes) -> bytes:
    header = msgpack.packb([kind, dtype, shape])
    body = len(header).to_bytes(4, "little") + header + raw
    return b"\x01" + msgpack.packb(msgpack.ExtType(1, body))


def _in_fresh_thread(fn: Any) -> Any:
    """``fn()`` run in a thread of its own (fresh thread-local state), its result or error."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed back to the test's thread
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


# -- the size model of measure -------------------------------------------------------------
# measure is the worst-case MessagePack size: 9 bytes per scalar, 5-byte headers for strings,
# bytes and containers, hex digits plus 9 for big integers, the data plus 64 for arrays.


@pytest.mark.parametrize("value", [2**64 - 1, -(2**63), 1.5, "x" * 65_536, "é" * 32_768,
                                   b"\0" * 65_536, -(2 ** (4 * 65_536))],
                         ids=["uint64", "int64", "float", "ascii", "utf8", "bytes", "bigint"])
def test_measure_is_exact_for_the_widest_encoding_of_each_kind(value: Any) -> None:
    assert MSGPACK.measure(value) == len(MSGPACK.encode(value)) - 1  # less the tag byte


@pytest.mark.parametrize("value", [0, -1, 2**64 - 1, -(2**63), 0.0, True, False, None])
def test_every_scalar_costs_nine_bytes(value: Any) -> None:
    assert MSGPACK.measure(value) == 9
    assert MSGPACK.measure([value]) == 5 + 9
    assert MSGPACK.measure({"k": value}) == 5 + (1 + 5) + 9


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 2**64 - 1 + 2**70, -(2**200)])
def test_integers_beyond_64_bits_cost_their_hex_digits_plus_nine(value: Any) -> None:
    digits = len(format(abs(value), "x"))
    assert MSGPACK.measure(value) == digits + 9
    assert MSGPACK.measure([value]) == 5 + digits + 9


@pytest.mark.parametrize("bits", range(65, 90))
def test_the_big_integer_estimate_follows_every_bit_length(bits: int) -> None:
    value = 2 ** (bits - 1)
    expected = len(format(value, "x")) + 9
    assert MSGPACK.measure(value) == expected and type(MSGPACK.measure(value)) is int
    assert MSGPACK.measure(value) >= len(MSGPACK.encode(value)) - 1


@pytest.mark.parametrize("text", ["", "abc", "x" * 40, "é", "ключ", "🔑" * 3])
def test_strings_cost_their_utf8_length_plus_five_wherever_they_are(text: str) -> None:
    own = len(text.encode()) + 5
    assert MSGPACK.measure(text) == own
    assert MSGPACK.measure([text]) == 5 + own
    assert MSGPACK.measure((text,)) == 5 + own
    assert MSGPACK.measure({text: None}) == 5 + own + 9  # as a key
    assert MSGPACK.measure({"k": text}) == 5 + 6 + own  # as a value
    assert JSON.measure({text: text}) == 5 + 2 * own


def test_a_container_costs_five_bytes_plus_its_parts() -> None:
    parts: list[Any] = ["a", "é", 7, 2**64 - 1, -(2**63), 2**64, 1.5, True, None, b"xy",
                        ["b"], ("c", 1), {"d": "e"}]
    total = sum(MSGPACK.measure(p) for p in parts)
    assert MSGPACK.measure(parts) == 5 + total
    assert MSGPACK.measure(tuple(parts)) == 5 + total
    assert MSGPACK.measure({f"k{i}": p for i, p in enumerate(parts)}) \
        == 5 + total + sum(len(f"k{i}") + 5 for i in range(len(parts)))
    assert MSGPACK.measure([[[]]]) == 15


def test_bytes_cost_their_length_plus_five() -> None:
    assert MSGPACK.measure(b"") == 5 and MSGPACK.measure(b"abc") == 8
    assert MSGPACK.measure([b"abc"]) == 13


@pytest.mark.parametrize("array", [np.zeros(10), np.arange(6, dtype=np.int16).reshape(2, 3),
                                   torch.ones(5, dtype=torch.float16)],
                         ids=["numpy-f8", "numpy-i2", "torch-f2"])
def test_an_array_costs_its_data_plus_a_64_byte_header(array: Any) -> None:
    data = array.numel() * array.element_size() if isinstance(array, torch.Tensor) \
        else array.nbytes
    assert MSGPACK.measure(array) == data + 64
    assert MSGPACK.measure(array) >= len(MSGPACK.encode(array)) - 1


def test_measure_of_a_value_that_json_cannot_hold_is_refused_by_json() -> None:
    with pytest.raises(UnsupportedValueError, match=r"^this codec \(json\) cannot store bytes$"):
        JSON.measure(b"x")
    with pytest.raises(UnsupportedValueError, match=r"^this codec \(json\) cannot store arrays$"):
        JSON.measure(np.zeros(2))
    with pytest.raises(UnsupportedValueError, match="cannot store bytes"):
        JSON.measure({"k": [b"x"]})
    assert JSON.measure({"k": [1, "é"]}) == MSGPACK.measure({"k": [1, "é"]})


# -- nesting limits at their boundaries ------------------------------------------------------


def test_lists_nest_up_to_the_depth_limit_and_no_deeper() -> None:
    deepest = _nested(129, lambda v: [v])
    assert MSGPACK.decode(MSGPACK.encode(deepest)) == deepest
    for wrap in (lambda v: [v], lambda v: {"k": v}):
        with pytest.raises(UnsupportedValueError,
                           match=r"^value is nested deeper than 128 levels$"):
            MSGPACK.measure(_nested(130, wrap))


def test_dicts_nest_up_to_the_depth_limit() -> None:
    deepest = _nested(129, lambda v: {"k": v})
    assert MSGPACK.measure(deepest) == 129 * 11 + 9
    assert MSGPACK.decode(MSGPACK.encode(deepest)) == deepest


# Where measure's fast walk meets something it does not take itself, at depth 1: the general
# walk must go on with the codec and the depth it was given.
_HAND_OVERS = {
    "bytes in a list": lambda deep: [[b"x", deep]],
    "bytes in a dict": lambda deep: [{"a": b"x", "b": deep}],
    "a non-ASCII key": lambda deep: [{"\u00e9": deep}],
    "a tuple in a list": lambda deep: [[(1,), deep]],
    "a big int in a dict": lambda deep: [{"a": 2**70, "b": deep}],
}


@pytest.mark.parametrize("hand_over", list(_HAND_OVERS), ids=list(_HAND_OVERS))
def test_measure_hands_over_with_the_depth_it_reached(hand_over: str) -> None:
    build = _HAND_OVERS[hand_over]
    # a chain of n lists under the container at depth 1 reaches depth n + 1
    assert MSGPACK.measure(build(_nested(127, lambda v: [v]))) > 0  # deepest: 128
    with pytest.raises(UnsupportedValueError, match="nested deeper than 128 levels"):
        MSGPACK.measure(build(_nested(128, lambda v: [v])))  # deepest: 129


@pytest.mark.parametrize("value", [
    {"k": b"xy"}, {"\u00e9": b"xy"}, [b"xy"], {"k": [b"xy"]}, [{"k": b"xy"}], [[b"xy"]],
    {"k": {"\u00e9": b"xy"}}, {"k": np.zeros(2)},
], ids=repr)
def test_measure_hands_over_with_its_codec(value: Any) -> None:
    """msgpack stores bytes and arrays wherever the fast walk hands them over; JSON refuses
    them there."""
    from sophia_memory.codecs import _measure
    assert MSGPACK.measure(value) == _measure(value, True) > 0
    with pytest.raises(UnsupportedValueError, match=r"this codec \(json\) cannot store"):
        JSON.measure(value)


def test_lists_do_not_count_against_the_tuple_limit() -> None:
    value = _nested(40, lambda v: [v])
    assert MSGPACK.decode(MSGPACK.encode(value)) == value


def test_tuples_nest_up_to_32_levels_and_no_deeper() -> None:
    deepest = _nested(32, lambda v: (v,))
    assert MSGPACK.decode(MSGPACK.encode(deepest)) == deepest
    for value in (_nested(33, lambda v: (v,)), _nested(33, lambda v: [(v,)])):
        with pytest.raises(UnsupportedValueError, match=r"^tuples nest deeper than 32 levels$"):
            MSGPACK.encode(value)
    # the tuple count is carried through other containers
    with pytest.raises(UnsupportedValueError, match="tuples nest deeper"):
        MSGPACK.measure(_nested(33, lambda v: ({"k": [v]},)))


def test_decode_reads_32_nested_tuples_and_refuses_33() -> None:
    assert MSGPACK.decode(_tuple_payload(32)) == _nested(32, lambda v: (v,))
    with pytest.raises(DecodeError, match=r"^tuples nest deeper than 32 levels$"):
        MSGPACK.decode(_tuple_payload(33))
    # the count starts again at zero for the next payload
    assert MSGPACK.decode(_tuple_payload(32)) == _nested(32, lambda v: (v,))


# -- a fresh thread has fresh thread-local state ---------------------------------------------


def test_a_fresh_thread_encodes_and_decodes_like_any_other() -> None:
    value = {"b": b"\xff\x00", "t": (1, (2, "x")), "big": 2**70, "a": np.arange(3),
             "deep": _nested(32, lambda v: (v,))}
    here = MSGPACK.encode(value)
    there = _in_fresh_thread(lambda: MSGPACK.encode(value))
    assert there == here
    got = _in_fresh_thread(lambda: MSGPACK.decode(here))
    assert got["b"] == b"\xff\x00" and type(got["b"]) is bytes
    assert got["t"] == (1, (2, "x")) and got["big"] == 2**70
    assert got["deep"] == value["deep"]
    np.testing.assert_array_equal(got["a"], np.arange(3))
    assert _in_fresh_thread(lambda: MSGPACK.decode(_tuple_payload(32))) \
        == _nested(32, lambda v: (v,))


def test_tuples_and_bytes_keep_their_types_through_a_fresh_threads_packer() -> None:
    payload = _in_fresh_thread(lambda: MSGPACK.encode([(1, 2), b"raw", {"d": (3,)}]))
    assert msgpack.unpackb(payload[1:], raw=True)[1] == b"raw"  # a bin, not a str
    assert MSGPACK.decode(payload) == [(1, 2), b"raw", {"d": (3,)}]


# -- decode: foreign formats, keys, big payloads, old payloads ------------------------------


@pytest.mark.parametrize(("payload", "found"), [
    (b"\x02[]", "json"), (b"\x03" + b"\0" * 40, "signed pickle"), (b"\x09abc", "an unknown format"),
    (b"", "an empty payload")])
def test_msgpack_decode_says_what_wrote_a_foreign_payload(payload: bytes, found: str) -> None:
    with pytest.raises(DecodeError, match=f"^payload was written as {re.escape(found)}; "
                                          "this memory reads msgpack$"):
        MSGPACK.decode(payload)


@pytest.mark.parametrize(("payload", "found"), [
    (b"\x01\x90", "msgpack"), (b"\xffabc", "an unknown format"), (b"", "an empty payload")])
def test_json_decode_says_what_wrote_a_foreign_payload(payload: bytes, found: str) -> None:
    with pytest.raises(DecodeError, match=f"^payload was written as {found}; "
                                          "this memory reads json$"):
        JSON.decode(payload)


def test_decode_refuses_maps_with_keys_other_than_strings() -> None:
    with pytest.raises(DecodeError):
        MSGPACK.decode(b"\x01" + msgpack.packb({1: "a"}))
    inside_tuple = msgpack.packb(msgpack.ExtType(2, msgpack.packb([{1: "a"}])))
    with pytest.raises(DecodeError):
        MSGPACK.decode(b"\x01" + inside_tuple)
    assert MSGPACK.decode(b"\x01" + msgpack.packb(msgpack.ExtType(2, msgpack.packb([{"a": 1}])))) \
        == ({"a": 1},)


@pytest.mark.parametrize("size", [16_382, 16_383, 16_384, 16_385, 100_000])
def test_payloads_around_and_above_the_memoryview_threshold_round_trip(size: int) -> None:
    value = b"\x07" * size
    payload = MSGPACK.encode(value)
    assert MSGPACK.decode(payload) == value
    text = "é" * size
    assert MSGPACK.decode(MSGPACK.encode(text)) == text


def test_corrupt_msgpack_payloads_are_named_corrupt() -> None:
    with pytest.raises(DecodeError, match=r"^corrupt msgpack payload: "):
        MSGPACK.decode(b"\x01\xc1")


def test_big_integers_written_in_decimal_before_the_hex_format_still_read() -> None:
    for text in (b"123456789012345678901234567890", b"-99999999999999999999999"):
        payload = b"\x01" + msgpack.packb(msgpack.ExtType(3, text))
        assert MSGPACK.decode(payload) == int(text)
    assert MSGPACK.decode(b"\x01" + msgpack.packb(msgpack.ExtType(3, b"0x10"))) == 16
    assert MSGPACK.decode(b"\x01" + msgpack.packb(msgpack.ExtType(3, b"-0x10"))) == -16


def test_a_numpy_array_payload_naming_a_dtype_numpy_lacks_is_refused() -> None:
    # torch-only dtypes are read through a stand-in numpy width; a numpy array must not be.
    for dtype in ("bfloat16", "complex32"):
        with pytest.raises(DecodeError) as info:
            MSGPACK.decode(_array_payload("numpy", dtype, [2], b"\0" * 8))
        assert "torch" not in str(info.value)
    torch_payload = _array_payload("torch", "bfloat16", [2], b"\0" * 4)
    assert MSGPACK.decode(torch_payload).dtype == torch.bfloat16


def test_array_payloads_with_unreadable_dtypes_say_why() -> None:
    with pytest.raises(DecodeError, match=r"^unknown torch dtype 'no_such_dtype' in payload$"):
        MSGPACK.decode(_array_payload("torch", "no_such_dtype", [1], b"\0" * 4))
    with pytest.raises(DecodeError, match=r"^refusing an object-dtype array payload$"):
        MSGPACK.decode(_array_payload("numpy", "O", [1], b"\0" * 8))


# -- encode: refusals name what went wrong ---------------------------------------------------


def test_unsupported_values_are_refused_naming_their_type_and_the_supported_ones() -> None:
    with pytest.raises(UnsupportedValueError,
                       match=r"^cannot store a value of type builtins\.set: supported are None, "
                             r"bool, int, float, str, bytes, list, tuple, dict with str keys, "
                             r"and NumPy/torch/CuPy arrays$"):
        MSGPACK.encode({1, 2})
    with pytest.raises(UnsupportedValueError,
                       match=r"^dict keys must be str, got builtins\.int$"):
        MSGPACK.measure({1: "a"})
    with pytest.raises(UnsupportedValueError,
                       match=r"^strings must be valid UTF-8 \(no lone surrogates\)$"):
        MSGPACK.measure("a\ud800")
    with pytest.raises(UnsupportedValueError, match="no lone surrogates"):
        JSON.encode({"\udfff": 1})


class _UnderReporting(dict):  # type: ignore[type-arg]
    """A mapping whose ``values()`` leaves out what it hides: measure sees less than is
    stored, but encode packs the real contents."""

    def __init__(self, shown: dict[str, Any], hidden: dict[str, Any]) -> None:
        super().__init__({**shown, **hidden})
        self._shown = shown

    def values(self) -> Any:
        return self._shown.values()

    def __iter__(self) -> Any:
        return iter(self._shown)


def test_encode_refuses_what_measure_was_not_shown() -> None:
    with pytest.raises(UnsupportedValueError,
                       match=r"^cannot store a value of type builtins\.set$"):
        MSGPACK.encode(_UnderReporting({"a": 1}, {"b": {1}}))
    too_deep = _nested(3000, lambda v: [v])  # past the packer's own limit
    with pytest.raises(UnsupportedValueError, match=r"^cannot encode value: "):
        MSGPACK.encode(_UnderReporting({"a": 1}, {"b": too_deep}))


# -- JSON text -------------------------------------------------------------------------------


def test_json_payload_is_compact_utf8_text() -> None:
    assert JSON.encode({"a": [1, 2], "é": "ü"}) == b'\x02{"a":[1,2],"\xc3\xa9":"\xc3\xbc"}'


def test_json_refuses_non_finite_floats_naming_json() -> None:
    for value in (float("nan"), float("inf"), [float("-inf")]):
        with pytest.raises(UnsupportedValueError, match=r"^cannot encode value as JSON: "):
            JSON.encode(value)


def test_corrupt_json_payloads_are_named_corrupt() -> None:
    with pytest.raises(DecodeError, match=r"^corrupt JSON payload: "):
        JSON.decode(b"\x02{")


# -- signed pickle -------------------------------------------------------------------------


def test_signed_pickle_uses_the_highest_protocol() -> None:
    codec = SignedPickleCodec(KEY)
    buffer = pickle.PickleBuffer(b"out-of-band capable")  # pickles with protocol 5 only
    assert bytes(codec.decode(codec.encode(buffer))) == b"out-of-band capable"


def test_signed_pickle_errors_say_why() -> None:
    codec = SignedPickleCodec(KEY)
    with pytest.raises(UnsupportedValueError, match=r"^cannot pickle value: "):
        codec.encode(lambda: None)
    for foreign in (b"", b"\x01\x90", MSGPACK.encode([1])):
        with pytest.raises(SignatureError,
                           match=r"^payload is not a signed pickle; refusing to unpickle it$"):
            codec.decode(foreign)
    forged = bytearray(codec.encode([1, 2]))
    forged[-2] ^= 1
    with pytest.raises(SignatureError,
                       match=r"^signed pickle payload failed its signature check$"):
        codec.decode(bytes(forged))
    with pytest.raises(ConfigError, match=r"^the signed pickle codec needs a signing key of at "
                                          r"least 16 bytes$"):
        SignedPickleCodec(b"short")


# -- codec_from_name -----------------------------------------------------------------------


def test_codec_from_name_builds_each_codec() -> None:
    assert type(codec_from_name("msgpack")) is MsgpackCodec
    assert type(codec_from_name("json")) is JsonCodec
    codec = codec_from_name("pickle", KEY)
    assert type(codec) is SignedPickleCodec
    assert codec.decode(SignedPickleCodec(KEY).encode({"x": 1})) == {"x": 1}


def test_codec_from_name_refusals_say_what_to_do() -> None:
    with pytest.raises(ConfigError, match=r"^codec 'pickle' needs signing_key "
                                          r"\(SOPHIA_MEMORY_SIGNING_KEY\)$"):
        codec_from_name("pickle")
    for name in ("JSON", "Pickle", "yaml"):
        with pytest.raises(ConfigError, match=f"^unknown codec '{name}'; choose msgpack, json "
                                              "or pickle$"):
            codec_from_name(name)
