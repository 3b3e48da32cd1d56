"""Every error coro_durable raises, in one tree.

    CoroDurableError                      base of everything below (an Exception)
    ├── WorkflowError                     something about workflow code itself
    │   ├── NotAnEffectError (TypeError)  a workflow awaited something that is not an effect
    │   ├── NonDeterminismError           replayed code issued a different effect than the journal
    │   ├── UnknownWorkflowError (LookupError)  no workflow registered under a name (for
    │   │                                 start: none here, and no live worker serves it)
    │   └── EffectNotAllowedError         an effect or helper used where it cannot be
    │       └── NotInWorkflowError        an effect awaited outside a workflow run
    ├── StepError                         a step failed after its retries; carries the original
    │                                     exception's type name and message
    ├── SignalTimeout (TimeoutError)      await_signal(..., timeout=) expired
    ├── StepTimeoutError (TimeoutError)   raised by cd.heartbeat() in a step attempt that timed
    │                                     out (timeout= or heartbeat_timeout=): stop working
    ├── SerializationError (TypeError)    a value the codec cannot encode or decode
    │   └── PayloadTooLargeError          an encoded payload exceeds the configured limit
    ├── RunError                          about a run as a whole
    │   ├── RunNotFoundError (LookupError)
    │   ├── RunAlreadyExistsError         same run_id started with another workflow or input
    │   ├── RunFailedError                result() of a run that failed
    │   ├── RunQuarantinedError           result() of a run parked after repeated crashes
    │   └── ResultTimeoutError (TimeoutError)   result(timeout=) expired before the run finished
    ├── StoreError                        the store failed; drivers never leak their own errors.
    │   │                                 A plain StoreError (e.g. from a third-party store) is
    │   │                                 retried like a transient one
    │   ├── TransientStoreError           retrying can help: connection refused or lost, busy or
    │   │   │                             locked, a timeout, a failover, a full disk; retried up
    │   │   │                             to store_deadline, with one warning logged
    │   │   └── StoreUnavailableError     the store stayed unreachable (or locked) past a deadline
    │   ├── PermanentStoreError           retrying cannot help: a read-only or unopenable file,
    │   │   │                             permission or credentials refused, an unknown host, a
    │   │   │                             missing database; raised at once, saying what to fix
    │   │   └── StorePluginMissingError (ImportError)   URL scheme with no installed store
    │   ├── CorruptJournalError           a row failed its checksum or could not be decoded
    │   └── ConflictError                 a write lost a race it must not retry (seq taken)
    └── ConfigurationError (ValueError)   bad arguments to Runtime, RetryPolicy, a store URL...

    RunCancelledError (BaseException)     the run was cancelled: raised at the workflow's pending
                                          await, by cd.heartbeat() in a step, and by result().
                                          A BaseException (like asyncio.CancelledError) so that
                                          `except Exception:` in user code does not swallow it.
    LeaseLost (BaseException)             the worker no longer owns the run; stops the activation.
                                          It is a BaseException so workflow code cannot swallow it.

Every message says what happened and what to do about it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = [
    "CoroDurableError",
    "WorkflowError",
    "NotAnEffectError",
    "NonDeterminismError",
    "UnknownWorkflowError",
    "EffectNotAllowedError",
    "NotInWorkflowError",
    "StepError",
    "SignalTimeout",
    "StepTimeoutError",
    "SerializationError",
    "PayloadTooLargeError",
    "RunError",
    "RunNotFoundError",
    "RunAlreadyExistsError",
    "RunFailedError",
    "RunCancelledError",
    "RunQuarantinedError",
    "ResultTimeoutError",
    "StoreError",
    "TransientStoreError",
    "PermanentStoreError",
    "StoreUnavailableError",
    "CorruptJournalError",
    "StorePluginMissingError",
    "ConflictError",
    "ConfigurationError",
    "LeaseLost",
]


class CoroDurableError(Exception):
    """Base class of every error raised by coro_durable."""


# -- workflow code -----------------------------------------------------------------------------


class WorkflowError(CoroDurableError):
    """Something is wrong with workflow code itself."""


class NotAnEffectError(WorkflowError, TypeError):
    """A workflow awaited an object that is not a coro_durable effect."""

    def __init__(self, obj: object) -> None:
        self.obj = obj
        super().__init__(
            f"workflow awaited {obj!r}, which is not a coro_durable effect. Workflows must await "
            "coro_durable effects only (cd.call, cd.sleep, cd.await_signal, cd.gather, cd.now, ...); "
            "use cd.sleep instead of asyncio/anyio/trio.sleep, and wrap I/O in a step with cd.call"
        )


class NonDeterminismError(WorkflowError):
    """Replayed workflow code issued an effect that differs from the journal at the same seq."""

    def __init__(self, run_id: str, seq: int, recorded: str, issued: str) -> None:
        self.run_id = run_id
        self.seq = seq
        self.recorded = recorded
        self.issued = issued
        super().__init__(
            f"run {run_id!r} diverged from its journal at seq {seq}: the journal has {recorded}, "
            f"the code now issued {issued}. The workflow code changed under a running workflow or "
            "is not deterministic; restore the old code (or branch on data recorded in the "
            "journal) and resume the run. Nothing was written."
        )


class UnknownWorkflowError(WorkflowError, LookupError):
    """No workflow is registered under this name in this process (and, when ``served`` is
    given, no live worker serves it: ``Runtime.start`` refused to create a run nobody runs)."""

    def __init__(
        self,
        name: str,
        known: list[str],
        served: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.name = name
        self.served = dict(served) if served is not None else None
        listed = ", ".join(sorted(known)) or "none"
        if served is None:
            super().__init__(
                f"no workflow named {name!r} is registered in this process (registered: "
                f"{listed}). Import the module that defines it (e.g. `coro-durable worker --app "
                "yourmodule`) or pass workflows=[...] to Runtime"
            )
            return
        super().__init__(
            f"no workflow named {name!r} is registered in this process (registered: {listed}) "
            f"or served by a live worker ({_live_workers(served)}), so a run of it would wait "
            "forever. Check the name, or start a worker that serves it (`coro-durable worker "
            "--app yourmodule`), or pass allow_unknown=True (`--allow-unknown` on the command "
            "line) to start it before deploying a worker that serves it"
        )


def _live_workers(served: Mapping[str, Sequence[str]], most: int = 5) -> str:
    """``live workers: w1 serves a, b; w2 serves c`` (the first ``most`` of them)."""
    if not served:
        return "no worker is live"
    parts = [
        f"{worker} serves {', '.join(sorted(names)) or 'nothing'}"
        for worker, names in list(served.items())[:most]
    ]
    more = f"; and {len(served) - most} more" if len(served) > most else ""
    return "live workers: " + "; ".join(parts) + more


class EffectNotAllowedError(WorkflowError):
    """An effect or helper was used where it cannot work."""


class NotInWorkflowError(EffectNotAllowedError):
    """An effect was awaited outside a workflow run (e.g. ``await cd.call(f)`` in plain code)."""

    def __init__(self, effect: str) -> None:
        self.effect = effect
        super().__init__(
            f"`await {effect}` ran outside a workflow: effects only work inside an `async def` "
            "that a Runtime executes. Start the workflow with `await rt.start(workflow, ...)`, "
            "or call the function directly (without cd.call) in ordinary code"
        )


# -- step and effect outcomes -------------------------------------------------------------------


class StepError(CoroDurableError):
    """A step failed (after exhausting its retries).

    Raised inside the workflow at the ``await cd.call(...)``, so the workflow can catch it.
    ``type_name`` and ``message`` are those of the step's original exception; the journal keeps
    them, so the same error is raised again on replay without re-running the step.
    """

    def __init__(self, type_name: str, message: str, *, step: str = "", attempts: int = 0) -> None:
        self.type_name = type_name
        self.message = message
        self.step = step
        self.attempts = attempts
        where = f"step {step} " if step else ""
        tries = f" after {attempts} attempt(s)" if attempts else ""
        super().__init__(f"{where}failed{tries}: {type_name}: {message}")


class SignalTimeout(CoroDurableError, TimeoutError):
    """``await_signal(name, timeout=...)`` expired before the signal arrived."""


class StepTimeoutError(CoroDurableError, TimeoutError):
    """A step attempt timed out (``timeout=`` or ``heartbeat_timeout=``).

    The runtime has already given up on the attempt (its result will not be journaled) and
    retries the step per its policy; ``cd.heartbeat()`` raises this inside the abandoned attempt
    (a sync step's thread cannot be killed) so the body can stop its work."""


class SerializationError(CoroDurableError, TypeError):
    """A value could not be encoded to (or decoded from) the journal's JSON form."""


class PayloadTooLargeError(SerializationError):
    """An encoded payload is larger than the configured ``max_payload_bytes``."""


# -- runs ------------------------------------------------------------------------------------------


class RunError(CoroDurableError):
    """About a run as a whole."""


class RunNotFoundError(RunError, LookupError):
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no run with id {run_id!r} in this store; check the id and the store URL")


class RunAlreadyExistsError(RunError):
    """``start`` was called with an existing run_id but another workflow or other inputs."""

    def __init__(self, run_id: str, message: str) -> None:
        self.run_id = run_id
        super().__init__(message)


class RunFailedError(RunError):
    """The run ended with an uncaught exception; ``type_name``/``message`` are the original's."""

    def __init__(self, run_id: str, type_name: str, message: str) -> None:
        self.run_id = run_id
        self.type_name = type_name
        self.message = message
        super().__init__(f"run {run_id!r} failed: {type_name}: {message}")


class RunQuarantinedError(RunError):
    """The run crashed its worker too often and is parked; fix the cause, then resume it."""

    def __init__(self, run_id: str, last_error: str) -> None:
        self.run_id = run_id
        self.last_error = last_error
        super().__init__(
            f"run {run_id!r} is quarantined after repeated crashes (last error: {last_error}). "
            f"Fix the cause, then `coro-durable resume {run_id}` or `await rt.resume({run_id!r})`"
        )


class ResultTimeoutError(RunError, TimeoutError):
    """``result(timeout=...)`` expired while the run was still going."""

    def __init__(self, run_id: str, message: str) -> None:
        self.run_id = run_id
        super().__init__(message)


# -- stores -----------------------------------------------------------------------------------------


class StoreError(CoroDurableError):
    """The store failed. Backend drivers translate their own exceptions into this tree.

    Drivers raise :class:`TransientStoreError` or :class:`PermanentStoreError` when they can tell
    which it is; a plain StoreError (a third-party store, an unclassified failure) is retried like
    a transient one.
    """


class TransientStoreError(StoreError):
    """A store failure that retrying can fix: the connection was refused or lost, the database
    is busy or locked, a request timed out, the server is failing over or its disk is full.

    The runtime retries the call with backoff up to ``store_deadline`` seconds (logging one
    warning), then raises :class:`StoreUnavailableError`.
    """


class StoreUnavailableError(TransientStoreError):
    """The store stayed unreachable (or locked) past a deadline: ``store_deadline``, a store's
    ``open_timeout`` or SQLite's ``busy_timeout``."""


class PermanentStoreError(StoreError):
    """A store failure that retrying cannot fix: a read-only database or file, permission or
    credentials refused, a file or directory that cannot be opened or created, an unknown host,
    a database or schema that does not exist. Raised at once; the message says what to fix."""


class CorruptJournalError(StoreError):
    """A stored row failed its checksum or could not be decoded; the run is quarantined."""


class StorePluginMissingError(PermanentStoreError, ImportError):
    """No store is installed for a URL scheme."""


class ConflictError(StoreError):
    """A journal write found its seq already taken by a different entry."""


class ConfigurationError(CoroDurableError, ValueError):
    """Invalid configuration: a bad store URL, RetryPolicy, Runtime option..."""


class LeaseLost(BaseException):
    """This worker no longer holds the run's lease (another worker took it over).

    Raised by fenced store writes. It derives from BaseException so workflow code that catches
    Exception cannot swallow it; the runtime catches it, logs it and drops the activation.
    """

    def __init__(self, run_id: str, epoch: int, detail: str = "") -> None:
        self.run_id = run_id
        self.epoch = epoch
        super().__init__(
            f"lease on run {run_id!r} lost (our fencing token {epoch} is stale"
            + (f"; {detail}" if detail else "")
            + "): another worker owns the run now; this worker writes nothing more for it"
        )


class RunCancelledError(BaseException):
    """The run was cancelled.

    Raised inside the workflow at the await that was pending when the cancel arrived (the
    workflow may catch it and still await cleanup effects, which run and are journaled), by
    ``cd.heartbeat()`` inside a step of a cancelled run, and by ``result()``. It derives from
    BaseException, like ``asyncio.CancelledError``, so ``except Exception:`` in user code does
    not swallow a cancel; catch it by name."""

    def __init__(self, run_id: str, reason: str = "") -> None:
        self.run_id = run_id
        self.reason = reason
        super().__init__(f"run {run_id!r} was cancelled" + (f": {reason}" if reason else ""))
