"""The engine behind :class:`~sophia_memory.Memory`, as small parts with one job each.

See :mod:`sophia_memory.engine.core` for the map of the parts and ``docs/architecture.md``
for which module may import which.
"""

from .chain import Found, TierChain
from .core import Engine, SingleFlight
from .handles import InProcessTier, RemoteTier, TierHandle
from .ordering import KeyOrder
from .promotion import Promoter
from .spill import Spiller
from .writes import Writer

__all__ = ["Engine", "Found", "InProcessTier", "KeyOrder", "Promoter", "RemoteTier",
           "SingleFlight", "Spiller", "TierChain", "TierHandle", "Writer"]
