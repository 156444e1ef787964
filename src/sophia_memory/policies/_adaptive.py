"""The adaptive policy: follow whichever of several policies has been hitting most lately.

No single policy is near the best on every workload: LRU wins where recency decides (a trace
like ``lirs-sprite``), S3-FIFO where most keys are read once (``cloudphysics-io``), frequency
admission where a loop is larger than the cache (``lirs-multi1`` at 1 %). This policy runs
the candidates side by side on the store's own requests, each as a *shadow* cache that holds
keys and sizes only, and evicts as the one that is ahead does (the experts of ACME, Ari et
al., 2002; LeCaR and CACHEUS weigh such experts too, but evict by a random draw between them).

Following a new leader has a price: keys it holds and the store evicted earlier are misses
until read again ("holes"). So the lead must exceed the expected price before the store
switches: each check compares the leader's recent hits with the best shadow's, against half
the holes the switch would open, weighted by how likely a held key is to be read in that
time. ``benchmarks/hit_ratio.py`` measures it beside the other policies; it is the default.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection

from ._base import BufferedReads, EvictionPolicy
from ._classic import LRUPolicy, S3FIFOPolicy
from ._sketch import FrequencySketch

__all__ = ["AdaptivePolicy", "S3FIFOAdmittingPolicy"]

#: Recent hits are counted with a decay of ``1 - 1 / (WINDOW * capacity)`` a request.
WINDOW = 4
#: The leader is reconsidered every ``CHECK * capacity`` requests.
CHECK = 0.25
#: A switch must gain this many times the holes it opens (weighted by the read rate).
SWITCH_COST = 0.5
#: Keys the admitting shadow's sketch is sized for when the store is bounded by bytes alone.
_BYTES_SKETCH = 16384
#: Items the window is sized for when the store is bounded by bytes alone, until it holds more.
_MIN_CAPACITY = 16


class S3FIFOAdmittingPolicy(S3FIFOPolicy):
    """S3-FIFO whose small queue may also pass a key to main by frequency: a key leaving the
    small queue unread (bound for the ghost) moves to main instead when a count-min sketch of
    all requests (:class:`FrequencySketch`, four times the capacity, so it remembers a loop
    longer than the cache) estimates it more frequent than main's oldest key (TinyLFU
    admission, Einziger et al.). Reads update the sketch at once: it is a shadow of
    :class:`AdaptivePolicy`, which buffers the store's reads itself."""

    def __init__(self, small_ratio: float = 0.1, move_threshold: int = 2,
                 sketch_ratio: int = 4) -> None:
        super().__init__(small_ratio, move_threshold)
        self.sketch = FrequencySketch(_BYTES_SKETCH)
        self._sketch_ratio = sketch_ratio
        self.access = self._count  # type: ignore[method-assign]
        self.update = self._count  # type: ignore[method-assign]

    def bind(self, max_items: int | None, max_bytes: int | None,
             sizeof: Callable[[str], int]) -> None:
        super().bind(max_items, max_bytes, sizeof)
        if max_items is not None:
            self.sketch.resize(max_items * self._sketch_ratio)
        if self._weigh is not None:
            self.update = self._reweigh  # type: ignore[method-assign]

    def _count(self, key: str) -> None:
        count = self._freq.get(key)
        if count is not None and count < 3:
            self._freq[key] = count + 1
        self.sketch.increment(key)

    def _reweigh(self, key: str) -> None:
        super()._reweigh(key)
        self._drain()

    def _drain(self) -> None:
        reads = self._reads
        while reads:
            self._count(reads.popleft())

    def insert(self, key: str) -> None:
        self.sketch.increment(key)
        super().insert(key)

    def _passes(self, key: str) -> bool:
        oldest = next(iter(self._main), None)
        return oldest is not None and self.sketch.estimate(key) > self.sketch.estimate(oldest)


