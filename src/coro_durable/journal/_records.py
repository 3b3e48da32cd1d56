"""The records every store persists: runs and journal entries, plus their checksums; and the
registry of live workers.

A *run* is one execution of a workflow. Its journal is a list of entries numbered by ``seq`` in
the order the workflow issued effects. An entry is ``pending`` while an effect is in progress
across a durable boundary (a timer's absolute due time, a signal wait's deadline, a step's failed
attempts waiting for their backoff), then ``ok`` or ``error`` once its outcome is final. A final
entry never changes again.

A *worker record* is one worker Runtime's entry in the store's worker registry: which workflows it
serves, and until when it counts as alive (it heartbeats; one that stops is gone once its record
expires). Clients read it to refuse starting a workflow that nobody serves.

Audit notes. Entries with a *negative* seq are not effects: they are notes the runtime writes
about the run, and the workflow never sees them (replay, the determinism check, ``steps`` and the
``steps == 0`` test of "never started" only look at seq >= 0). Today there is one kind, written
by ``Runtime.retry``: ``kind="retry"``, ``status="ok"``, seq -1 for the first retry of a run, -2
for the next, ...; its ``args`` (codec JSON) hold ``{"by", "at", "previous_status", "error",
"superseded"}``: who retried it and when (ISO 8601 UTC), the status and error it had, and every
entry the retry deleted (each as an object of its stored fields, checksum included, so the audit
keeps exactly what was there). Notes sort before the effects in ``load_journal``'s seq order.

A run_id is chosen by the user (it is what makes ``start`` idempotent), so one rule, enforced by
:func:`check_run_id` in ``Runtime.start`` and in every store's ``create_run``, says what a valid
one is: a non-empty ``str`` of at most 255 characters with no control character (unicodedata
category ``Cc``: NUL, newline, tab, DEL, C1 controls) and no lone surrogate (not encodable in
UTF-8, so some stores could not hold it).

Payloads (inputs, results, signal payloads) are stored as JSON text written by ``_core.codec``; stores
never interpret them. Every entry carries a checksum over its meaningful fields, verified when the
journal is loaded, so a torn or tampered row is detected instead of replayed with a wrong value.

Runs and entries also carry ``meta`` (``journal._meta``): a read-only JSON object, empty by
default, that every store persists and returns, so a later feature can add a field without a
migration per store. An entry's checksum covers its meta when the meta is not empty, and is
exactly what it was before meta existed when it is.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._core import codec
from .._core.waits import Wait, describe_waits
from ..errors import ConfigurationError, ConflictError, CorruptJournalError, RunError
from ._meta import Meta, empty_meta, encode_meta, freeze_meta

__all__ = [
    "CANCELLED_ERROR",
    "JournalEntry",
    "RETRYABLE",
    "RunRecord",
    "RunStatus",
    "TERMINAL",
    "WorkerRecord",
    "retry_conflict",
    "retry_refused",
    "MAX_RUN_ID_LENGTH",
    "MAX_TAGS",
    "check_run_id",
    "check_tags",
    "verify_journal",
]


class RunStatus(enum.StrEnum):
    """The life of a run. ``pending``/``waiting`` runs hold no lease; ``running`` ones do."""

    PENDING = "pending"  # created, never claimed yet (or released to be picked up again)
    RUNNING = "running"  # a worker holds its lease
    WAITING = "waiting"  # parked on a timer or a signal; holds nothing
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    QUARANTINED = "quarantined"  # crashed too often, or diverged from its code; resumable


TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})

#: The error JSON a store writes when it cancels a run that nothing is executing.
CANCELLED_ERROR = '{"type":"RunCancelledError","message":"cancelled before it resumed"}'

#: The statuses ``Store.retry_run`` accepts: a retry continues a run that ended without success.
RETRYABLE = frozenset({RunStatus.FAILED, RunStatus.CANCELLED})


def retry_conflict(run_id: str, seq: int) -> ConflictError:
    """The error every store raises when ``retry_run``'s note seq holds another entry."""
    return ConflictError(
        f"run {run_id!r}: audit note seq {seq} is already taken by another retry; the run was "
        "retried concurrently, look at its history before retrying it again"
    )


def retry_refused(run_id: str, status: RunStatus | str) -> RunError:
    """The error every store raises when ``retry_run`` finds the run in another status."""
    return RunError(
        f"run {run_id!r} is {RunStatus(status).value}; only failed or cancelled runs can be "
        "retried (a quarantined one is released with `resume`)"
    )


#: The longest run_id accepted, in characters.
MAX_RUN_ID_LENGTH = 255


