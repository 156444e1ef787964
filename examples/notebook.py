"""Notebook-style use without an event loop: the synchronous facade.

Run: .venv/bin/python examples/notebook.py
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from sophia_memory import Tier
from sophia_memory.sync import SyncMemory

tmp = tempfile.mkdtemp()
mem = SyncMemory.open(path=str(Path(tmp) / "nb.db"))  # SyncMemory.open() in a real notebook

print("SESSION tier:", mem.stats()["tiers"]["SESSION"]["backend"])

# cell 1: store an experiment's results durably
mem.put("exp:1", {"lr": 3e-4, "loss": [2.1, 1.7, 1.2]}, tier=Tier.PERSISTENT)

# cell 2: cache an expensive array computation in the L0 pools
emb = mem.get_or_load("emb:v1", lambda: np.random.default_rng(1).random((1000, 64)),
                      tier=Tier.GPU)
print("embeddings:", emb.shape, emb.dtype)

# cell 3: read back and inspect
print("exp:1 =", mem.get("exp:1"))
print("tiers:", [t.name for t in mem.tiers])
mem.close()
shutil.rmtree(tmp)  # a notebook would keep its file; the example leaves nothing behind
