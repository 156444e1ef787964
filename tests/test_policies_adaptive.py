"""The adaptive policy follows the shadow that hits most, pays for a switch only when the lead
covers the holes it opens, evicts first what the leader no longer holds; S3-FIFO with
frequency admission passes a frequent key from small to main. (The generic policy properties,
bounds, evicting only held keys, byte budgets, run for it in tests/test_policies.py, and the
hit-ratio bar on the shared traces in tests/test_policies_traces.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from sophia_memory import ManualClock, Memory, Tier
from sophia_memory.policies import (
    AdaptivePolicy,
    BoundedStore,
    LRUPolicy,
    S3FIFOAdmittingPolicy,
    S3FIFOPolicy,
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


EXPERTS = {"LRUPolicy": LRUPolicy, "S3FIFOPolicy": lambda: S3FIFOPolicy(small_ratio=0.05),
           "S3FIFOPolicy-10": S3FIFOPolicy, "S3FIFOAdmittingPolicy": S3FIFOAdmittingPolicy}


@pytest.mark.parametrize(("trace", "cap", "best"), [
    pytest.param(_twice(3000, 5), 12, "LRUPolicy", id="recency-lru"),
    pytest.param(_loop(20, 60), 20, "S3FIFOPolicy", id="loop-s3fifo"),
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


def test_a_switch_must_pay_for_its_holes() -> None:
    policy = _bound(10)
    for i in range(10):
        policy.insert(f"k{i}")  # every shadow and the store hold k0..k9
    lru = policy._shadows[0]
    lru.sizes.clear()
    lru.sizes.update({f"h{i}": 1 for i in range(4)})  # four keys the store lacks
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
    policy.insert("a")
    before = policy.sketch.estimate("a")
    policy.access("a")
    policy.access("a")
    assert policy._freq["a"] == 2 and policy.sketch.estimate("a") > before


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
        assert stats["following"] == "S3FIFOPolicy" and stats["policy_switches"] == 0
        for key in _twice(3000, 5):
            if await mem.get(key) is None:
                await mem.put(key, 1, tier=Tier.SESSION)
        stats = mem.stats()["tiers"]["SESSION"]["backend_stats"]
        assert stats["following"] == "LRUPolicy" and stats["policy_switches"] >= 1
    async with Memory.open(path=str(tmp_path / "n.db"),
                           tiers={Tier.GPU: None, Tier.SESSION: "memory://?policy=lru"}) as mem:
        assert "following" not in mem.stats()["tiers"]["SESSION"]["backend_stats"]