def check_run_id(run_id: object) -> str:
    """Return ``run_id`` if it is a valid run id, else raise ConfigurationError saying why.

    Valid: a non-empty ``str`` of at most :data:`MAX_RUN_ID_LENGTH` characters, with no control
    character (category ``Cc``) and no lone surrogate (``Cs``). Anything else printable is
    fine: spaces, ``:``, ``/``, any script, emoji.
    """
    rule = (
        f"a run_id must be a non-empty str of at most {MAX_RUN_ID_LENGTH} characters without "
        "control characters"
    )
    if not isinstance(run_id, str):
        raise ConfigurationError(
            f"run_id {run_id!r} is a {type(run_id).__name__}, not a str; {rule} (pass "
            "run_id=None to have one made)"
        )
    if not run_id:
        raise ConfigurationError(
            f"run_id '' is empty; {rule}. Pass run_id=None (on the command line: leave out "
            "--run-id) to have a fresh id made; an empty id is refused rather than replaced, "
            "which would lose the idempotency of start"
        )
    if len(run_id) > MAX_RUN_ID_LENGTH:
        raise ConfigurationError(
            f"run_id {run_id[:40]!r}... has {len(run_id)} characters; {rule}. Use a shorter id "
            "(a hash of a long natural key, for example)"
        )
    for index, char in enumerate(run_id):
        category = unicodedata.category(char)
        if category in ("Cc", "Cs"):
            what = "a control character" if category == "Cc" else "a lone surrogate"
            raise ConfigurationError(
                f"run_id {run_id!r} contains {what} ({char!r}) at index {index}; {rule}. "
                "Remove it (ids are shown in logs, URLs and the CLI)"
            )
    return run_id


#: Tags: at most this many per run; a key is 1-64 of ``A-Z a-z 0-9 _ -`` (so it can be an index
#: or JSON-path component in every store), a value a str of at most 256 characters without
#: control characters.
MAX_TAGS = 32
_TAG_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_tags(tags: object) -> dict[str, str]:
    """``tags`` as a plain dict if it follows the tag rules (above), else ConfigurationError."""
    if not isinstance(tags, Mapping):
        raise ConfigurationError(f"tags must be a mapping of str to str, got {tags!r}")
    if len(tags) > MAX_TAGS:
        raise ConfigurationError(f"a run has at most {MAX_TAGS} tags, got {len(tags)}")
    checked: dict[str, str] = {}
    for key, value in tags.items():
        if not isinstance(key, str) or not _TAG_KEY.fullmatch(key):
            raise ConfigurationError(
                f"tag key {key!r} is not 1-64 letters, digits, '_' or '-' (e.g. tenant, user_id)"
            )
        if not isinstance(value, str) or len(value) > 256:
            raise ConfigurationError(
                f"tag {key}={value!r}: a tag's value is a str of at most 256 characters"
            )
        if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
            raise ConfigurationError(f"tag {key}={value!r} contains a control character")
        checked[key] = value
    return checked


@dataclass(slots=True)
class RunRecord:
    """One run as a store keeps it. Stores own the lease and wake-up fields."""

    run_id: str
    workflow: str
    input: str  # JSON text of {"args": [...], "kwargs": {...}}
    status: RunStatus = RunStatus.PENDING
    epoch: int = 0  # fencing token: bumped by every claim
    owner: str | None = None  # worker holding the lease
    lease_expires: float | None = None
    wake_at: float | None = None  # runnable at this time (None: only a signal/cancel wakes it)
    waits: tuple[Wait, ...] = ()  # what it parked on (set by park; kept until the next park)
    cancel_requested: bool = False
    result: str | None = None  # JSON text once completed
    error: str | None = None  # JSON text {"type", "message"} once failed/cancelled
    crash_count: int = 0  # consecutive resumptions that crashed without progress
    last_error: str | None = None
    steps: int = 0  # number of journal entries with seq >= 0 (audit notes are not counted)
    created_at: float = 0.0
    updated_at: float = 0.0
    meta: Mapping[str, Any] = field(default_factory=empty_meta)  # read-only JSON object

    def __post_init__(self) -> None:
        if type(self.meta) is not Meta:  # the default (and a stored record's) is one already
            self.meta = freeze_meta(self.meta)

    def copy(self) -> RunRecord:
        return dataclasses.replace(self)

    @property
    def tags(self) -> dict[str, str]:
        """The run's tags (kept in ``meta["tags"]``, set when it was started)."""
        tags = self.meta.get("tags")
        return dict(tags) if isinstance(tags, Mapping) else {}

    @property
    def waiting_on(self) -> str | None:
        """The waits in words (``describe_waits``), e.g. ``"signal 'approval'"``."""
        return describe_waits(self.waits)


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """One live worker in the store's registry (see ``Store.heartbeat_worker``).

    The runtime fills in the first four fields; the store sets the times from its own clock:
    ``started_at`` when this registration began, ``last_seen`` at the latest heartbeat and
    ``expires_at`` (``last_seen`` plus the heartbeat's ttl), after which the worker counts as gone.
    """

    worker_id: str
    host: str
    pid: int
    workflows: tuple[str, ...]  # the workflow names it claims runs of
    started_at: float = 0.0
    last_seen: float = 0.0
    expires_at: float = 0.0


