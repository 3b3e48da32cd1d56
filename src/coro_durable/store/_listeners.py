"""``ListenerSet``: the one implementation of ``Store.subscribe`` and of waking the subscribers.

A store holds one ``ListenerSet``, answers ``subscribe(listener)`` with ``listeners.subscribe``
(which returns the unsubscribe function) and calls ``listeners.notify()`` on the event loop after
a write that may make work claimable (a run created or retried, a signal delivered, a cancel
requested, a lease released) and when its server says another process did. ``notify`` calls every
listener subscribed when it starts, so a listener may unsubscribe itself (or another) meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Listener", "ListenerSet"]

#: What ``Store.subscribe`` takes: called with no arguments when new work may be claimable.
Listener = Callable[[], None]


class ListenerSet:
    """The subscribers of one store."""

    __slots__ = ("_listeners",)

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add ``listener``; returns a function that removes it (calling that twice is harmless)."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def notify(self) -> None:
        """Call every current listener once."""
        for listener in tuple(self._listeners):
            listener()

    def __len__(self) -> int:
        return len(self._listeners)
