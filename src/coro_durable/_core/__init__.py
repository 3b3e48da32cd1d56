"""The kernel's private shared pieces: the JSON codec (``codec``), effect planning and outcomes
(``planning``: seq numbering, gather trees, gather outcomes, error info), the clock workflow time
is measured in (``clock``; ``coro_durable.testing.FakeClock`` replaces it in tests), and the
named fault hooks (``faults``) the runtime calls at every crash point of faults.md.

May import: ``coro_durable.errors`` and ``coro_durable.workflow`` (the effect classes planning
works on). Everything but ``workflow`` may import it. Nothing here is public; the engine SPI
(``coro_durable.engine``) re-exports the codec and planning for adapters.
"""
