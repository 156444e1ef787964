"""LangChain in a :class:`~sophia_memory.Memory`: :class:`SophiaLLMCache` and :class:`SophiaStore`.

>>> from langchain_core.globals import set_llm_cache
>>> from sophia_memory.integrations.langchain import SophiaLLMCache
>>> set_llm_cache(SophiaLLMCache.open(ttl=86400))                # doctest: +SKIP

**SophiaLLMCache** is LangChain's ``BaseCache`` (synchronous and async) on ``Tier.CORTEX``
through :class:`~sophia_memory.cortex.CortexCache`: a call's key is the library's canonical
Cortex key of (LangChain's ``llm_string``, the prompt), so equal calls meet in every process
and run, and the rows carry the Cortex table's fields. ``ttl`` expires entries, ``clear()``
empties the cache's namespace. With ``semantic=True`` and an ``embed`` function (a callable
``str -> vector`` or a LangChain ``Embeddings``) a miss is answered by the nearest cached
prompt of the same ``llm_string`` at or above ``threshold`` cosine similarity; the text
embedded is the messages' text, not LangChain's JSON around it. A model whose
``llm_string`` shows a ``temperature`` above 0 samples, and is never answered semantically
unless ``allow_nondeterministic=True``. :meth:`SophiaLLMCache.alookup_hit` tells how a lookup
was answered (exact or semantic, and the similarity).

Cached generations are stored as plain data: ``Generation``, ``GenerationChunk``,
``ChatGeneration`` and ``ChatGenerationChunk`` field by field (messages through
``message_to_dict``), anything else through LangChain's own ``dumpd`` and read back with
``load(allowed_objects="core")``. Nothing is pickled; decoding runs no code.

**SophiaStore** is LangChain's key-value ``BaseStore`` over any tier (default
``Tier.PERSISTENT``), e.g. the byte store of ``CacheBackedEmbeddings``. Values pass through the
memory's codec as they are (bytes, str, numbers, lists, dicts, arrays), or through ``serde``
(anything with ``dumps_typed``/``loads_typed``, such as LangGraph's ``JsonPlusSerializer``)
for other objects.

Both take an open ``Memory`` (async use; synchronous calls then work from other threads) or
are made with ``open(**memory_options)``, which runs a memory of their own on a private loop
thread for synchronous code.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Protocol

from ..cortex import CortexCache, CortexHit
from ..errors import (
    DecodeError,
    InvalidArgumentError,
    MissingDependencyError,
    UnsupportedValueError,
    ValueTooLargeError,
)
from ..memory import Memory
from ..tiers import Tier
from ._bridge import Bridge, ClosesBridge, on_memory_loop, on_memory_loop_iter

try:
    from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
    from langchain_core.load import dumpd, load
    from langchain_core.messages import BaseMessageChunk, message_to_dict, messages_from_dict
    from langchain_core.outputs import (
        ChatGeneration,
        ChatGenerationChunk,
        Generation,
        GenerationChunk,
    )
    from langchain_core.stores import BaseStore
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("langchain-core", "langchain",
                                 "sophia_memory.integrations.langchain") from exc

__all__ = ["SophiaLLMCache", "SophiaStore"]

log = logging.getLogger("sophia_memory.integrations.langchain")

_KIND = "langchain"
_TEMPERATURE = re.compile(r"""["']temperature["']\s*[:,]\s*([-+0-9.eE]+)""")
_CHUNK = 500


class Serde(Protocol):
    """LangGraph's serializer protocol (``dumps_typed``/``loads_typed``), as far as used here."""

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]: ...

    def loads_typed(self, data: tuple[str, bytes]) -> Any: ...


# -- generations as plain data ---------------------------------------------------------------------

def _encode(generations: RETURN_VAL_TYPE) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for gen in generations:
        kind = type(gen)
        if kind is ChatGeneration or kind is ChatGenerationChunk:
            assert isinstance(gen, ChatGeneration)
            out.append({"k": "chat" if kind is ChatGeneration else "chat-chunk",
                        "m": message_to_dict(gen.message), "i": gen.generation_info})
        elif kind is Generation or kind is GenerationChunk:
            out.append({"k": "text" if kind is Generation else "text-chunk", "t": gen.text,
                        "i": gen.generation_info})
        else:
            out.append({"k": "lc", "d": dumpd(gen)})
    return out


def _decode(rows: Sequence[dict[str, Any]]) -> list[Generation]:
    out: list[Generation] = []
    for row in rows:
        kind = row["k"]
        if kind == "chat":
            message = messages_from_dict([row["m"]])[0]
            out.append(ChatGeneration(message=message, generation_info=row["i"]))
        elif kind == "chat-chunk":
            chunk = messages_from_dict([row["m"]])[0]
            if not isinstance(chunk, BaseMessageChunk):
                raise DecodeError(f"a cached chat chunk holds a {type(chunk).__name__}")
            out.append(ChatGenerationChunk(message=chunk, generation_info=row["i"]))
        elif kind in ("text", "text-chunk"):
            text_cls = Generation if kind == "text" else GenerationChunk
            out.append(text_cls(text=row["t"], generation_info=row["i"]))
        else:
            with warnings.catch_warnings():  # load() is marked beta in langchain-core 1.x
                warnings.simplefilter("ignore")
                out.append(load(row["d"], allowed_objects="core"))
    return out


