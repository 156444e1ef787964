"""Adapters that let other frameworks keep their state in a :class:`~sophia_memory.Memory`.

* :mod:`sophia_memory.integrations.langgraph`: :class:`SophiaCheckpointSaver`, a LangGraph
  checkpointer (``pip install 'sophia-memory[langgraph]'``).
* :mod:`sophia_memory.integrations.langchain`: :class:`SophiaLLMCache`, LangChain's LLM cache
  on the Cortex tier, and :class:`SophiaStore`, a LangChain key-value ``BaseStore`` over any
  tier (``pip install 'sophia-memory[langchain]'``).

Nothing here is imported by ``import sophia_memory``: each module imports its framework when it
is itself imported, and raises :class:`~sophia_memory.MissingDependencyError` naming the extra
when the framework is missing. The names are also reachable from this package, lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["SophiaCheckpointSaver", "SophiaLLMCache", "SophiaStore"]

_HOME = {
    "SophiaCheckpointSaver": "langgraph",
    "SophiaLLMCache": "langchain",
    "SophiaStore": "langchain",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