def _checksum(
    seq: int,
    kind: str,
    name: str,
    digest: str,
    status: str,
    args: str | None,
    result: str | None,
    error: str | None,
    attempts: int,
    key: str,
    due_at: float | None,
    meta: Mapping[str, Any] | None,
) -> str:
    """The one checksum formula of a journal entry (``JournalEntry.compute_checksum``)."""
    material = (
        f"{seq}\x1f{kind}\x1f{name}\x1f{digest}\x1f{status}\x1f{args}\x1f{result}\x1f"
        f"{error}\x1f{attempts}\x1f{key}\x1f{due_at!r}"
    )
    if meta:  # an empty meta keeps the checksum entries had before meta existed
        material += f"\x1f{encode_meta(meta)}"
    return hashlib.blake2b(material.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One effect/result pair of a run's journal."""

    seq: int
    kind: str  # call, sleep, signal, now, uuid4, random
    name: str  # step function name, signal name...
    digest: str  # digest of the encoded arguments (determinism check)
    status: str  # "ok", "error" or "pending"
    args: str | None = None  # JSON text of the arguments, for the audit trail
    result: str | None = None  # JSON text of the value when status is "ok"
    error: str | None = None  # JSON text {"type", "message"} when "error" (or last failed attempt)
    attempts: int = 0
    key: str = ""  # idempotency key "<run_id>:<seq>"
    started_at: float = 0.0
    finished_at: float | None = None
    due_at: float | None = None  # absolute time a timer, deadline or backoff ends
    checksum: str = ""
    # A read-only JSON object (journal._meta); not hashed, so entries stay hashable.
    meta: Mapping[str, Any] = field(default_factory=empty_meta, hash=False)

    def __post_init__(self) -> None:
        if type(self.meta) is not Meta:  # the default (and a stored entry's) is one already
            object.__setattr__(self, "meta", freeze_meta(self.meta))

    # ---- checksums -----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        seq: int,
        kind: str,
        name: str,
        digest: str,
        status: str,
        *,
        args: str | None = None,
        result: str | None = None,
        error: str | None = None,
        attempts: int = 0,
        key: str = "",
        started_at: float = 0.0,
        finished_at: float | None = None,
        due_at: float | None = None,
    ) -> JournalEntry:
        """A new entry (empty meta) with its checksum, built once: the runtime's hot path."""
        checksum = _checksum(
            seq, kind, name, digest, status, args, result, error, attempts, key, due_at, None
        )
        return cls(
            seq, kind, name, digest, status, args, result, error, attempts, key, started_at,
            finished_at, due_at, checksum,
        )  # fmt: skip

    def compute_checksum(self) -> str:
        return _checksum(
            self.seq,
            self.kind,
            self.name,
            self.digest,
            self.status,
            self.args,
            self.result,
            self.error,
            self.attempts,
            self.key,
            self.due_at,
            self.meta,
        )

    def sealed(self) -> JournalEntry:
        """This entry with its checksum filled in."""
        return dataclasses.replace(self, checksum=self.compute_checksum())

    def with_result(self, result_json: str, finished_at: float) -> JournalEntry:
        """A final ``ok`` copy carrying ``result_json`` (used by stores consuming signals)."""
        return dataclasses.replace(
            self, status="ok", result=result_json, error=None, finished_at=finished_at
        ).sealed()

    @property
    def final(self) -> bool:
        return self.status != "pending"

    # ---- decoded views, for users reading history ---------------------------------------------------

    @property
    def value(self) -> Any:
        """The decoded result (None unless status is "ok")."""
        return codec.decode(self.result) if self.result is not None else None

    @property
    def error_info(self) -> dict[str, str] | None:
        """``{"type": ..., "message": ...}`` of the failure (or last failed attempt)."""
        return json.loads(self.error) if self.error else None

    @property
    def arguments(self) -> Any:
        return codec.decode(self.args) if self.args is not None else None

    def describe(self) -> str:
        return f"{self.kind}({self.name})"


def verify_journal(run_id: str, entries: list[JournalEntry]) -> dict[int, JournalEntry]:
    """Check every entry's checksum; return the journal keyed by seq.

    Raises CorruptJournalError on a checksum mismatch or a duplicated seq. Gaps are legal: the
    sub-effects of a gather are journaled in the order they finish. Audit notes (negative seqs)
    are checked too and returned with the rest; the scheduler only ever looks up seqs >= 0.
    """
    journal: dict[int, JournalEntry] = {}
    for entry in entries:
        if entry.seq in journal:
            raise CorruptJournalError(
                f"run {run_id!r}: journal has seq {entry.seq} twice; the run is quarantined, "
                "inspect it with `coro-durable show`"
            )
        if entry.checksum != entry.compute_checksum():
            raise CorruptJournalError(
                f"run {run_id!r}: journal entry seq {entry.seq} ({entry.describe()}) fails its "
                "checksum: the row was torn or modified outside coro_durable. The run is "
                "quarantined rather than replayed with a wrong value; restore the row from a "
                "backup, then resume the run"
            )
        journal[entry.seq] = entry
    return journal
