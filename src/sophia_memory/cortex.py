"""The Cortex result cache (L2): canonical keys for LLM/embedding calls, and an opt-in
semantic lookup that answers a call from the nearest cached prompt.

Keys are ``cortex:<group>:<prompt>`` where ``group`` hashes the call kind, the model and the
parameters (sorted, so dict order never matters) and ``prompt`` hashes the prompt: equal calls
get equal keys in every process and run; any change of model, parameter or prompt changes it.

Semantic lookup needs an embedding function. A call is answered semantically only when a
cached prompt *of the same group* (same kind, model and parameters) has cosine similarity at
or above ``threshold`` (default 0.9), and never for a non-deterministic call (temperature > 0)
unless the caller passes ``allow_nondeterministic=True``. The hit reports the similarity.
The prompt embeddings are stored with the rows (column ``prompt_embedding``) and indexed in
memory when the first semantic lookup needs them; rows written by other processes after that
are found by exact lookup only, until the cache is reopened.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._support import canonical_hash, check_meta, ttl_seconds
from .errors import InvalidArgumentError
from .memory import Memory
from .tiers import Tier
from .vector_index import VectorIndex

__all__ = ["CortexCache", "CortexHit", "cortex_key", "is_deterministic"]

Embedder = Callable[[str], Any]
_PREFIX = "cortex:"


def _group(kind: str, model: str, params: Mapping[str, Any] | None) -> str:
    if not isinstance(model, str) or not model:
        raise InvalidArgumentError("model must be a non-empty str")
    return canonical_hash(kind, model, dict(params or {}))[:24]


def cortex_key(model: str, prompt: Any, params: Mapping[str, Any] | None = None, *,
               kind: str = "complete") -> str:
    """The cache key of one call: stable across processes, runs and parameter order."""
    return f"{_PREFIX}{_group(kind, model, params)}:{canonical_hash(prompt)[:40]}"


def is_deterministic(params: Mapping[str, Any] | None) -> bool:
    """True unless the call samples (``temperature`` > 0)."""
    temperature = (params or {}).get("temperature", 0)
    return temperature is None or float(temperature) == 0.0


def _real(value: object) -> object:
    """A column value that must be a real number, as a float (None stays None); bad ones are
    left as they are for :func:`check_meta` to refuse with the column's name."""
    if isinstance(value, int) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):
            return float(value)
    return value


@dataclass(frozen=True)
class CortexHit:
    """A cached answer and how it was found."""

    key: str
    value: Any
    #: 1.0 for an exact hit; the cosine similarity for a semantic one; None when just computed.
    similarity: float | None
    semantic: bool
    cached: bool
    processing_time_ms: float | None = None
    gpu_processed: bool = False


