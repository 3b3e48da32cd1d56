"""``python -m coro_durable``: the same command line as ``coro-durable`` (see ``coro_durable.cli``)."""

import sys

from .cli import main

sys.exit(main())
