"""The kernel's private shared pieces: the JSON codec (``codec``) and the named fault hooks
(``faults``) the runtime and the stores call at every crash point of faults.md.

May import: ``coro_durable.errors`` and the standard library only. Everything else may import it.
Nothing here is public; the engine SPI (``coro_durable.engine``) re-exports the codec.
"""
