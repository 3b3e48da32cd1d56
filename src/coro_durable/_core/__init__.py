"""The kernel's private shared pieces: the JSON codec (``codec``), effect planning and outcomes
(``planning``: seq numbering, gather trees, gather outcomes, error info), the clock workflow time
is measured in (``clock``; ``coro_durable.testing.FakeClock`` replaces it in tests), the
instruments and their typed events (``hooks``: ``Instrument``, the per-Runtime ``Hooks`` the
runtime calls at each event), the named fault points of faults.md (``faults``:
``AFTER_FEED`` = "X7", ...), and what a parked run waits for (``waits``: ``Wait``, ``WaitKind``
and their stored encoding; the journal's records, the store SPI and the hooks share them).

May import: ``coro_durable.errors`` and ``coro_durable.workflow`` (the effect classes planning
works on). Everything but ``workflow`` may import it. The module is private; ``coro_durable``
re-exports ``Instrument`` and the events, and the engine SPI (``coro_durable.engine``) the codec
and planning for adapters.
"""
