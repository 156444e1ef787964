"""A pytest plugin that lets mutmut 3.8 run under pytest 9 (``mutate.py`` copies it to
``tests/mutmut_pytest_compat.py`` in its scratch copy and loads it there).

mutmut 3.8's harness reads ``item._nodeid``, which pytest 9 replaced by ``item.nodeid`` (a
property over ``_id``); without it, mutmut's first run (which maps each test to the
functions it calls) stops at the first test. This gives the old name back, read-only.
"""

from __future__ import annotations

from _pytest.nodes import Node

if not hasattr(Node, "_nodeid"):
    Node._nodeid = property(lambda self: self.nodeid)  # type: ignore[attr-defined]