class CortexCache:
    """LLM/embedding results in ``Tier.CORTEX`` of ``mem`` (or another ``tier``)."""

    def __init__(self, mem: Memory, *, embed: Embedder | None = None, threshold: float = 0.9,
                 ttl: float | None = None, tier: Tier = Tier.CORTEX) -> None:
        if (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                or not 0 < threshold <= 1):
            raise InvalidArgumentError(f"threshold must be in (0, 1], got {threshold!r}")
        ttl_seconds(ttl)  # refused here, not at the first store
        self.mem = mem
        self.embed = embed
        self.threshold = threshold
        self.ttl = ttl
        self.tier = tier
        self._index: VectorIndex | None = None

    async def _embedding(self, text: Any) -> np.ndarray[Any, Any]:
        assert self.embed is not None
        vec = self.embed(text if isinstance(text, str) else canonical_hash(text))
        if inspect.isawaitable(vec):
            vec = await vec
        return np.asarray(vec, dtype=np.float32).reshape(-1)

    async def _semantic_index(self) -> VectorIndex:
        """The index of stored prompt embeddings, built from the table on first use."""
        if self._index is None:
            index = VectorIndex(metric="cosine")
            keys = [k for k in await self.mem.keys(self.tier) if k.startswith(_PREFIX)]
            for key in keys:
                entry = await self.mem.get_entry(key, promote=False)
                blob = entry.meta.get("prompt_embedding") if entry is not None else None
                if isinstance(blob, bytes):
                    index.add(key, np.frombuffer(blob, dtype=np.float32))
            self._index = index
        return self._index

    async def lookup(self, model: str, prompt: Any, params: Mapping[str, Any] | None = None,
                     *, kind: str = "complete", semantic: bool = False,
                     allow_nondeterministic: bool = False) -> CortexHit | None:
        """The cached answer for this call: exact first, then (``semantic=True``) the nearest
        cached prompt of the same model and parameters at or above the threshold."""
        key = cortex_key(model, prompt, params, kind=kind)
        entry = await self.mem.get_entry(key)
        if entry is not None:
            return self._hit(key, entry.value, entry.meta, 1.0, semantic=False)
        if not semantic or self.embed is None:
            return None
        if not is_deterministic(params) and not allow_nondeterministic:
            return None
        index = await self._semantic_index()
        if not len(index):
            return None
        query = await self._embedding(prompt)
        group = f"{_PREFIX}{_group(kind, model, params)}:"
        for near, score in index.search(query, k=4, min_score=self.threshold, prefix=group):
            entry = await self.mem.get_entry(near)
            if entry is None:  # expired or deleted since it was indexed
                index.remove(near)
                continue
            return self._hit(near, entry.value, entry.meta, float(score), semantic=True)
        return None

    @staticmethod
    def _hit(key: str, value: Any, meta: Mapping[str, Any], similarity: float | None, *,
             semantic: bool, cached: bool = True) -> CortexHit:
        return CortexHit(key, value, similarity, semantic, cached,
                         meta.get("processing_time_ms"), bool(meta.get("gpu_processed")))

    async def store(self, model: str, prompt: Any, params: Mapping[str, Any] | None,
                    value: Any, *, kind: str = "complete",
                    processing_time_ms: float | None = None, gpu_processed: bool = False,
                    gpu_memory_used_mb: float | None = None,
                    ttl: float | None = None) -> str:
        """Cache one call's result with the platform's row fields; returns its key."""
        key = cortex_key(model, prompt, params, kind=kind)
        meta, vec = await self._meta(prompt, gpu_processed, processing_time_ms,
                                     gpu_memory_used_mb)
        await self.mem.put(key, value, tier=self.tier, ttl=ttl if ttl is not None else self.ttl,
                           meta=meta)
        self._indexed(key, vec)
        return key

    async def _meta(self, prompt: Any, gpu_processed: bool, processing_time_ms: float | None,
                    gpu_memory_used_mb: float | None,
                    ) -> tuple[dict[str, Any], np.ndarray[Any, Any] | None]:
        # The row's columns keep their types (INTEGER, REAL): checked here, with the names
        # of the arguments, before anything reaches a table.
        meta: dict[str, Any] = {"gpu_processed": gpu_processed,
                                "processing_time_ms": _real(processing_time_ms),
                                "gpu_memory_used_mb": _real(gpu_memory_used_mb)}
        meta = {k: v for k, v in check_meta(meta).items() if v is not None}
        meta["gpu_processed"] = int(meta["gpu_processed"])
        vec = None
        if self.embed is not None:
            vec = await self._embedding(prompt)
            meta["prompt_embedding"] = vec.tobytes()
        return meta, vec

    def _indexed(self, key: str, vec: np.ndarray[Any, Any] | None) -> None:
        if vec is not None and self._index is not None:
            self._index.add(key, vec)

    async def complete(self, model: str, prompt: Any, params: Mapping[str, Any] | None,
                       call: Callable[[], Awaitable[Any]], *, kind: str = "complete",
                       semantic: bool = False, allow_nondeterministic: bool = False,
                       gpu_processed: bool = False, ttl: float | None = None) -> CortexHit:
        """The cached answer, or ``call()``'s, timed and stored. Single-flight: concurrent
        misses of one call run ``call`` once."""
        hit = await self.lookup(model, prompt, params, kind=kind, semantic=semantic,
                                allow_nondeterministic=allow_nondeterministic)
        if hit is not None:
            return hit
        key = cortex_key(model, prompt, params, kind=kind)
        meta, vec = await self._meta(prompt, gpu_processed, None, None)
        took: list[float] = []

        async def load() -> Any:
            t0 = time.perf_counter()
            result = await call()
            took.append((time.perf_counter() - t0) * 1000)
            return result

        value = await self.mem.get_or_load(key, load, tier=self.tier,
                                           ttl=ttl if ttl is not None else self.ttl, meta=meta)
        if not took:  # another caller loaded it meanwhile
            return CortexHit(key, value, 1.0, False, True, None, gpu_processed)
        self._indexed(key, vec)
        return CortexHit(key, value, None, False, False, took[0], gpu_processed)
