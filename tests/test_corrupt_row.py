"""corrupt_row goes through each store's own testing hook (``CorruptibleStore.corrupt_entry``).

The test that a corrupt row quarantines the run is in tests/test_crash_fuzz_api.py; a corrupted
meta, in tests/test_meta.py. Here: the hook is found behind store wrappers on every store, and a
store without the hook gets an error naming it.
"""

from __future__ import annotations

from typing import Any

import pytest

import coro_durable as cd
from coro_durable.errors import CorruptJournalError
from coro_durable.journal import verify_journal
from coro_durable.store import ClaimRequest, JournalEntry, RunRecord, Store, StoreWrapper
from coro_durable.testing import Trace, TracingStore, corrupt_row

pytestmark = pytest.mark.anyio


class ThirdPartyStore:
    """A store from another package: the whole Store protocol (here by delegation to a memory
    store), but no corrupt_entry testing hook."""

    def __init__(self) -> None:
        self._inner = cd.MemoryStore()
        self.url = "thirdparty://"

    def __getattr__(self, name: str) -> Any:
        if name == "corrupt_entry":
            raise AttributeError(name)
        return getattr(self._inner, name)


async def test_corrupt_row_reaches_the_hook_of_every_store_behind_wrappers(store: Store) -> None:
    """corrupt_row unwraps StoreWrappers (a TracingStore around another wrapper here) and calls
    the store's corrupt_entry: the row's result changes, its checksum does not, so it fails
    verification; a missing row is a LookupError."""
    await store.create_run(RunRecord("r1", "wf", "{}"))
    (run,) = await store.claim(ClaimRequest("w1", ("wf",), 1, 30, 5))
    good = JournalEntry(0, "call", "step", "d0", "ok", result="1", key="r1:0").sealed()
    await store.append("r1", run.epoch, [good])
    wrapped = TracingStore(StoreWrapper(store), Trace(), "w1")
    await corrupt_row(wrapped, "r1", 0, result={"forged": True})
    (tampered,) = await store.load_journal("r1")
    assert tampered.value == {"forged": True} and tampered.checksum == good.checksum
    with pytest.raises(CorruptJournalError, match="checksum"):
        verify_journal("r1", [tampered])
    with pytest.raises(LookupError, match="no journal entry at seq 7"):
        await corrupt_row(wrapped, "r1", 7)


async def test_a_store_without_the_hook_gets_an_error_naming_it() -> None:
    """A store that does not implement corrupt_entry (even behind a wrapper) makes corrupt_row
    raise NotImplementedError naming the store and the hook it lacks, and nothing changes."""
    store = ThirdPartyStore()
    await store.create_run(RunRecord("r1", "wf", "{}"))
    with pytest.raises(NotImplementedError, match=r"ThirdPartyStore.*corrupt_entry"):
        await corrupt_row(StoreWrapper(store), "r1", 0)
