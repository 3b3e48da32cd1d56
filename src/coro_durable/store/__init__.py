"""The public store SPI: what a persistence backend implements and may use.

* ``Store``: the protocol (its docstring states every rule a backend keeps), and ``StoreWrapper``,
  a store that forwards every call to an inner one (subclass it to observe or change a few).
* ``Listener``, what ``Store.subscribe`` takes, and ``ListenerSet``, the one implementation of
  subscribe/notify every store uses.
* ``GroupCommit`` and ``GroupCommitOptions`` (with ``GROUP_COMMIT_OPTIONS`` and
  ``parse_group_option`` for URL query options): batch the writes of concurrent callers into one
  commit while answering each on its own.
* The records a store persists (``RunRecord``, ``JournalEntry``, ``WorkerRecord``, ``RunStatus``,
  ``TERMINAL``) and the rules every store applies to them (``check_run_id``, ``retry_conflict``,
  ``retry_refused``, ``CANCELLED_ERROR``); the records' ``meta`` (``Meta``) and its one JSON
  encoding, ``encode_meta`` to store it and ``decode_meta`` to read it back; what a waiting run
  waits for (``Wait``, ``WaitKind``) and its one encoding, ``encode_waits``/``decode_waits``.
* The typed requests whose fields will grow: ``ClaimRequest`` (``claim``) and ``RunQuery``
  (``list_runs``, including "runs waiting on signal X").
* ``CorruptibleStore``: the optional testing hook ``corrupt_entry`` a store implements so that
  ``coro_durable.testing.corrupt_row`` can tamper with its journal rows.
* The built-in stores, ``MemoryStore`` (``memory://``) and ``SqliteStore`` (``sqlite:///path``),
  and ``open_store(url)``, which also finds plugins registered in the ``coro_durable.stores``
  entry-point group (``STORE_GROUP``; engine adapters use ``ENGINE_GROUP``, ``engine_class``).

May import: ``coro_durable.errors``, ``coro_durable._core`` and ``coro_durable.journal``; never the
runtime, the engine SPI or the CLI. A backend plugin imports this module, ``coro_durable`` and
``coro_durable.errors`` only.
"""

from .._core.waits import Wait, WaitKind, decode_waits, encode_waits
from ..journal._meta import Meta, decode_meta, encode_meta
from ..journal._records import (
    CANCELLED_ERROR,
    MAX_RUN_ID_LENGTH,
    TERMINAL,
    JournalEntry,
    RunRecord,
    RunStatus,
    WorkerRecord,
    check_run_id,
    retry_conflict,
    retry_refused,
)
from ._groupcommit import OPTION_NAMES as GROUP_COMMIT_OPTIONS
from ._groupcommit import GroupCommit, GroupCommitOptions
from ._groupcommit import parse_option as parse_group_option
from ._listeners import Listener, ListenerSet
from ._memory import MemoryStore
from ._protocol import CorruptibleStore, Store, StoreWrapper
from ._registry import (
    DEFAULT_STORE_URL,
    ENGINE_GROUP,
    STORE_GROUP,
    default_store_url,
    engine_class,
    open_store,
    plugin_class,
)
from ._requests import ClaimRequest, RunQuery
from ._sqlite import SqliteStore

__all__ = [
    "CANCELLED_ERROR",
    "DEFAULT_STORE_URL",
    "ENGINE_GROUP",
    "STORE_GROUP",
    "GROUP_COMMIT_OPTIONS",
    "MAX_RUN_ID_LENGTH",
    "TERMINAL",
    "ClaimRequest",
    "CorruptibleStore",
    "GroupCommit",
    "GroupCommitOptions",
    "JournalEntry",
    "Listener",
    "ListenerSet",
    "MemoryStore",
    "Meta",
    "RunQuery",
    "RunRecord",
    "RunStatus",
    "SqliteStore",
    "Store",
    "StoreWrapper",
    "Wait",
    "WaitKind",
    "WorkerRecord",
    "check_run_id",
    "decode_meta",
    "decode_waits",
    "default_store_url",
    "encode_meta",
    "encode_waits",
    "engine_class",
    "open_store",
    "parse_group_option",
    "plugin_class",
    "retry_conflict",
    "retry_refused",
]
