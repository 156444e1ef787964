"""The adaptive policy follows the shadow that hits most, pays for a switch only when the lead
covers the holes it opens, evicts first what the leader no longer holds; S3-FIFO with
frequency admission passes a frequent key from small to main. (The generic policy properties,
bounds, evicting only held keys, byte budgets, run for it in tests/test_policies.py, and the
hit-ratio bar on the shared traces in tests/test_policies_traces.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sophia_memory import ManualClock, Memory, Tier
from sophia_memory.policies import (
    AdaptivePolicy,
    BoundedStore,
    LRUPolicy,
    S3FIFOAdmittingPolicy,
    S3FIFOPolicy,
    SievePolicy,
    policy_from_name,
)
from sophia_memory.policies._adaptive import SWITCH_COST, _Shadow
from sophia_memory.tiers import Record

from .test_policies_traces import replay as _replay

REC = Record(None, size=1)


def _twice(n: int, gap: int) -> list[str]:
    """Each key read twice, ``gap`` keys apart: LRU (cache > 2 * gap) hits the second read;
    S3-FIFO has already moved the key from its small queue to the ghost and misses it."""
    out = []
    for i in range(n):
        out += [f"k{i}", f"k{max(0, i - gap)}"]
    return out


def _loop(cap: int, rounds: int) -> list[str]:
    """A loop over twice the capacity: LRU misses every time; the queues that keep part of
    the loop hit it."""
    return [f"l{i}" for _ in range(rounds) for i in range(2 * cap)]


EXPERTS = {"lru": LRUPolicy, "s3fifo (small 5%)": lambda: S3FIFOPolicy(small_ratio=0.05),
           "s3fifo (small 10%)": S3FIFOPolicy,
           "s3fifo+admission (small 10%)": S3FIFOAdmittingPolicy}


@pytest.mark.parametrize(("trace", "cap", "best"), [
    pytest.param(_twice(3000, 5), 12, "lru", id="recency-lru"),
    pytest.param(_loop(20, 60), 20, "s3fifo (small 5%)", id="loop-s3fifo"),
])
def test_it_follows_the_expert_that_hits_most(trace: list[str], cap: int, best: str) -> None:
    alone = {name: _replay(BoundedStore(cap, None, make()), trace)
             for name, make in EXPERTS.items()}
    assert min(alone, key=alone.__getitem__) == best  # the workload's best expert
    store = BoundedStore(cap, None, AdaptivePolicy())
    misses = _replay(store, trace)
    policy = store.policy
    assert isinstance(policy, AdaptivePolicy)
    assert policy.leader_name == best
    assert misses <= alone[best] + 0.01 * len(trace)
    assert misses < min(v for k, v in alone.items() if k != best)


def _bound(cap: int) -> AdaptivePolicy:
    policy = AdaptivePolicy()
    policy.bind(cap, None, lambda key: 1)
    return policy


def _holds(shadow: _Shadow, keys: list[str]) -> None:
    """Make an LRU shadow that counts items hold just ``keys``."""
    assert shadow.counting and isinstance(shadow.policy, LRUPolicy)
    for key in list(shadow.held):
        shadow.policy.remove(key)
    for key in keys:
        shadow.policy.insert(key)
    assert list(shadow.held) == keys


def test_a_switch_must_pay_for_its_holes() -> None:
    policy = _bound(10)
    for i in range(10):
        policy.insert(f"k{i}")  # every shadow and the store hold k0..k9
    lru = policy._shadows[0]
    _holds(lru, [f"h{i}" for i in range(4)])  # four keys the store lacks
    policy._shadows[policy.leader].score = 1.0
    # The cost: SWITCH_COST x 4 holes x min(1, score / capacity of 10); at a score of 1.25
    # the lead (0.25) is exactly that.
    lru.score = 1.25
    assert SWITCH_COST * 4 * min(1.0, lru.score / 10) == pytest.approx(0.25)
    policy._reconsider(0)
    assert policy.leader == 1 and policy.switches == 0
    lru.score = 1.26
    policy._reconsider(0)
    assert policy.leader == 0 and policy.switches == 1
    # The store now gives up first what the new leader does not hold, oldest first.
    assert policy.victim() == "k0"
    assert list(policy._doomed) == [f"k{i}" for i in range(10)]


def test_the_doomed_go_first_then_the_leaders_pick() -> None:
    policy = _bound(3)
    for key in ("a", "b", "c"):
        policy.insert(key)
    assert policy.victim() == policy._shadows[policy.leader].policy.next_victim() == "a"
    policy.remove("a")
    policy.insert("d")  # the leader's shadow evicts its victim too: nothing doomed
    assert not policy._doomed
    policy._doomed["c"] = None
    assert policy.victim() == "c" and policy.next_victim() == "c"
    policy.remove("c")
    assert "c" not in policy._doomed and policy.victim() in {"b", "d"}


def test_reads_are_buffered_until_the_next_write() -> None:
    policy = _bound(4)
    policy.insert("a")
    before = [s.score for s in policy._shadows]
    policy.access("a")
    assert [s.score for s in policy._shadows] == before  # only appended
    assert list(policy._reads) == ["a"]
    policy.insert("b")
    assert not policy._reads
    assert all(s.score > b for s, b in zip(policy._shadows, before, strict=True))


def test_a_read_of_a_key_gone_since_is_not_replayed() -> None:
    policy = _bound(4)
    policy.insert("a")
    policy.access("a")
    requests = policy._requests
    policy._held.pop("a")  # as if removed by a path that does not drain first
    policy._drain()
    assert policy._requests == requests


def test_an_unbounded_store_runs_no_shadows() -> None:
    store = BoundedStore(None, None, AdaptivePolicy())
    for i in range(50):
        store.set(f"k{i}", REC)
    policy = store.policy
    assert isinstance(policy, AdaptivePolicy)
    assert policy._shadows == [] and not policy._held
    assert policy.leader_name == "none (unbounded)"
    assert len(store) == 50


def test_a_store_bounded_by_bytes_alone_weighs_its_keys() -> None:
    store = BoundedStore(None, 100, AdaptivePolicy())
    store.set("a", Record(None, size=30))
    store.set("b", Record(None, size=30))
    policy = store.policy
    assert isinstance(policy, AdaptivePolicy)
    assert dict(policy._held) == {"a": 30, "b": 30}
    store.set("a", Record(None, size=50))  # an overwrite with a new size
    assert policy._held["a"] == 50
    store.set("c", Record(None, size=40))  # 50 + 30 + 40 > 100: one must go
    assert store.bytes <= 100
    assert all(s.bytes <= 100 for s in policy._shadows)
    assert all(s.sizes.get("a") in (None, 50) for s in policy._shadows)


def test_an_item_bound_counts_items_even_with_a_byte_bound() -> None:
    store = BoundedStore(3, 1000, AdaptivePolicy())
    store.set("a", Record(None, size=900))
    policy = store.policy
    assert isinstance(policy, AdaptivePolicy)
    assert policy._held["a"] == 1
    assert all(s.max_bytes is None and s.max_items == 3 for s in policy._shadows)
    assert policy.update == policy._reads.append  # the overwrite stays a C-level call


def test_a_shadow_resizes_a_key_written_again_with_another_size() -> None:
    shadow = _Shadow(LRUPolicy(), None, 10)
    assert shadow.request("a", 4) is False
    assert shadow.request("b", 4) is False
    assert shadow.request("a", 8) is True  # held: a hit, now 8 bytes, b must go
    assert shadow.sizes == {"a": 8} and shadow.bytes == 8 and shadow.evicted == ["b"]


def test_lead_must_name_an_expert() -> None:
    with pytest.raises(ValueError, match="lead 7"):
        AdaptivePolicy(lead=7).bind(4, None, lambda key: 1)
    with pytest.raises(ValueError, match="lead 4"):
        AdaptivePolicy(lead=4).bind(4, None, lambda key: 1)  # four experts: 0 to 3
    first = AdaptivePolicy(lead=0)
    first.bind(4, None, lambda key: 1)
    assert first.leader_name == "lru"
    names = []
    for lead in range(4):
        policy = AdaptivePolicy(lead=lead)
        policy.bind(4, None, lambda key: 1)
        names.append(policy.leader_name)
    assert names == ["lru", "s3fifo (small 5%)", "s3fifo (small 10%)",
                     "s3fifo+admission (small 10%)"]


def test_scores_decay_and_requests_are_counted() -> None:
    """A score is the hits decayed by 1 - 1 / (4 x capacity) a request; every request
    counts, and the leader is asked about again capacity / 4 requests later (at least 1)."""
    policy = _bound(4)
    assert policy._next_check == 1  # max(1, int(4 x 0.25))
    policy.insert("a")  # a miss everywhere: 0
    policy.access("a")  # a hit everywhere, counted at the next write: 1
    policy.insert("b")  # a miss: 1 x decay
    decay = 1 - 1 / 16
    assert [s.score for s in policy._shadows] == [decay] * 4
    assert policy._requests == 3
    wide = _bound(40)
    assert wide._next_check == 10


def test_no_victim_of_an_empty_store_and_the_leaders_otherwise() -> None:
    policy = _bound(3)
    assert policy.next_victim() is None
    assert BoundedStore(3, None, AdaptivePolicy()).admit("x", 1)  # an empty store admits
    for key in ("a", "b"):
        policy.insert(key)
    assert policy.next_victim() == "a" == policy.victim()


def test_a_switch_counts_and_its_price_caps_the_read_rate_at_one() -> None:
    policy = _bound(10)
    for i in range(10):
        policy.insert(f"k{i}")
    lru, leader = policy._shadows[0], policy._shadows[policy.leader]
    _holds(lru, [f"h{i}" for i in range(4)])
    # Scores above the capacity: the read rate counts as 1, so the price is 0.5 x 4 = 2.
    leader.score = 20.0
    lru.score = 22.0
    policy._reconsider(0)
    assert policy.leader == 1
    lru.score = 22.01
    policy._reconsider(0)
    assert policy.leader == 0 and policy.switches == 1
    leader.score, lru.score = 30.0, 0.0  # back: the old leader holds every key, no holes
    policy._reconsider(1)
    assert policy.leader == 1 and policy.switches == 2


ADAPTIVE_OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(0, 15).map(lambda i: f"k{i}"), st.integers(1, 30)),
    st.tuples(st.just("get"), st.integers(0, 15).map(lambda i: f"k{i}"), st.just(0)),
    st.tuples(st.just("delete"), st.integers(0, 15).map(lambda i: f"k{i}"), st.just(0)),
), max_size=200)


@settings(max_examples=150, deadline=None)
@given(ops=ADAPTIVE_OPS, max_items=st.one_of(st.none(), st.integers(1, 8)),
       max_bytes=st.integers(30, 90))
def test_the_shadows_and_the_store_stay_consistent(ops: list[tuple[str, str, int]],
                                                    max_items: int | None,
                                                    max_bytes: int) -> None:
    """After any sequence of puts, reads and deletes: the policy knows exactly the store's
    keys (with their sizes when bytes bound it alone); every shadow holds its bounds and
    weighs its keys; every key the store holds is in the leader's shadow or doomed, and
    only held keys are doomed."""
    store = BoundedStore(max_items, max_bytes, AdaptivePolicy())
    policy = store.policy
    assert isinstance(policy, AdaptivePolicy)
    for op, key, size in ops:
        if op == "put":
            store.set(key, Record(None, size=size))
        elif op == "get":
            store.peek(key)
        else:
            store.pop(key)
        policy._drain()
        held = {k: (r.size if max_items is None else 1) for k, r in store.data.items()}
        assert dict(policy._held) == held
        for shadow in policy._shadows:
            assert shadow.bytes == sum(shadow.sizes.values())
            if max_items is not None:  # counting: the policy's own keys, no copy
                assert shadow.counting and not shadow.sizes
                assert len(shadow.held) <= max_items and shadow.max_bytes is None
            else:
                assert shadow.held is shadow.sizes and shadow.bytes <= max_bytes
        leader = policy._shadows[policy.leader]
        assert set(policy._doomed) <= set(held)
        assert all(k in leader.held or k in policy._doomed for k in held)
        if max_items is None:
            assert all(leader.sizes.get(k, size) == size for k, size in held.items()
                       if k not in policy._doomed)


def test_an_overwrite_that_shrinks_a_key_reweighs_it_everywhere() -> None:
    store = BoundedStore(None, 100, AdaptivePolicy())
    store.set("a", Record(None, size=30))
    store.set("a", Record(None, size=20))  # smaller: replaced in place (the update hook)
    store.set("b", Record(None, size=10))  # a write: the overwrite reaches the shadows
    policy = store.policy
    assert isinstance(policy, AdaptivePolicy)
    assert policy._held["a"] == 20
    assert all(s.sizes["a"] == 20 and s.bytes == 30 for s in policy._shadows)
    # The overwrite was a hit everywhere (1), then b a miss: decay x 1, the capacity being
    # 16 keys (the least, for a store bounded by bytes alone).
    assert [s.score for s in policy._shadows] == [1 - 1 / 64] * 4


def test_of_shadows_tied_ahead_of_the_leader_the_first_leads() -> None:
    policy = _bound(10)
    for i in range(5):
        policy.insert(f"k{i}")  # nothing evicted: every shadow holds what the store holds
    for shadow, score in zip(policy._shadows, (5.0, 1.0, 1.0, 5.0), strict=True):
        shadow.score = score
    policy._next_check = 0
    policy.access("k0")
    policy.insert("k5")  # the read and the insert reach every shadow alike: the tie stays
    assert policy.leader == 0 and policy.switches == 1


def test_a_shadow_hit_marks_the_key_used() -> None:
    shadow = _Shadow(LRUPolicy(), 2, None)
    shadow.request("a", 1)
    shadow.request("b", 1)
    assert shadow.request("a", 1) is True  # a hit: a is now the most recent
    assert shadow.request("c", 1) is False
    assert shadow.evicted == ["b"] and set(shadow.held) == {"a", "c"}


def test_a_counting_shadow_reads_its_policys_keys_where_it_keeps_them() -> None:
    """Bounded by items, a shadow whose policy keeps a view of its keys keeps no copy; one
    whose policy keeps none (SIEVE) counts in its own dict, and both hit and evict alike."""
    # The read of a marks it used: LRU and SIEVE give up b; S3-FIFO moves to main only a
    # key read twice, so a (read once) leaves the small queue.
    for policy, counting, gone in ((LRUPolicy(), True, "b"), (S3FIFOPolicy(), True, "a"),
                                   (SievePolicy(), False, "b")):
        shadow = _Shadow(policy, 2, None)
        assert shadow.counting is counting
        assert (shadow.held is shadow.sizes) is not counting
        assert [shadow.request(k, 1) for k in ("a", "b", "a", "c", "c")] \
            == [False, False, True, False, True]
        assert len(shadow.held) == 2 and "c" in shadow.held and shadow.evicted == [gone]
        assert (not shadow.sizes) is counting
    weighing = _Shadow(LRUPolicy(), 2, 100)  # a byte bound too: sizes are kept
    assert not weighing.counting and weighing.held is weighing.sizes


def test_experts_without_a_view_of_their_keys_count_in_their_own_dicts() -> None:
    """An item-bound adaptive policy whose experts keep no view of their keys (SIEVE, FIFO
    here) runs them as shadows with their own dicts, and stays consistent with the store."""
    store = BoundedStore(3, None, AdaptivePolicy(experts=lambda: [SievePolicy(), LRUPolicy()],
                                                 lead=0))
    policy = store.policy
    assert isinstance(policy, AdaptivePolicy)
    assert [s.counting for s in policy._shadows] == [False, True]
    assert _replay(store, ["a", "b", "a", "c", "d", "a", "e", "b", "a"]) >= 5  # 5 keys, 3 held
    policy._drain()
    assert set(store.data) == set(policy._held) and len(store.data) == 3
    leader = policy._shadows[policy.leader]
    assert all(k in leader.held or k in policy._doomed for k in store.data)
    sieve = policy._shadows[0]
    assert set(sieve.sizes) == set(sieve.policy._ahead) | set(sieve.policy._behind)
    assert all(size == 1 for size in sieve.sizes.values()) and len(sieve.sizes) == 3


def test_a_read_in_a_byte_bound_store_counts_as_a_use_in_each_shadow() -> None:
    """Bounded by bytes, a read of a held key is a hit in the shadows (S3-FIFO counts it, as
    it counts a read of its own), not a new entry."""
    store = BoundedStore(None, 100, AdaptivePolicy())
    store.set("a", Record(None, size=10))
    store.set("b", Record(None, size=10))
    store.peek("a")
    store.set("c", Record(None, size=10))  # drains the read
    policy = store.policy
    assert isinstance(policy, AdaptivePolicy)
    s3fifo = policy._shadows[1].policy
    assert isinstance(s3fifo, S3FIFOPolicy)
    s3fifo._drain()
    assert s3fifo._freq == {"a": 1, "b": 0, "c": 0}
    assert [s.score for s in policy._shadows] == [pytest.approx(policy._decay)] * 4


def test_a_shadow_fills_its_byte_bound_exactly_and_resizes_a_key() -> None:
    shadow = _Shadow(LRUPolicy(), None, 10)
    shadow.request("a", 5)
    shadow.request("b", 5)
    assert shadow.evicted == [] and shadow.bytes == 10  # 10 of 10: nothing evicted
    small = _Shadow(LRUPolicy(), None, 10)
    small.request("a", 3)
    small.request("b", 4)
    assert small.request("a", 6) is True  # 3 -> 6 bytes: 4 + 6 fits exactly
    assert small.sizes == {"b": 4, "a": 6} and small.bytes == 10 and small.evicted == []
    assert small.request("b", 5) is True  # 4 -> 5: 6 + 5 > 10, so a goes
    assert small.sizes == {"b": 5} and small.bytes == 5 and small.evicted == ["a"]


def test_a_shadow_binds_its_policy_to_its_bounds_and_weights() -> None:
    items = _Shadow(S3FIFOPolicy(), 10, None)
    assert items.policy._small_max == 1 and items.policy._main_max == 9
    weighed = _Shadow(S3FIFOPolicy(), None, 100)
    assert weighed.policy._small_max == 10  # 10 % of 100 bytes
    weighed.request("a", 30)
    assert weighed.policy._small_weight == 30
    assert weighed.score == 0.0


def test_the_admitting_s3fifo_passes_a_frequent_key_to_main() -> None:
    policy = S3FIFOAdmittingPolicy(small_ratio=0.2, sketch_ratio=4)
    policy.bind(5, None, lambda key: 1)  # small: 1 key, main: 4
    for key in ("m1", "m2", "m3", "m4"):
        policy.insert(key)  # the first fill: small takes m1, main the rest
    for _ in range(5):
        policy.sketch.increment("hot")
    policy.remove("m1")
    policy.insert("hot")  # small holds "hot", unread there
    assert policy._small == {"hot": 1}
    out = policy.victim()  # hot is more frequent than main's oldest: it moves to main
    assert out != "hot" and "hot" in policy._main and out not in policy._ghost
    policy.remove(out)
    policy.insert("cold")  # seen once: not more frequent than main's oldest
    assert policy.victim() == "cold" and "cold" in policy._ghost


def test_the_admitting_s3fifo_counts_reads_at_once() -> None:
    policy = S3FIFOAdmittingPolicy()
    policy.bind(10, None, lambda key: 1)
    assert policy.sketch.capacity == 40  # four times the capacity
    assert policy._small_max == 1 and policy._main_max == 9
    assert policy.sketch.estimate("a") == 0
    policy.insert("a")
    assert policy.sketch.estimate("a") == 1  # the insert is a sighting
    policy.access("a")
    policy.update("a")  # an overwrite counts as a read
    assert policy._freq["a"] == 2 and policy.sketch.estimate("a") >= 2
    for _ in range(5):
        policy.access("a")
    assert policy._freq["a"] == 3  # the 2-bit counter stops at 3
    assert S3FIFOAdmittingPolicy(move_threshold=1).move_threshold == 1
    assert S3FIFOAdmittingPolicy(sketch_ratio=2)._sketch_ratio == 2


def test_the_admitting_s3fifo_weighs_keys_when_bytes_bound_it() -> None:
    sizes = {"a": 30, "b": 20}
    policy = S3FIFOAdmittingPolicy()
    policy.bind(None, 100, sizes.__getitem__)
    assert policy.update == policy._reweigh and policy._small_max == 10
    policy.insert("a")
    assert policy._small_weight == 30 or policy._main_weight == 30
    sizes["a"] = 10
    policy.update("a")  # reweighed, and counted as a read
    assert policy._small_weight + policy._main_weight == 10 and policy._freq["a"] == 1
    items = S3FIFOAdmittingPolicy()
    items.bind(10, None, lambda key: 1)
    assert items.update == items._count


def test_adaptive_is_a_policy_by_name() -> None:
    assert isinstance(policy_from_name("adaptive"), AdaptivePolicy)


async def test_stats_say_whom_the_default_policy_follows(tmp_path: Path) -> None:
    """Memory.stats names the shadow the SESSION tier follows and counts the switches; a
    recency workload moves it from S3-FIFO to LRU."""
    async with Memory.open(path=str(tmp_path / "m.db"), clock=ManualClock(),
                           tiers={Tier.GPU: None, Tier.SESSION: "memory://?max_items=12"},
                           cache_only={Tier.SESSION}) as mem:
        stats = mem.stats()["tiers"]["SESSION"]["backend_stats"]
        assert stats["policy"] == "adaptive"
        assert stats["following"] == "s3fifo (small 5%)" and stats["policy_switches"] == 0
        for key in _twice(3000, 5):
            if await mem.get(key) is None:
                await mem.put(key, 1, tier=Tier.SESSION)
        stats = mem.stats()["tiers"]["SESSION"]["backend_stats"]
        assert stats["following"] == "lru" and stats["policy_switches"] >= 1
    async with Memory.open(path=str(tmp_path / "n.db"),
                           tiers={Tier.GPU: None, Tier.SESSION: "memory://?policy=lru"}) as mem:
        assert "following" not in mem.stats()["tiers"]["SESSION"]["backend_stats"]
