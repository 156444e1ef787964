"""A FastAPI service with sophia_memory as its memory layer.

* the app's lifespan opens one :class:`Memory` (``Memory.open()``: the embedded default, or
  whatever ``SOPHIA_MEMORY_*`` names) and closes it on shutdown;
* ``PUT/GET /session/{user}``: per-user session state in ``Tier.SESSION`` with a TTL (Redis
  when ``SOPHIA_MEMORY_SESSION_URL=redis://...`` is set, in-process otherwise);
* ``POST /answer``: an LLM call memoised in the Cortex tier (``@mem.cached``): the same prompt
  reaches the model once, and concurrent requests for it share one call;
* ``POST /documents`` and ``GET /search``: documents in ``Tier.VECTOR`` with an embedding,
  exact top-k by cosine similarity;
* ``GET /health``: every tier's backend and circuit breaker.

The "LLM" and the embedding are deterministic stand-ins (no model, no network), so the
example runs anywhere. Needs ``pip install fastapi httpx`` (and ``uvicorn`` to serve).

    python examples/fastapi_service.py           # a scripted session of requests, in-process
    python examples/fastapi_service.py --serve   # serve on 127.0.0.1:8000 (needs uvicorn)
    uvicorn examples.fastapi_service:app         # the same, from the repository root
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import re
import tempfile
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, cast

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from sophia_memory import Cached, Memory, Tier

SESSION_TTL_S = 1800  # a session lives 30 minutes after its last write
ANSWER_TTL_S = 86400  # an LLM answer is reused for a day
EMBED_DIM = 64


# -- stand-ins for the models a real service would call ------------------------------------------


class FakeLLM:
    """A deterministic "LLM": slow enough that a cache hit shows, and it counts its calls."""

    def __init__(self, model: str = "fake-llm-1") -> None:
        self.model = model
        self.calls = 0

    async def complete(self, prompt: str, temperature: float = 0.0) -> str:
        self.calls += 1
        await asyncio.sleep(0.05)  # the model call
        return f"[{self.model}] {len(prompt.split())} words heard: {prompt.strip()}"


def embed(text: str) -> np.ndarray:
    """A tiny bag-of-words embedding (each word hashed to one of 64 dimensions)."""
    vec = np.zeros(EMBED_DIM, dtype=np.float32)
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        vec[zlib.crc32(word.encode()) % EMBED_DIM] += 1.0
    return vec


# -- request bodies --------------------------------------------------------------------------------


class Question(BaseModel):
    prompt: str = Field(min_length=1, max_length=4000)


class Document(BaseModel):
    id: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1)


# -- the app ---------------------------------------------------------------------------------------


def memory(request: Request) -> Memory:
    """The memory the lifespan opened (a dependency of every endpoint that needs it)."""
    return cast(Memory, request.app.state.memory)


Mem = Annotated[Memory, Depends(memory)]


def create_app(**memory_options: Any) -> FastAPI:
    """The service; ``memory_options`` go to :meth:`Memory.open` (e.g. ``path=``), on top of
    the ``SOPHIA_MEMORY_*`` environment. Nothing is opened until the app starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Memory.open(**memory_options) as mem:
            llm = FakeLLM()
            app.state.memory = mem
            app.state.llm = llm
            app.state.answer = mem.cached(tier=Tier.CORTEX, ttl=ANSWER_TTL_S)(llm.complete)
            yield
        # leaving the block flushed background work and closed every tier

    app = FastAPI(title="sophia_memory example service", lifespan=lifespan)

    @app.get("/health")
    async def health(mem: Mem) -> dict[str, Any]:
        tiers = mem.stats()["tiers"]
        status = "ok" if all(t["breaker"] == "closed" for t in tiers.values()) else "degraded"
        return {"status": status,
                "tiers": {name: {"backend": t["backend"], "breaker": t["breaker"]}
                          for name, t in tiers.items()}}

    @app.put("/session/{user}")
    async def put_session(user: str, state: dict[str, Any], mem: Mem) -> dict[str, Any]:
        await mem.namespace("session").put(user, state, tier=Tier.SESSION, ttl=SESSION_TTL_S)
        return {"user": user, "ttl_s": SESSION_TTL_S}

    @app.get("/session/{user}")
    async def get_session(user: str, mem: Mem) -> dict[str, Any]:
        entry = await mem.namespace("session").get_entry(user)
        if entry is None:
            raise HTTPException(404, f"no session for {user!r} (never set, or expired)")
        left = None if entry.expires_at is None else round(entry.expires_at - time.time())
        return {"user": user, "state": entry.value, "tier": entry.tier.name,
                "expires_in_s": left}

    @app.post("/answer")
    async def answer(question: Question, request: Request) -> dict[str, Any]:
        complete = cast(Cached[..., str], request.app.state.answer)
        text = await complete(question.prompt)
        return {"answer": text, "llm_calls": request.app.state.llm.calls}

    @app.post("/documents", status_code=201)
    async def add_document(doc: Document, mem: Mem) -> dict[str, Any]:
        vector = embed(doc.text)
        if not vector.any():
            raise HTTPException(422, "the text has no words to embed")
        await mem.namespace("docs").put(doc.id, {"text": doc.text}, tier=Tier.VECTOR,
                                        vector=vector)
        return {"id": doc.id}

    @app.get("/search")
    async def search(q: str, mem: Mem, k: int = 3) -> dict[str, Any]:
        vector = embed(q)
        if not vector.any():
            raise HTTPException(422, "the query has no words to embed")
        hits = await mem.namespace("docs").search(vector, k=max(1, min(k, 50)))
        return {"query": q, "hits": [{"id": h.key, "score": round(h.score, 3),
                                      "text": h.value["text"]} for h in hits]}

    return app