def _prompt_text(prompt: str) -> str:
    """The words of a prompt: the messages' text when ``prompt`` is LangChain's JSON of a
    chat model's messages (embedding the JSON around them would make every prompt alike)."""
    if not prompt.startswith("["):
        return prompt
    try:
        items = json.loads(prompt)
    except ValueError:
        return prompt
    parts: list[str] = []
    for item in items if isinstance(items, list) else ():
        content = item.get("kwargs", {}).get("content") if isinstance(item, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(b if isinstance(b, str) else str(b.get("text", ""))
                         for b in content if isinstance(b, (str, dict)))
    return "\n".join(p for p in parts if p) or prompt


def _samples(llm_string: str) -> bool:
    """True when ``llm_string`` shows a temperature above 0 (best effort: LangChain puts the
    model's fields and the call's parameters in it)."""
    for match in _TEMPERATURE.finditer(llm_string):
        try:
            if float(match.group(1)) > 0:
                return True
        except ValueError:
            continue
    return False


def _embedder(embed: Any) -> Callable[[str], Any]:
    """``str -> vector`` of the prompt's text, from a callable or a LangChain Embeddings."""
    fn = getattr(embed, "embed_query", embed)
    if not callable(fn):
        raise InvalidArgumentError("embed must be a callable str -> vector or an Embeddings")

    def embed_prompt(prompt: str) -> Any:
        return fn(_prompt_text(prompt))

    return embed_prompt


class SophiaLLMCache(ClosesBridge, BaseCache):
    """LangChain's LLM cache on the Cortex tier of a :class:`Memory` (see the module doc).

    ``namespace``: the memory namespace of this cache (``clear`` empties it). ``tier``:
    default ``Tier.CORTEX``. ``ttl``: seconds an entry lives (None: until cleared).
    ``embed``/``semantic``/``threshold``/``allow_nondeterministic``: the opt-in semantic
    lookup.
    """

    def __init__(self, memory: Memory, *, namespace: str = "langchain-llm",
                 tier: Tier = Tier.CORTEX, ttl: float | None = None, embed: Any = None,
                 semantic: bool = False, threshold: float = 0.9,
                 allow_nondeterministic: bool = False) -> None:
        self._setup(Bridge(memory), namespace=namespace, tier=tier, ttl=ttl, embed=embed,
                    semantic=semantic, threshold=threshold,
                    allow_nondeterministic=allow_nondeterministic)

    def _setup(self, bridge: Bridge, *, namespace: str, tier: Tier, ttl: float | None,
               embed: Any, semantic: bool, threshold: float,
               allow_nondeterministic: bool) -> None:
        if semantic and embed is None:
            raise InvalidArgumentError("semantic=True needs embed= (a str -> vector function "
                                       "or a LangChain Embeddings)")
        self._bridge = bridge
        self.memory = bridge.memory
        self.tier = tier
        self.ttl = ttl
        self.semantic = semantic
        self.threshold = threshold
        self.allow_nondeterministic = allow_nondeterministic
        self._view = bridge.memory.namespace(namespace)
        self._embed = None if embed is None else _embedder(embed)
        self._cortex = self._new_cortex()

    def _new_cortex(self) -> CortexCache:
        return CortexCache(self._view, embed=self._embed, threshold=self.threshold,
                           ttl=self.ttl, tier=self.tier)

    @classmethod
    def open(cls, *, namespace: str = "langchain-llm", tier: Tier = Tier.CORTEX,
             ttl: float | None = None, embed: Any = None, semantic: bool = False,
             threshold: float = 0.9, allow_nondeterministic: bool = False,
             **memory_options: Any) -> SophiaLLMCache:
        """A cache with a memory of its own (``Memory.open(**memory_options)``) on a private
        loop thread: for synchronous code. :meth:`close` closes both."""
        cache = cls.__new__(cls)
        cache._setup(Bridge.open(memory_options), namespace=namespace, tier=tier, ttl=ttl,
                     embed=embed, semantic=semantic, threshold=threshold,
                     allow_nondeterministic=allow_nondeterministic)
        return cache

    @staticmethod
    def _model(llm_string: str) -> str:
        return llm_string or "<no llm_string>"

    @on_memory_loop
    async def alookup_hit(self, prompt: str, llm_string: str) -> CortexHit | None:
        """The cached answer and how it was found (``similarity``, ``semantic``), or None.
        Its ``value`` is the stored form; :meth:`alookup` returns the generations."""
        semantic = self.semantic and (self.allow_nondeterministic or not _samples(llm_string))
        return await self._cortex.lookup(self._model(llm_string), prompt, None, kind=_KIND,
                                         semantic=semantic)

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """The generations cached for this prompt and ``llm_string``, or None."""
        hit = await self.alookup_hit(prompt, llm_string)
        return None if hit is None else _decode(hit.value)

    @on_memory_loop
    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Cache ``return_val`` for this prompt and ``llm_string`` (with ``ttl``). An answer
        the memory cannot store (metadata holding a ``datetime``, say, or one over
        ``max_value_bytes``) is not cached, with a warning: the model call that produced it
        still returns it."""
        try:
            await self._cortex.store(self._model(llm_string), prompt, None,
                                     _encode(return_val), kind=_KIND)
        except (UnsupportedValueError, ValueTooLargeError) as exc:
            log.warning("LLM answer not cached: %s", exc)

    @on_memory_loop
    async def aclear(self, **kwargs: Any) -> None:
        """Remove every entry of this cache's namespace."""
        keys = await self._view.keys(self.tier)
        for i in range(0, len(keys), _CHUNK):
            await self._view.delete_many(keys[i:i + _CHUNK])
        self._cortex = self._new_cortex()  # a fresh semantic index

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        return self._bridge.run(self.alookup(prompt, llm_string))

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        self._bridge.run(self.aupdate(prompt, llm_string, return_val))

    def clear(self, **kwargs: Any) -> None:
        self._bridge.run(self.aclear(**kwargs))


class SophiaStore(ClosesBridge, BaseStore[str, Any]):
    """LangChain's key-value ``BaseStore`` over one tier of a :class:`Memory`.

    ``tier``: where values live (default ``Tier.PERSISTENT``; not ``Tier.VECTOR``, whose
    items need a vector). ``namespace``: the memory namespace of this store. ``ttl``: seconds
    a value lives. ``serde``: an object with ``dumps_typed``/``loads_typed`` for values the
    memory's codec does not take as they are.
    """

    def __init__(self, memory: Memory, *, tier: Tier = Tier.PERSISTENT,
                 namespace: str = "langchain-store", ttl: float | None = None,
                 serde: Serde | None = None) -> None:
        self._setup(Bridge(memory), tier=tier, namespace=namespace, ttl=ttl, serde=serde)

    def _setup(self, bridge: Bridge, *, tier: Tier, namespace: str, ttl: float | None,
               serde: Serde | None) -> None:
        if tier is Tier.VECTOR:
            raise InvalidArgumentError("Tier.VECTOR items need a vector; use another tier")
        self._bridge = bridge
        self.memory = bridge.memory
        self.tier = tier
        self.ttl = ttl
        self.serde = serde
        self._view = bridge.memory.namespace(namespace)

    @classmethod
    def open(cls, *, tier: Tier = Tier.PERSISTENT, namespace: str = "langchain-store",
             ttl: float | None = None, serde: Serde | None = None,
             **memory_options: Any) -> SophiaStore:
        """A store with a memory of its own (``Memory.open(**memory_options)``) on a private
        loop thread: for synchronous code. :meth:`close` closes both."""
        store = cls.__new__(cls)
        store._setup(Bridge.open(memory_options), tier=tier, namespace=namespace, ttl=ttl,
                     serde=serde)
        return store

    @on_memory_loop
    async def amget(self, keys: Sequence[str]) -> list[Any | None]:
        """The values of ``keys`` in order, None for each missing one."""
        found = await self._view.get_many(keys)
        serde = self.serde
        if serde is None:
            return [found.get(k) for k in keys]
        return [None if (v := found.get(k)) is None else serde.loads_typed((v[0], v[1]))
                for k in keys]

    @on_memory_loop
    async def amset(self, key_value_pairs: Sequence[tuple[str, Any]]) -> None:
        """Store the pairs (all validated before any is stored; one transaction on SQL)."""
        serde = self.serde
        items = ({k: v for k, v in key_value_pairs} if serde is None
                 else {k: list(serde.dumps_typed(v)) for k, v in key_value_pairs})
        if items:
            await self._view.put_many(items, tier=self.tier, ttl=self.ttl)

    @on_memory_loop
    async def amdelete(self, keys: Sequence[str]) -> None:
        """Remove ``keys`` (missing ones are ignored)."""
        if keys:
            await self._view.delete_many(keys)

    @on_memory_loop_iter
    async def ayield_keys(self, *, prefix: str | None = None) -> AsyncIterator[str]:
        """The keys of this store (in ``tier``), those starting with ``prefix`` if given."""
        for key in await self._view.keys(self.tier):
            if prefix is None or key.startswith(prefix):
                yield key

    def mget(self, keys: Sequence[str]) -> list[Any | None]:
        return self._bridge.run(self.amget(keys))

    def mset(self, key_value_pairs: Sequence[tuple[str, Any]]) -> None:
        self._bridge.run(self.amset(key_value_pairs))

    def mdelete(self, keys: Sequence[str]) -> None:
        self._bridge.run(self.amdelete(keys))

    def yield_keys(self, *, prefix: str | None = None) -> Iterator[str]:
        async def collect() -> list[str]:
            return [k async for k in self.ayield_keys(prefix=prefix)]

        yield from self._bridge.run(collect())
