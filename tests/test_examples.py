"""The README and the examples, run as a newcomer would run them.

* The README's first screen: the install lines, a quickstart of at most ten lines that runs and
  prints exactly the output shown under it, the tier table, then the set-up commands; every
  relative link in the README and in ``docs/`` leads to a file that exists.
* The README's TOML example is a valid ``SOPHIA_MEMORY_CONFIG`` file, and ``Memory.open()``
  opens what it describes (its commented Redis line too, against the real server).
* Every example without an integration extra (the LangChain and LangGraph examples are run by
  ``test_integrations_*.py``) runs as a subprocess in a temporary directory (``TMPDIR`` and
  ``XDG_DATA_HOME`` there too), exits 0, prints what it should and leaves no file behind; once
  on the embedded default and once with ``SOPHIA_MEMORY_SESSION_URL`` on the real Redis
  (``REDIS_URL``, a key prefix of its own, removed afterwards).
* The FastAPI example's app, in process through ``httpx.ASGITransport`` with its lifespan:
  sessions with a TTL (in Redis, when configured), single-flight cached LLM answers, vector
  search, health, and the errors it answers with.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from sophia_memory import Memory, MemoryConfig, Tier

from .conftest import real_redis_or_skip

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def _with_prefix(url: str, prefix: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}prefix={prefix}"


async def _keys(client: Any, prefix: str) -> list[bytes]:
    return [k async for k in client.scan_iter(match=prefix + "*", count=1000)]


@asynccontextmanager
async def _redis_prefix() -> AsyncIterator[tuple[Any, str]]:
    """The real server's client and a key prefix of this test's own; its keys are removed
    afterwards. Skips (fails under CI) when there is no server."""
    client = await real_redis_or_skip(REDIS_URL)
    prefix = f"smtest:examples:{uuid.uuid4().hex}:"
    try:
        yield client, prefix
    finally:
        names = await _keys(client, prefix)
        if names:
            await client.delete(*names)
        await client.aclose()


# -- the README ------------------------------------------------------------------------------------


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _blocks(text: str, lang: str) -> list[tuple[int, str]]:
    """The fenced blocks of one language: (line number of the fence, content)."""
    found = []
    for m in re.finditer(rf"^```{lang}\n(.*?)^```$", text, re.M | re.S):
        found.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return found


def test_the_readme_opens_with_install_quickstart_tiers_then_setup() -> None:
    text = _readme()
    lines = text.splitlines()
    first = "\n".join(lines[:20])
    assert "pip install sophia-memory " in first
    for extra in ("redis", "snowflake", "gpu", "metrics", "langgraph", "langchain"):
        assert f"[{extra}]" in first, extra
    assert "pip install -e ." in first
    fence, quickstart = _blocks(text, "python")[0]
    code = quickstart.strip("\n").splitlines()
    assert len(code) <= 10 and fence + len(code) + 1 <= 40, (fence, len(code))
    assert "Memory.open()" in quickstart and "asyncio.run(" in quickstart
    headings = [(i, line) for i, line in enumerate(lines, 1) if line.startswith("## ")]
    names = [h for _, h in headings]
    assert names[:3] == ["## Install into your project", "## Quickstart",
                         "## Set-up: the two commands"], names[:3]
    table = lines.index("| tier | holds | embedded default | production backend | budget p95 |")
    assert table + 1 < headings[2][0] <= 55
    assert [line.split("|")[1].strip() for line in lines[table + 2:table + 8]] == [
        f"L{t.value} `Tier.{t.name}`" for t in Tier]
    setup = text[text.index("## Set-up: the two commands"):]
    assert "`make demo`" in setup and "`make test`" in setup


def test_the_readme_quickstart_prints_what_the_readme_shows(tmp_path: Path) -> None:
    text = _readme()
    fence, quickstart = _blocks(text, "python")[0]
    shown_at, shown = _blocks(text, "text")[0]
    assert shown_at > fence
    script = tmp_path / "quickstart.py"
    script.write_text(quickstart)
    out = _run([str(script)], tmp_path)
    assert out == shown
    # Memory.open() with nothing configured uses the file the README names
    assert (tmp_path / "xdg" / "sophia_memory" / "memory.db").is_file()


def _anchors(page: Path) -> set[str]:
    """The heading anchors GitHub makes for a Markdown page."""
    text = re.sub(r"^```.*?^```$", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, re.M)}


def test_every_relative_link_in_the_readme_and_docs_exists() -> None:
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    checked = 0
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            assert path.exists(), f"{page.name}: link to {target} leads nowhere"
            if anchor and path.suffix == ".md":
                assert anchor in _anchors(path), f"{page.name}: no heading for {target}"
            checked += 1
    text = _readme()
    for doc in ("docs/redis.md", "docs/snowflake.md"):
        assert f"]({doc})" in text, doc
    for example in ("quickstart", "fastapi_service", "service", "agent_workflow", "notebook",
                    "langchain_cache", "langgraph_agent"):
        assert f"](examples/{example}.py)" in text, example
    assert checked > 20


def _readme_toml(tmp_path: Path, edit: Any = None) -> Path:
    blocks = _blocks(_readme(), "toml")
    assert len(blocks) == 1, "one TOML example in the README"
    body = blocks[0][1] if edit is None else edit(blocks[0][1])
    path = tmp_path / "sophia-memory.toml"
    path.write_text(body)
    return path


async def test_the_readme_toml_example_configures_a_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOPHIA_MEMORY_CONFIG", str(_readme_toml(tmp_path)))
    monkeypatch.setenv("SOPHIA_MEMORY_PATH", str(tmp_path / "env.db"))
    config = MemoryConfig.build()
    assert config.path == str(tmp_path / "env.db")  # the environment wins over the file
    assert config.tiers == {Tier.SESSION: "memory://?max_items=50000&policy=s3fifo",
                            Tier.WORKFLOW: None}
    assert (config.default_tier, config.vector_dim, config.vector_metric) == (
        Tier.SESSION, 384, "cosine")
    assert (config.call_timeout, config.breaker_threshold, config.breaker_reset) == (2.0, 5, 30.0)
    assert (config.workflow_retain, config.host_pool_memory, config.purge_interval) == (
        100, "2GiB", 300.0)
    assert config.gpu_pools == {"active_models": 0.40, "inference_cache": 0.30,
                                "vector_cache": 0.20, "buffer": 0.06}
    async with Memory.open() as mem:
        assert Tier.WORKFLOW not in mem.tiers and len(mem.tiers) == 5
        assert "s3fifo" in mem.stats()["tiers"]["SESSION"]["backend"]
        await mem.put("user:1", {"cart": [1]}, ttl=60)  # default_tier: SESSION
        entry = await mem.get_entry("user:1")
        assert entry is not None and entry.tier is Tier.SESSION
        vector = np.arange(1, 385, dtype=np.float32)
        await mem.put("doc:1", "text", tier=Tier.VECTOR, vector=vector)
        assert [h.key for h in await mem.search(vector, k=1)] == ["doc:1"]
    assert (tmp_path / "env.db").is_file()


@pytest.mark.redis
async def test_the_readme_toml_redis_line_works_uncommented(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with _redis_prefix() as (client, prefix):
        readme_url = "redis://127.0.0.1:6379/0?prefix=myapp:"

        def use_redis(body: str) -> str:
            assert f'# SESSION = "{readme_url}"' in body
            body = re.sub(r'^SESSION = "memory://.*$', "", body, flags=re.M)
            server = REDIS_URL.split("?")[0]
            return body.replace(f'# SESSION = "{readme_url}"',
                                f'SESSION = "{_with_prefix(server, prefix)}"')

        monkeypatch.setenv("SOPHIA_MEMORY_CONFIG", str(_readme_toml(tmp_path, use_redis)))
        monkeypatch.setenv("SOPHIA_MEMORY_PATH", str(tmp_path / "env.db"))
        async with Memory.open() as mem:
            assert "redis" in mem.stats()["tiers"]["SESSION"]["backend"]
            await mem.put("user:1", {"cart": [1]}, ttl=60)
            assert await mem.get("user:1") == {"cart": [1]}
            assert await _keys(client, prefix) == [f"{prefix}user:1".encode()]


# -- the examples as scripts -----------------------------------------------------------------------


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPHIA_MEMORY_")}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env.update(PYTHONPATH=str(ROOT / "src"), TMPDIR=str(tmp_path / "tmp"),
               XDG_DATA_HOME=str(tmp_path / "xdg"), **extra)
    return env


def _run(argv: list[str], tmp_path: Path, **env: str) -> str:
    """Run ``python argv`` in ``tmp_path`` as its working directory; its stdout."""
    import subprocess

    done = subprocess.run([sys.executable, *argv], cwd=tmp_path, env=_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def _run_async(argv: list[str], tmp_path: Path, **env: str) -> str:
    return await asyncio.to_thread(_run, argv, tmp_path, **env)


AGENT_OUTPUT = """\
start: created version 1
a duplicate start is refused: version 1 exists
plan: wrote version 2
  (meanwhile the reviewer wrote version 3: 'prefer an early flight')
  search: refused, it read version 2 but 3 is newer (attempt 1): re-read and retry
