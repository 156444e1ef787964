"""Test helpers shipped with the package: the backend conformance suite.

A backend's test module subclasses :class:`BackendTests` and supplies ``make_backend``::

    class TestMyBackend(BackendTests):
        async def make_backend(self, tmp_path):
            return MyBackend(...)

The suite needs ``pytest`` and ``pytest-asyncio`` (``asyncio_mode = "auto"``).
"""

from .backend import BackendTests

__all__ = ["BackendTests"]
