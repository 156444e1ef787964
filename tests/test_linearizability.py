"""The linearizability checker (sophia_memory.testing.linearizability) on hand-written
histories, against a brute-force search on random small ones, and its recorder on a Memory."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sophia_memory import ManualClock, Memory, Tier
from sophia_memory.testing import (
    ABSENT,
    NEVER,
    UNKNOWN,
    HistoryRecorder,
    Operation,
    check_history,
    check_key,
    concurrent_pairs,
)


def put(value: Any, call: float, ret: float, key: str = "k", client: str = "") -> Operation:
    return Operation(key, "put", value, None, call, ret, client)


def get(output: Any, call: float, ret: float, key: str = "k", client: str = "") -> Operation:
    return Operation(key, "get", None, output, call, ret, client)


def delete(output: Any, call: float, ret: float, key: str = "k") -> Operation:
    return Operation(key, "delete", None, output, call, ret)


# -- hand-written histories --------------------------------------------------------------------


def test_empty_and_sequential_histories_are_linearizable() -> None:
    assert check_history([]).ok
    result = check_history([get(ABSENT, 1, 2), put("v1", 3, 4), get("v1", 5, 6),
                            delete(True, 7, 8), get(ABSENT, 9, 10), delete(False, 11, 12)])
    assert result.ok and result.operations == 6 and result.keys_checked == 1
    assert "linearizable: 6 operations" in result.report


def test_stale_read_after_a_completed_put_is_caught() -> None:
    history = [put("v1", 1, 2), put("v2", 3, 4), get("v1", 5, 6)]
    result = check_history(history)
    assert not result.ok and not result
    assert result.key == "k"
    assert set(result.minimal) == set(history)  # nothing can be dropped
    assert "key 'k' is not linearizable" in result.report
    assert "[5, 6]  get('k') -> 'v1'" in result.report.replace("   ", " ")


def test_read_of_a_deleted_value_is_caught() -> None:
    assert not check_key([put("v1", 1, 2), delete(True, 3, 4), get("v1", 5, 6)])
    # while the delete runs, both the old value and nothing are fine, in that order only
    assert check_key([put("v1", 1, 2), delete(True, 3, 8), get("v1", 4, 5), get(ABSENT, 6, 7)])
    assert not check_key([put("v1", 1, 2), delete(True, 3, 10), get(ABSENT, 4, 5),
                          get("v1", 6, 7)])
    assert not check_key([put("v1", 1, 2), delete(True, 3, 8), get("v1", 9, 10)])


def test_overlapping_operations_may_take_effect_in_either_order() -> None:
    # put v2 overlaps put v1; reads see v2 then v1: the order v2, v1 explains both
    ok = [put("v1", 1, 10), put("v2", 2, 9), get("v2", 3, 4), get("v1", 5, 6)]
    assert check_key(ok)
    # ... and then v1 is final: v2 afterwards is a value a completed put superseded
    assert not check_key([*ok, get("v2", 11, 12)])
    # a read overlapping a put may see the old value or the new one
    assert check_key([put("v1", 1, 2), put("v2", 3, 8), get("v1", 4, 5), get("v2", 6, 7)])
    assert check_key([put("v1", 1, 2), put("v2", 3, 8), get("v2", 4, 5), get("v2", 9, 10)])
    # but once it has seen the new value, a later read may not go back
    assert not check_key([put("v1", 1, 2), put("v2", 3, 8), get("v2", 4, 5), get("v1", 6, 7)])


def test_a_value_nobody_wrote_and_a_stored_none() -> None:
    assert not check_key([put("v1", 1, 2), get("v9", 3, 4)])
    assert check_key([put(None, 1, 2), get(None, 3, 4)])
    assert not check_key([put(None, 1, 2), get(ABSENT, 3, 4)])
    assert not check_key([get(None, 1, 2)])  # a stored None is not "absent"


def test_delete_reports_whether_a_value_was_there() -> None:
    assert not check_key([delete(True, 1, 2)])
    assert not check_key([put("v1", 1, 2), delete(False, 3, 4)])
    assert check_key([put("v1", 1, 4), delete(False, 2, 3)])  # the put was not in yet
    assert check_key([delete(UNKNOWN, 1, 2), put("v1", 3, 4), delete(UNKNOWN, 5, 6)])


def test_operations_that_never_returned_may_or_may_not_take_effect() -> None:
    assert check_key([put("v1", 1, 2), put("v2", 3, NEVER), get("v1", 5, 6)])
    assert check_key([put("v1", 1, 2), put("v2", 3, NEVER), get("v2", 5, 6)])
    # once it has been seen, it has happened
    assert not check_key([put("v1", 1, 2), put("v2", 3, NEVER), get("v2", 5, 6),
                          get("v1", 7, 8)])
    assert check_key([put("v1", 1, 2), get(UNKNOWN, 3, NEVER), delete(UNKNOWN, 4, NEVER)])


def test_keys_are_separate_registers_and_the_report_names_the_failing_one() -> None:
    history = [put("a1", 1, 2, "a"), put("b1", 1, 2, "b"), get("a1", 3, 4, "a"),
               put("b2", 3, 4, "b"), get("a1", 5, 6, "a"), get("b1", 7, 8, "b", client="c2")]
    result = check_history(history)
    assert not result.ok and result.key == "b"
    assert len(result.history) == 3
    assert "c2 get('b') -> 'b1'" in result.report


def test_report_reduces_the_history_to_the_operations_that_matter() -> None:
    noise = [get(ABSENT, 0.5, 0.7)] + [get("v1", 2.1 + i, 2.2 + i) for i in range(5)]
    history = [put("v1", 1, 2), *noise, put("v2", 10, 11), get("v1", 12, 13),
               put("v3", 14, 20), get("v3", 15, 16)]
    result = check_history(history)
    assert not result.ok
    assert {op.output for op in result.minimal if op.kind == "get"} == {"v1"}
    assert {op.value for op in result.minimal if op.kind == "put"} == {"v1", "v2"}
    assert len(result.minimal) <= 4 < len(result.history)
    report = result.report
    assert "the key's whole history:" in report
    assert "longest legal order found: put('k', 'v1') -> ok" in report


def test_timelines_show_intervals_clients_and_never() -> None:
    result = check_history([put("v1", 1, 2, client="c0"), put("v2", 3, NEVER, client="c1"),
                            get("v2", 5, 6, client="c2"), get("v1", 7, 8, client="c2")])
    assert not result.ok
    lines = result.report.splitlines()
    assert any("[    3, never] c1 put('k', 'v2') -> ok" in line for line in lines), lines


def test_many_concurrent_operations_check_quickly() -> None:
    # 8 clients, 240 operations on one key, every read overlapping many writes
    history = []
    for i in range(240):
        c = i % 8
        call, ret = i * 10 + c, i * 10 + 75 + c
        if i % 3 == 0:
            history.append(put(f"v{i}", call, ret))
        else:
            prev = (i // 3) * 3  # the latest put called before: in flight or done
            history.append(get(f"v{prev}", call, ret))
    result = check_history(history)
    assert result.ok
    # The search's work, not the machine's speed: with its cache it explores each of the
    # 240 operations' configurations about once (no exponential backtracking).
    assert 240 <= result.explored <= 10 * 240, result.explored


# -- against a brute-force search ---------------------------------------------------------------


def brute_force(ops: list[Operation]) -> bool:
    """Try every order that respects real time."""
    for order in itertools.permutations(range(len(ops))):
        pos = {i: p for p, i in enumerate(order)}
        if any(ops[a].ret < ops[b].call and pos[a] > pos[b]
               for a in range(len(ops)) for b in range(len(ops))):
            continue
        state: Any = ABSENT
        for i in order:
            op = ops[i]
            if op.kind == "put":
                state = op.value
            elif op.kind == "delete":
                if op.output is not UNKNOWN and bool(op.output) != (state is not ABSENT):
                    break
                state = ABSENT
            elif op.output is not UNKNOWN and op.output != state:
                break
        else:
            return True
    return False


@st.composite
def small_histories(draw: st.DrawFn) -> list[Operation]:
    n = draw(st.integers(1, 6))
    ops = []
    for i in range(n):
        call = draw(st.integers(0, 12))
        ret = call + draw(st.integers(1, 8))
        kind = draw(st.sampled_from(["put", "get", "get", "delete"]))
        if kind == "put":
            ops.append(put(f"v{i}", call, ret))
        elif kind == "get":
            ops.append(get(draw(st.sampled_from([ABSENT, *[f"v{j}" for j in range(n)]])),
                           call, ret))
        else:
            ops.append(delete(draw(st.sampled_from([True, False, UNKNOWN])), call, ret))
    return ops


@settings(max_examples=400, deadline=None)
@given(small_histories())
def test_agrees_with_brute_force(ops: list[Operation]) -> None:
    assert check_key(ops) == brute_force(ops), check_history(ops).report


# -- the recorder -------------------------------------------------------------------------------


async def test_recorder_records_intervals_and_splits_batches() -> None:
    mem = Memory.open(tiers={Tier.GPU: None, Tier.SESSION: "memory://", Tier.CORTEX: None,
                             Tier.PERSISTENT: None, Tier.VECTOR: None, Tier.WORKFLOW: None},
                      clock=ManualClock())
    async with mem:
        rec = HistoryRecorder(mem)
        a, b = rec.client("a"), rec.client("b")
        await a.put("x", "x1")
        await asyncio.gather(a.put_many({"x": "x2", "y": "y1"}), b.get_many(["x", "y", "x"]))
        assert await b.get("z") is ABSENT
        assert await a.delete("x") is True
        assert await a.delete_many(["y", "z"]) == 1
        await a.flush()
    h = rec.history
    assert [(op.client, op.kind, op.key, op.via) for op in h] == [
        ("a", "put", "x", "put"), ("a", "put", "x", "put_many"), ("a", "put", "y", "put_many"),
        ("b", "get", "x", "get_many"), ("b", "get", "y", "get_many"), ("b", "get", "z", "get"),
        ("a", "delete", "x", "delete"), ("a", "delete", "y", "delete_many"),
        ("a", "delete", "z", "delete_many")]
    assert all(op.call < op.ret for op in h)
    assert len({op.call for op in h}) == 6  # one tick per call, shared by a batch
    assert h[1].call == h[2].call and h[1].ret == h[2].ret
    assert [op.output for op in h[-2:]] == [UNKNOWN, UNKNOWN]  # only a total came back
    assert rec.check().ok, rec.check().report
    assert concurrent_pairs(h) == rec.concurrent_pairs() >= 0


async def test_recorder_records_a_failed_call_as_never_returning() -> None:
    mem = Memory.open(tiers={Tier.GPU: None, Tier.SESSION: "memory://", Tier.CORTEX: None,
                             Tier.PERSISTENT: None, Tier.VECTOR: None, Tier.WORKFLOW: None},
                      clock=ManualClock())
    async with mem:
        rec = HistoryRecorder(mem)
        c = rec.client("c")
        try:
            await c.put("k", "v", tier=Tier.CORTEX)  # switched off: TierUnavailableError
        except Exception as exc:
            assert type(exc).__name__ == "TierUnavailableError"
        else:
            raise AssertionError("a put to a switched-off tier succeeded")
    (op,) = rec.history
    assert op.ret == NEVER and op.output is UNKNOWN
    assert rec.check().ok


def test_reduction_never_drops_the_writes_a_failure_depends_on() -> None:
    """Dropping the deletes here would leave "put c2.0, then get -> absent": a failure, but
    not the one the history has (found on a draft of the new engine: an acknowledged value
    vanished while a delete ran)."""
    history = [get(ABSENT, 1, 6), delete(False, 2, 8), put("c2.0", 3, 10),
               get(ABSENT, 4, 5), put("c0.1", 7, 12), delete(True, 9, 16),
               get(ABSENT, 11, 13), get("c0.1", 14, 15), get(ABSENT, 17, 18),
               get(ABSENT, 19, 20)]
    result = check_history(history)
    assert not result.ok
    kinds = [(op.kind, op.value, op.output) for op in result.minimal]
    assert ("delete", None, True) in kinds and ("put", "c2.0", None) in kinds
    assert len(result.minimal) == 7
    # a put whose value a remaining read returned, or a delete before a read of absent,
    # is never dropped; dropping a put weakens the deletes that may have removed it
    assert not check_key(result.minimal)
