"""Test helpers shipped with the package, for third-party backends and configurations.

* :class:`BackendTests` - the backend conformance suite. A backend's test module subclasses it
  and supplies ``make_backend``::

      class TestMyBackend(BackendTests):
          async def make_backend(self, tmp_path):
              return MyBackend(...)

* :class:`MemoryStateMachine` - a Hypothesis state machine of a whole tiered
  :class:`~sophia_memory.Memory` against a dict model; subclass it with your own
  ``make_memory`` (``Memory.open(...)`` over your backends).
* :class:`ConcurrentMemoryStateMachine` - a state machine whose steps keep several operations
  in flight at once (over gated backends), the history checked for linearizability whenever
  nothing is in flight.
* :func:`check_history` and :class:`HistoryRecorder` - a linearizability checker for per-key
  register histories and a recorder of concurrent clients of a ``Memory``.
* :class:`GatedBackend` (``gated://name``) - an in-process backend whose calls suspend where a
  test says (:class:`Gate`), so reads run while writes are half done, or fail where it says;
  :class:`SharedGatedBackend` (``gated://name?shared=1``) also reports writes made
  "elsewhere" to the engine's invalidation listener, as Redis key tracking does.

The suite needs ``pytest`` and ``pytest-asyncio`` (``asyncio_mode = "auto"``);
:class:`MemoryStateMachine` and :class:`ConcurrentMemoryStateMachine` need ``hypothesis`` and
are imported only when first used.
"""

from typing import TYPE_CHECKING, Any

from .backend import BackendTests
from .gated import Gate, GatedBackend, SharedGatedBackend, gate, gated_data, reset_gated
from .linearizability import (
    ABSENT,
    NEVER,
    UNKNOWN,
    CheckResult,
    HistoryRecorder,
    Operation,
    RecordingClient,
    check_history,
    check_key,
    concurrent_pairs,
    timeline,
)

if TYPE_CHECKING:
    from .concurrent import ConcurrentMemoryStateMachine
    from .memory import MemoryStateMachine

__all__ = [
    "ABSENT",
    "NEVER",
    "UNKNOWN",
    "BackendTests",
    "CheckResult",
    "ConcurrentMemoryStateMachine",
    "Gate",
    "GatedBackend",
    "HistoryRecorder",
    "MemoryStateMachine",
    "Operation",
    "RecordingClient",
    "SharedGatedBackend",
    "check_history",
    "check_key",
    "concurrent_pairs",
    "gate",
    "gated_data",
    "reset_gated",
    "timeline",
]


def __getattr__(name: str) -> Any:
    if name == "MemoryStateMachine":  # needs hypothesis: imported on first use
        from .memory import MemoryStateMachine

        return MemoryStateMachine
    if name == "ConcurrentMemoryStateMachine":
        from .concurrent import ConcurrentMemoryStateMachine

        return ConcurrentMemoryStateMachine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