class _Shadow:
    """A cache of keys and sizes run by one policy under the store's bounds: what that policy
    would hold had it decided every eviction.

    Bounded by items alone, it *counts*: every size is 1, and where the policy keeps a view of
    exactly the keys it holds (:meth:`EvictionPolicy.held_keys`), that view is :attr:`held`
    and :attr:`sizes` stays empty (no second copy of the keys). Otherwise :attr:`held` is
    :attr:`sizes`."""

    __slots__ = ("access", "bytes", "counting", "evicted", "held", "insert", "max_bytes",
                 "max_items", "policy", "remove", "score", "sizes", "victim")

    def __init__(self, policy: EvictionPolicy, max_items: int | None,
                 max_bytes: int | None) -> None:
        self.policy = policy
        self.max_items, self.max_bytes = max_items, max_bytes
        self.sizes: dict[str, int] = {}
        self.bytes = 0
        self.score = 0.0  # recent hits, decayed
        self.evicted: list[str] = []
        policy.bind(max_items, max_bytes, self.sizes.__getitem__)
        # Bound after bind, which may choose them.
        self.access, self.insert = policy.access, policy.insert
        self.remove, self.victim = policy.remove, policy.victim
        view = policy.held_keys() if max_items is not None and max_bytes is None else None
        #: The keys held, for ``in``, ``len`` and iteration.
        self.held: Collection[str] = self.sizes if view is None else view
        self.counting = view is not None

    def request(self, key: str, size: int) -> bool:
        """One read or write of ``key`` (``size`` bytes): True if this shadow held it. Keys
        it gives up to make room are appended to :attr:`evicted`."""
        if self.counting:
            if key in self.held:
                self.access(key)
                return True
            return self.miss(key, size, None)
        old = self.sizes.get(key)
        if old == size:
            self.access(key)
            return True
        return self.miss(key, size, old)

    def miss(self, key: str, size: int, old: int | None) -> bool:
        """:meth:`request` of a key not held, or held with another size (``old``): insert
        it, making room first."""
        if self.counting:  # the policy's own view shrinks and grows with remove and insert
            held, max_items = self.held, self.max_items
            assert max_items is not None
            while held and len(held) >= max_items:
                out = self.victim()
                self.remove(out)
                self.evicted.append(out)
            self.insert(key)
            return False
        sizes = self.sizes
        if old is not None:
            del sizes[key]
            self.bytes -= old
            self.remove(key)
        max_items, max_bytes = self.max_items, self.max_bytes
        while sizes and ((max_items is not None and len(sizes) >= max_items)
                         or (max_bytes is not None and self.bytes + size > max_bytes)):
            out = self.victim()
            self.bytes -= sizes.pop(out)
            self.remove(out)
            self.evicted.append(out)
        sizes[key] = size
        self.bytes += size
        self.insert(key)
        return old is not None


def _expert_name(policy: EvictionPolicy) -> str:
    if isinstance(policy, S3FIFOPolicy):
        kind = "s3fifo+admission" if isinstance(policy, S3FIFOAdmittingPolicy) else "s3fifo"
        return f"{kind} (small {policy.small_ratio:.0%})"
    if isinstance(policy, LRUPolicy):
        return "lru"
    return type(policy).__name__


def _experts() -> list[EvictionPolicy]:
    return [LRUPolicy(), S3FIFOPolicy(small_ratio=0.05), S3FIFOPolicy(),
            S3FIFOAdmittingPolicy()]


