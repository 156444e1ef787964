"""The per-key order (engine/ordering.py) on its own: what writers and readers rely on.

* Stripes are taken in order and released on every way out, a cancelled wait included: a
  write cancelled while it waits for its second stripe gives the first one back, with its
  generation and the order's counts as they were.
* A write makes its stripes' generations odd while it runs and even after, two steps on; the
  order's ``epoch`` moves on when any write begins and when it ends, and ``active`` counts
  writes in progress: a batch read that saw the same epoch and no active write before and
  after met no write at all.
* ``moved`` (another process's writes) moves the named keys' generations on by two (all of
  them for None) and the epoch by one.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from sophia_memory.engine.ordering import MASK, STRIPES, KeyOrder


def two_keys_in_stripe_order() -> tuple[str, str, int, int]:
    """Two keys whose stripes differ, the first in the lower stripe."""
    first = "key-a"
    s1 = KeyOrder.stripe(first)
    for i in itertools.count():
        other = f"key-{i}"
        s2 = KeyOrder.stripe(other)
        if s2 > s1:
            return first, other, s1, s2
        if s2 < s1:
            return other, first, s2, s1
    raise AssertionError("unreachable")


@pytest.mark.parametrize("how", ["writing", "holding"])
async def test_a_wait_cancelled_at_the_second_stripe_gives_the_first_back(how: str) -> None:
    order = KeyOrder()
    k1, k2, s1, s2 = two_keys_in_stripe_order()
    await order.locks[s2].acquire()  # someone holds the second stripe
    entered = asyncio.Event()

    async def write() -> None:
        async with getattr(order, how)([k2, k1]):  # any key order: stripes sorted
            entered.set()

    task = asyncio.create_task(write())
    for _ in range(3):
        await asyncio.sleep(0)  # let it take the first stripe and wait for the second
    assert order.locks[s1].locked() and not entered.is_set()
    epoch, gens = order.epoch, list(order.gens)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not order.locks[s1].locked()  # given back
    assert order.locks[s2].locked()  # still the other holder's
    assert (order.epoch, order.active, order.gens) == (epoch, 0, gens)
    assert order.stats()["locked"] == 1
    order.locks[s2].release()
    async with getattr(order, how)([k1, k2]):  # both free again: a later write proceeds
        assert order.locks[s1].locked() and order.locks[s2].locked()
    assert order.stats()["locked"] == 0


async def test_a_cancelled_first_wait_holds_nothing() -> None:
    order = KeyOrder()
    k1, k2, s1, s2 = two_keys_in_stripe_order()
    await order.locks[s1].acquire()
    task = asyncio.create_task(order.writing([k1, k2]).__aenter__())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not order.locks[s2].locked() and order.active == 0
    order.locks[s1].release()
    assert order.stats()["locked"] == 0


async def test_a_write_makes_its_generations_odd_then_even_two_steps_on() -> None:
    order = KeyOrder()
    k1, k2, s1, s2 = two_keys_in_stripe_order()
    other = next(s for s in range(STRIPES) if s not in (s1, s2))
    epoch = order.epoch
    async with order.writing([k1, k2, k1]):
        assert order.gens[s1] == order.gens[s2] == 1  # odd while the write runs
        assert order.gen(k1) == 1
        assert order.active == 1
        assert order.epoch == epoch + 1  # moved on when it began
    assert order.gens[s1] == order.gens[s2] == 2  # even again, two steps on
    assert order.gens[other] == 0
    assert order.active == 0
    assert order.epoch == epoch + 2  # and when it ended


async def test_holding_marks_no_write() -> None:
    order = KeyOrder()
    s = KeyOrder.stripe("k")
    epoch = order.epoch
    async with order.holding(["k"]):
        assert order.locks[s].locked()
        assert (order.gens[s], order.active, order.epoch) == (0, 0, epoch)
    assert not order.locks[s].locked()


async def test_one_key_and_many_keys_take_the_same_stripes() -> None:
    order = KeyOrder()
    for keys in (["a"], {"a": 1}, ("a",), ["a", "a"]):
        async with order.writing(keys):
            assert [i for i, lock in enumerate(order.locks) if lock.locked()] == \
                [KeyOrder.stripe("a")]


def test_moved_moves_the_named_generations_and_the_epoch() -> None:
    order = KeyOrder()
    s = KeyOrder.stripe("k")
    order.moved(["k"])
    assert order.gens[s] == 2 and order.epoch == 1
    assert sum(order.gens) == 2  # no other stripe moved
    order.moved([])
    assert order.epoch == 2 and sum(order.gens) == 2
    order.moved(None)  # any key may have changed: every stripe, parity kept
    assert all(g == (4 if i == s else 2) for i, g in enumerate(order.gens))
    assert order.epoch == 3
    assert len(order.gens) == STRIPES == MASK + 1



def three_keys_in_stripe_order() -> list[tuple[str, int]]:
    """Three keys on three different stripes, lowest stripe first."""
    found: dict[int, str] = {}
    for i in itertools.count():
        key = f"three-{i}"
        found.setdefault(KeyOrder.stripe(key), key)
        if len(found) == 3:
            return sorted(((k, s) for s, k in found.items()), key=lambda pair: pair[1])
    raise AssertionError("unreachable")


@pytest.mark.parametrize("how", ["writing", "holding"])
async def test_a_wait_cancelled_at_the_third_stripe_gives_both_back(how: str) -> None:
    order = KeyOrder()
    (k1, s1), (k2, s2), (k3, s3) = three_keys_in_stripe_order()
    await order.locks[s3].acquire()
    task = asyncio.create_task(getattr(order, how)([k3, k2, k1]).__aenter__())
    for _ in range(4):
        await asyncio.sleep(0)
    assert order.locks[s1].locked() and order.locks[s2].locked()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not order.locks[s1].locked() and not order.locks[s2].locked()
    assert order.stats() == {"stripes": STRIPES, "locked": 1}
    order.locks[s3].release()
    assert order.stats() == {"stripes": STRIPES, "locked": 0}


async def test_epoch_and_active_count_every_write() -> None:
    order = KeyOrder()
    async with order.writing(["warm-up"]):
        pass
    assert (order.epoch, order.active) == (2, 0)
    first, second = asyncio.Event(), asyncio.Event()

    async def write(key: str, inside: asyncio.Event, leave: asyncio.Event) -> None:
        async with order.writing([key]):
            inside.set()
            await leave.wait()

    k1, k2, _, _ = two_keys_in_stripe_order()
    leave = asyncio.Event()
    tasks = [asyncio.create_task(write(k1, first, leave)),
             asyncio.create_task(write(k2, second, leave))]
    await first.wait()
    await second.wait()
    assert order.active == 2  # two writes in progress at once
    assert order.epoch == 4  # each one moved it on when it began
    leave.set()
    await asyncio.gather(*tasks)
    assert (order.epoch, order.active) == (6, 0)