#: ``uvicorn examples.fastapi_service:app`` serves this (configured by SOPHIA_MEMORY_*).
app = create_app()


# -- running it ------------------------------------------------------------------------------------

DOCS = {
    "gpu": "gpu memory pools hold model weights",
    "llm": "the llm answer cache avoids repeated model calls",
    "sql": "snowflake tables hold durable memory",
}


def demo(service: FastAPI) -> None:
    """A scripted session of requests through FastAPI's TestClient (runs the lifespan)."""
    from fastapi.testclient import TestClient

    with TestClient(service) as client:
        health = client.get("/health").json()
        print("health:", health["status"], "| SESSION on", health["tiers"]["SESSION"]["backend"])

        client.put("/session/alice", json={"cart": ["book"], "step": 1})
        session = client.get("/session/alice").json()
        print(f"session alice: {session['state']} in {session['tier']}, "
              f"expires in {session['expires_in_s']} s")
        print("session bob:", client.get("/session/bob").status_code)

        for _ in range(2):
            reply = client.post("/answer", json={"prompt": "what is tiered memory?"}).json()
            print(f"answer: {reply['answer']!r} (LLM calls so far: {reply['llm_calls']})")

        for doc_id, text in DOCS.items():
            client.post("/documents", json={"id": doc_id, "text": text})
        found = client.get("/search", params={"q": "where do model weights live", "k": 2})
        for hit in found.json()["hits"]:
            print(f"search hit: {hit['id']} score {hit['score']}: {hit['text']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--serve", action="store_true", help="serve with uvicorn")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if args.serve:
        try:
            uvicorn = importlib.import_module("uvicorn")
        except ImportError:
            raise SystemExit("--serve needs uvicorn: pip install uvicorn") from None
        uvicorn.run(app, host=args.host, port=args.port)
        return
    if os.environ.get("SOPHIA_MEMORY_PATH"):
        demo(create_app())
        return
    with tempfile.TemporaryDirectory() as tmp:  # leave nothing behind
        demo(create_app(path=str(Path(tmp) / "service.db")))


if __name__ == "__main__":
    main()