search: wrote version 4
book: wrote version 5
booked AF1234 09:10 with notes ['prefer an early flight']
history, newest first: v5 book, v4 search, v3 reviewer note, v2 plan, v1 start
version 2 was: {'goal': 'trip to Paris', 'last_step': 'plan', \
'plan': ['find flights', 'pick a hotel', 'book']}
deleted: True
"""

#: What each example must print (lines, or patterns for the lines with times in them).
EXPECTED: dict[str, list[str]] = {
    "quickstart.py": [
        "session: {'cart': [1, 2]}",
        "after promotion, served by: Tier.SESSION",
        "array back with dtype/shape: (256, 256)",
        "['m1 says hello to you', 'm1 says hello to you', 'm1 says hello to you']",
        "tenant-b sees: None",
    ],
    "service.py": [
        "60 requests, 2 LLM calls",
        "ann's history: ['hello', 'bye', 'hello', 'bye', 'hello', 'bye', 'hello', 'bye', "
        "'hello', 'bye']",
    ],
    "notebook.py": [
        "embeddings: (1000, 64) float64",
        "exp:1 = {'lr': 0.0003, 'loss': [2.1, 1.7, 1.2]}",
        "tiers: ['GPU', 'SESSION', 'CORTEX', 'PERSISTENT', 'VECTOR', 'WORKFLOW']",
    ],
    "agent_workflow.py": AGENT_OUTPUT.splitlines(),
    "fastapi_service.py": [
        "health: ok | SESSION on {session}",
        r"re:session alice: \{'cart': \['book'\], 'step': 1\} in SESSION, expires in 1[78]\d\d s",
        "session bob: 404",
        "answer: '[fake-llm-1] 4 words heard: what is tiered memory?' (LLM calls so far: 1)",
        "answer: '[fake-llm-1] 4 words heard: what is tiered memory?' (LLM calls so far: 1)",
        "search hit: gpu score 0.365: gpu memory pools hold model weights",
        "search hit: llm score 0.316: the llm answer cache avoids repeated model calls",
    ],
}


def _check_output(name: str, out: str, session: str) -> None:
    lines = out.splitlines()
    if name != "fastapi_service.py":
        assert f"SESSION tier: {session}" in lines, out
    for line_or_pattern in EXPECTED[name]:
        want = line_or_pattern.replace("{session}", session)
        if want.startswith("re:"):
            assert any(re.fullmatch(want[3:], line) for line in lines), (want, out)
        else:
            assert want in lines, (want, out)
    if name == "agent_workflow.py":  # every line, in order
        assert [x for x in lines if not x.startswith("SESSION tier:")] == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_example_runs_on_the_embedded_default(name: str, tmp_path: Path) -> None:
    out = await _run_async([str(EXAMPLES / name)], tmp_path)
    _check_output(name, out, "in-process adaptive (max_items=100000, max_bytes=536870912)")
    assert list((tmp_path / "tmp").iterdir()) == []  # its temporary files are gone
    assert not (tmp_path / "xdg").exists()  # nothing in the user's data directory


@pytest.mark.redis
@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_example_runs_with_the_session_tier_on_redis(name: str, tmp_path: Path) -> None:
    async with _redis_prefix() as (client, prefix):
        url = _with_prefix(REDIS_URL, prefix)
        out = await _run_async([str(EXAMPLES / name)], tmp_path,
                               SOPHIA_MEMORY_SESSION_URL=url)
        server = REDIS_URL.split("?")[0].rsplit("/", 1)[0]
        _check_output(name, out, f"redis {server} (prefix {prefix!r})")
        if name == "service.py":  # the users' histories stay in Redis, with their TTL
            key = f"{prefix}user-ann\x1fhistory".encode()
            assert key in await _keys(client, prefix)
            assert 0 < await client.pttl(key) <= (1800 + 60) * 1000
        if name == "agent_workflow.py":  # it deleted its state from every tier
            assert await _keys(client, prefix) == []


# -- the FastAPI app in process --------------------------------------------------------------------


@pytest.fixture
def fastapi_example() -> Iterator[ModuleType]:
    """The example as a module (fastapi and httpx are in the test extra)."""
    spec = importlib.util.spec_from_file_location("fastapi_service", EXAMPLES /
                                                  "fastapi_service.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # importing it starts nothing
    yield module


@asynccontextmanager
async def _client(app: Any) -> AsyncIterator[Any]:
    """An httpx client of ``app`` with its lifespan running (ASGITransport runs none)."""
    import httpx

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def _exercise(app: Any, client: Any) -> dict[str, Any]:
    health: dict[str, Any] = (await client.get("/health")).json()
    assert health["status"] == "ok"
    assert list(health["tiers"]) == [t.name for t in Tier]

    assert (await client.get("/session/ann")).status_code == 404
    put = await client.put("/session/ann", json={"cart": [1], "step": 1})
    assert put.status_code == 200 and put.json() == {"user": "ann", "ttl_s": 1800}
    await client.put("/session/ann", json={"cart": [1, 2], "step": 2})
    session = (await client.get("/session/ann")).json()
    assert session["state"] == {"cart": [1, 2], "step": 2} and session["tier"] == "SESSION"
    assert 1700 < session["expires_in_s"] <= 1800

    llm = app.state.llm
    replies = await asyncio.gather(*(client.post("/answer", json={"prompt": "hello there"})
                                     for _ in range(8)))
    answers = {r.json()["answer"] for r in replies}
    assert answers == {"[fake-llm-1] 2 words heard: hello there"}
    assert llm.calls == 1  # eight concurrent requests, one model call
    other = (await client.post("/answer", json={"prompt": "something else"})).json()
    again = (await client.post("/answer", json={"prompt": "hello there"})).json()
    assert (other["llm_calls"], again["llm_calls"], llm.calls) == (2, 2, 2)
    assert (await client.post("/answer", json={"prompt": ""})).status_code == 422

    docs = {"gpu": "gpu memory pools hold model weights",
            "llm": "the llm answer cache avoids repeated model calls",
            "sql": "snowflake tables hold durable memory"}
    for doc_id, text in docs.items():
        created = await client.post("/documents", json={"id": doc_id, "text": text})
        assert created.status_code == 201 and created.json() == {"id": doc_id}
    found = (await client.get("/search", params={"q": "durable snowflake memory"})).json()
    assert len(found["hits"]) == 3
    assert (found["hits"][0]["id"], found["hits"][0]["text"]) == ("sql", docs["sql"])
    scores = [h["score"] for h in found["hits"]]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[1]
    one = (await client.get("/search", params={"q": "model weights", "k": 1})).json()
    assert [h["id"] for h in one["hits"]] == ["gpu"]
    assert (await client.get("/search", params={"q": "?!"})).status_code == 422
    assert (await client.post("/documents", json={"id": "x", "text": "..."})).status_code == 422
    return health


async def test_fastapi_app_on_the_embedded_default(fastapi_example: ModuleType,
                                                   tmp_path: Path) -> None:
    app = fastapi_example.create_app(path=str(tmp_path / "svc.db"))
    assert not (tmp_path / "svc.db").exists()  # creating the app opens nothing
    async with _client(app) as client:
        health = await _exercise(app, client)
        assert health["tiers"]["SESSION"]["backend"].startswith("in-process")
        assert (tmp_path / "svc.db").is_file()  # the lifespan opened the memory
    assert fastapi_example.app is not app  # the module's own app is another, unopened one


@pytest.mark.redis
async def test_fastapi_app_with_sessions_in_redis(fastapi_example: ModuleType, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    async with _redis_prefix() as (client, prefix):
        monkeypatch.setenv("SOPHIA_MEMORY_SESSION_URL", _with_prefix(REDIS_URL, prefix))
        app = fastapi_example.create_app(path=str(tmp_path / "svc.db"))
        async with _client(app) as http:
            health = await _exercise(app, http)
            assert health["tiers"]["SESSION"]["backend"].startswith("redis ")
            key = f"{prefix}session\x1fann".encode()
            assert key in await _keys(client, prefix)  # the session lives in Redis
            assert 1700 * 1000 < await client.pttl(key) <= (1800 + 60) * 1000
