"""``python -m coro_durable``: the same command line as ``coro-durable`` (see ``_cli``)."""

import sys

from ._cli import main

sys.exit(main())