class AdaptivePolicy(BufferedReads):
    """Evicts as the best of several policies lately would (see the module's docstring).

    The candidates: LRU, S3-FIFO with a small queue of 5 % and of 10 %, and S3-FIFO with
    frequency admission (:class:`S3FIFOAdmittingPolicy`); the store starts by following the
    5 % one. Each request (a read, an insert, an overwrite) goes to every shadow; a
    shadow's score is its hits, decayed by ``1 - 1 / (4 * capacity)`` a request. When
    another shadow scores higher than the leader (asked at most once every ``capacity / 4``
    requests), it becomes the leader if its lead exceeds
    ``0.5 * holes * min(1, its score / capacity)`` (holes: the keys it holds that the store
    does not). The store evicts first the keys it holds that the leader does not (oldest
    first), else the leader's next victim. Shadows count items when the store has an item
    bound, else bytes (and the capacity above is the number of keys held, at least 16).

    The price, measured (``benchmarks/policy_cost.py``): each shadow's policy keeps its own
    queues of keys, so the policy holds six to seven times LRU's memory (some 850 bytes a
    key), and each request costs a pass through the four shadows (some 11 us against LRU's
    0.8 us on the machine of the README's figures). Reads are only appended to a bounded
    buffer on the hot path (a C-level call, as for S3-FIFO) and run through the shadows when
    the store next writes: a hit costs what an LRU hit costs; an insert pays for the reads
    since the last write.
    """

    #: Reads buffered between writes: long runs of hits are common where this policy pays
    #: (a cache that mostly hits), and a dropped read changes what the shadows learn.
    buffer_size = 4096

    def __init__(self, experts: Callable[[], list[EvictionPolicy]] = _experts,
                 lead: int = 1) -> None:
        self._make_experts = experts
        self._start = lead
        self._held: OrderedDict[str, int] = OrderedDict()  # the store's keys: size, by age
        self._doomed: OrderedDict[str, None] = OrderedDict()  # held, not in the leader
        self._shadows: list[_Shadow] = []
        self.leader = lead
        self.switches = 0
        self._weigh: Callable[[str], int] | None = None
        self._max_items: int | None = None
        self._decay = 1.0
        self._requests = 0
        self._next_check = 0
        self._buffer_reads()

    def bind(self, max_items: int | None, max_bytes: int | None,
             sizeof: Callable[[str], int]) -> None:
        if max_items is None and max_bytes is None:
            return  # nothing is ever evicted: no shadows to run
        self._max_items = max_items
        if max_items is not None:
            max_bytes = None  # the shadows count items (as S3-FIFO sizes its queues)
        else:
            self._weigh = sizeof
            self.update = self._reweigh  # type: ignore[method-assign]
        experts = self._make_experts()
        if not 0 <= self._start < len(experts):
            raise ValueError(f"lead {self._start} is not one of the {len(experts)} experts")
        self._shadows = [_Shadow(policy, max_items, max_bytes) for policy in experts]
        self._retune()

    @property
    def leader_name(self) -> str:
        """The policy the store follows now, by the name configuration gives it, with the
        small queue's share for S3-FIFO (two shadows differ by it): ``lru``,
        ``s3fifo (small 5%)``, ``s3fifo (small 10%)``, ``s3fifo+admission (small 10%)``."""
        if not self._shadows:
            return "none (unbounded)"
        return _expert_name(self._shadows[self.leader].policy)

    def _capacity(self) -> int:
        return self._max_items or max(_MIN_CAPACITY, len(self._held))

    def _retune(self) -> None:
        """The decay and the next check, for the capacity now (it follows the number of
        keys held when the store is bounded by bytes alone)."""
        capacity = self._capacity()
        self._decay = 1.0 - 1.0 / (WINDOW * capacity)
        self._next_check = self._requests + max(1, int(capacity * CHECK))

    # -- the hooks -----------------------------------------------------------------------------

    def _reweigh(self, key: str) -> None:
        assert self._weigh is not None
        if self._reads:
            self._drain()
        if key in self._held:
            self._held[key] = self._weigh(key)
        self._reads.append(key)

    def _drain(self) -> None:
        reads, held, request = self._reads, self._held, self._request
        while reads:
            key = reads.popleft()
            size = held.get(key)
            if size is not None:  # else it left the store since it was read
                request(key, size)

    def insert(self, key: str) -> None:
        if not self._shadows:
            return
        if self._reads:
            self._drain()
        size = 1 if self._weigh is None else self._weigh(key)
        self._held[key] = size
        self._request(key, size)

    def remove(self, key: str) -> None:
        if not self._shadows:
            return
        if self._reads:
            self._drain()
        if self._held.pop(key, None) is not None:
            self._doomed.pop(key, None)

    def victim(self) -> str:
        if self._reads:
            self._drain()
        if self._doomed:
            return next(iter(self._doomed))
        return self._leaders_pick()

    def next_victim(self) -> str | None:
        if self._doomed:
            return next(iter(self._doomed))
        return self._leaders_pick() if self._held else None

    def _leaders_pick(self) -> str:
        pick = self._shadows[self.leader].policy.next_victim() if self._shadows else None
        if pick is not None and pick in self._held:
            return pick
        return next(iter(self._held))

    # -- the shadows ---------------------------------------------------------------------------

    def _request(self, key: str, size: int) -> None:
        decay, leader, held = self._decay, self.leader, self._held
        counting = self._weigh is None  # sizes are all 1: a key held is a hit
        best, top = leader, -1.0
        old = None
        for index, shadow in enumerate(self._shadows):
            if counting:
                hit = key in shadow.held
            else:
                old = shadow.sizes.get(key)
                hit = old == size
            if hit:  # Shadow.request, inlined
                shadow.access(key)
                score = shadow.score = shadow.score * decay + 1.0
            else:
                score = shadow.score = shadow.score * decay + shadow.miss(key, size, old)
                if shadow.evicted:
                    if index == leader:
                        for gone in shadow.evicted:
                            if gone in held:
                                self._doomed[gone] = None
                    shadow.evicted.clear()
            if score > top:
                best, top = index, score
        self._requests += 1
        if best != leader and top > self._shadows[leader].score \
                and self._requests >= self._next_check:
            self._reconsider(best)

    def _reconsider(self, best: int) -> None:
        """Follow shadow ``best`` (which scores above the leader) if its lead pays for the
        holes the switch opens; either way, wait ``CHECK * capacity`` requests to ask again."""
        shadows, held = self._shadows, self._held
        new = shadows[best]
        gain = new.score - shadows[self.leader].score
        keys = new.held
        holes = sum(1 for key in keys if key not in held)
        if gain > SWITCH_COST * holes * min(1.0, new.score / self._capacity()):
            self.leader = best
            self.switches += 1
            self._doomed = OrderedDict.fromkeys(k for k in held if k not in keys)
        self._retune()
