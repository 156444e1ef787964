"""An agent whose state is versioned in the WORKFLOW tier (L5).

Every write of the agent's state appends a version. The agent writes with
``expected_version=`` (optimistic concurrency): a write based on a version that is no longer
the newest is refused with :class:`VersionConflictError`, so two writers can never overwrite
each other's work unseen. Here a reviewer adds a note while the agent is working on a step;
the agent's write is refused, it re-reads the state (note included), redoes the step and
writes again. At the end it reads the history and an old version back.

Runs on the embedded default (SQLite); with ``SOPHIA_MEMORY_SESSION_URL=redis://...`` the hot
copy of the state lives in Redis.

    python examples/agent_workflow.py
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sophia_memory import Memory, Tier, VersionConflictError

KEY = "agent:trip-42"
Step = Callable[[dict[str, Any]], dict[str, Any]]


async def write_step(mem: Memory, name: str, step: Step, *,
                     meanwhile: Callable[[], Awaitable[None]] | None = None) -> int:
    """Read the newest state, apply ``step``, and append the result only if nobody wrote in
    between; on a conflict, read again and redo the step. Returns the version written."""
    for attempt in range(1, 6):
        entry = await mem.get_entry(KEY)
        assert entry is not None, "the state was created first"
        state = step(dict(entry.value))
        state["last_step"] = name
        if meanwhile is not None:  # another writer gets in between our read and our write
            await meanwhile()
            meanwhile = None
        try:
            version = await mem.put(KEY, state, tier=Tier.WORKFLOW,
                                    expected_version=entry.version)
        except VersionConflictError as exc:
            print(f"  {name}: refused, it read version {exc.expected_version} but "
                  f"{exc.current_version} is newer (attempt {attempt}): re-read and retry")
            continue
        assert version is not None
        print(f"{name}: wrote version {version}")
        return version
    raise RuntimeError(f"{name}: gave up after 5 conflicts")


def plan(state: dict[str, Any]) -> dict[str, Any]:
    return {**state, "plan": ["find flights", "pick a hotel", "book"]}


def search(state: dict[str, Any]) -> dict[str, Any]:
    return {**state, "flights": ["AF1234 09:10", "LH998 13:45"]}


def book(state: dict[str, Any]) -> dict[str, Any]:
    wanted = "early" if "early" in " ".join(state.get("notes", [])) else "any"
    choice = state["flights"][0] if wanted == "early" else state["flights"][-1]
    return {**state, "booked": choice}


async def reviewer_adds_a_note(mem: Memory) -> None:
    """A second writer (a person in the loop) with its own read-modify-write."""
    entry = await mem.get_entry(KEY)
    assert entry is not None
    state = {**entry.value, "notes": [*entry.value.get("notes", []), "prefer an early flight"],
             "last_step": "reviewer note"}
    version = await mem.put(KEY, state, tier=Tier.WORKFLOW, expected_version=entry.version)
    print(f"  (meanwhile the reviewer wrote version {version}: 'prefer an early flight')")


async def run(mem: Memory) -> None:
    print("SESSION tier:", mem.stats()["tiers"]["SESSION"]["backend"])
    start = {"goal": "trip to Paris", "last_step": "start"}
    version = await mem.put(KEY, start, tier=Tier.WORKFLOW, expected_version=0)  # create
    print(f"start: created version {version}")
    try:  # a second agent started for the same trip must not reset it
        await mem.put(KEY, start, tier=Tier.WORKFLOW, expected_version=0)
    except VersionConflictError as exc:
        print(f"a duplicate start is refused: version {exc.current_version} exists")

    await write_step(mem, "plan", plan)
    await write_step(mem, "search", search, meanwhile=lambda: reviewer_adds_a_note(mem))
    await write_step(mem, "book", book)

    final = await mem.get(KEY)
    print(f"booked {final['booked']} with notes {final['notes']}")
    history = await mem.history(KEY)
    print("history, newest first:",
          ", ".join(f"v{e.version} {e.value['last_step']}" for e in history))
    old = await mem.get(KEY, version=2)
    print(f"version 2 was: {old}")
    await mem.delete(KEY)  # every version, from every tier
    print("deleted:", await mem.history(KEY) == [] and not await mem.exists(KEY))


async def main() -> None:
    if os.environ.get("SOPHIA_MEMORY_PATH"):
        async with Memory.open() as mem:
            await run(mem)
        return
    with tempfile.TemporaryDirectory() as tmp:  # leave nothing behind
        async with Memory.open(path=str(Path(tmp) / "agent.db")) as mem:
            await run(mem)


if __name__ == "__main__":
    asyncio.run(main())
