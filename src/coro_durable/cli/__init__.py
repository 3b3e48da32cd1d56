"""The ``coro-durable`` command line (also ``python -m coro_durable``); ``main`` is its entry point.

May import: everything public in ``coro_durable`` and the store SPI; nothing imports it.
"""

from ._main import main

__all__ = ["main"]
