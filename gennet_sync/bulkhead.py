"""Bulkheads: at most N calls in flight to one service per process.

A slow downstream would otherwise take every worker thread; with a bulkhead the
calls beyond N are refused at once (:class:`~gennet_sync.exceptions.BulkheadFullError`,
503) and the threads stay free for everything else.  Pure: no Flask, no requests.
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Final, ParamSpec, TypeVar

from gennet_sync.exceptions import BulkheadFullError

__all__ = ["BULKHEAD_RETRY_AFTER", "Bulkhead", "clear_bulkheads", "get_bulkhead", "remove_bulkhead"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: ``Retry-After`` (seconds) of a refusal: slots free up as soon as calls end.
BULKHEAD_RETRY_AFTER: Final = 1


class Bulkhead:
    """At most ``max_concurrent_calls`` calls at a time; the next is refused or waits briefly.

    The lock guards only the count: it is never held while a call runs, and a
    refused call waits for nothing (with ``max_wait``, for a free slot at most that
    long).  Use it as a context manager or a decorator; ``ServiceSession`` uses
    one per service (``max_concurrent_calls=``).

    Example::

        grn_calls = Bulkhead("grn", max_concurrent_calls=8)

        @grn_calls
        def fetch(network_id): ...

        with grn_calls:
            fetch("abc")

    Args:
        name: The service it protects, named in refusals.
        max_concurrent_calls: Calls allowed at once (>= 1).
        max_wait: Seconds a call may wait for a slot before it is refused; 0: none.

    Attributes:
        admitted: Calls let in since creation.
        rejected: Calls refused since creation.
        peak: The most calls that were ever in flight at once.
    """

    def __init__(self, name: str, max_concurrent_calls: int, max_wait: float = 0.0) -> None:
        if isinstance(max_concurrent_calls, bool) or max_concurrent_calls < 1:
            raise ValueError(f"max_concurrent_calls must be >= 1, got {max_concurrent_calls!r}")
        if not max_wait >= 0:
            raise ValueError(f"max_wait must be >= 0, got {max_wait!r}")
        self.name = name
        self.max_concurrent_calls = max_concurrent_calls
        self.max_wait = float(max_wait)
        self._lock = threading.Lock()
        self._in_flight = 0
        # Calls waiting for a slot, oldest first: a freed slot goes to the oldest,
        # so a call that waits is not overtaken by calls that came after it.
        self._waiters: deque[_Waiter] = deque()
        self.admitted = 0
        self.rejected = 0
        self.peak = 0
        _every_bulkhead.add(self)

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return self._in_flight

    def acquire(self, timeout: float | None = None) -> None:
        """Take a slot for one call; :meth:`release` it when the call ends.

        Args:
            timeout: Wait at most this long for a slot, if less than ``max_wait``
                (the time a call has left); ``None``: ``max_wait``.

        Raises:
            BulkheadFullError: Every slot is taken (for ``max_wait`` seconds, or
                ``timeout`` if shorter).
        """
        # The lock is taken by hand, here and in release(): ``with`` costs twice as
        # much, and every call passes through both.
        lock = self._lock
        lock.acquire()
        try:
            if self._in_flight < self.max_concurrent_calls and not self._waiters:
                # Admitted: what every call passes through, kept to a few operations.
                in_flight = self._in_flight = self._in_flight + 1
                self.admitted += 1
                self.peak = max(self.peak, in_flight)
                return
            wait = self.max_wait if timeout is None else min(self.max_wait, max(timeout, 0.0))
            if wait > 0:
                waiter = _Waiter(lock)
                self._waiters.append(waiter)
                waiter.wait_for(lambda: waiter.granted, wait)
                if waiter.granted:  # the slot was handed over by release()
                    return
                self._waiters.remove(waiter)
            self.rejected += 1
        finally:
            lock.release()
        raise self._refusal()

    def release(self) -> None:
        """Give back the slot a call took with :meth:`acquire`."""
        lock = self._lock
        lock.acquire()
        try:
            if self._in_flight <= 0:
                raise RuntimeError(f"bulkhead {self.name!r} released more often than acquired")
            if self._waiters:
                # Handed to the oldest waiter as it is: the count stays.
                waiter = self._waiters.popleft()
                waiter.granted = True
                self.admitted += 1
                waiter.notify()
            else:
                self._in_flight -= 1
        finally:
            lock.release()

    def _refusal(self) -> BulkheadFullError:
        return BulkheadFullError(
            f"Service '{self.name}' already has {self.max_concurrent_calls} calls in flight",
            service=self.name,
            retry_after=BULKHEAD_RETRY_AFTER,
            metadata={"max_concurrent_calls": self.max_concurrent_calls},
        )

    def __enter__(self) -> Bulkhead:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __call__(self, func: Callable[_P, _R]) -> Callable[_P, _R]:
        """Decorate ``func``: each call of it takes a slot."""

        @functools.wraps(func)
        def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            self.acquire()
            try:
                return func(*args, **kwargs)
            finally:
                self.release()

        return guarded

    def __repr__(self) -> str:
        return (
            f"<Bulkhead {self.name!r} {self._in_flight}/{self.max_concurrent_calls} in flight, "
            f"{self.rejected} rejected>"
        )


class _Waiter(threading.Condition):
    """One call waiting for a slot; ``granted`` once :meth:`Bulkhead.release` hands it one."""

    def __init__(self, lock: threading.Lock) -> None:
        super().__init__(lock)
        self.granted = False


_registry: dict[str, Bulkhead] = {}
_registry_lock = threading.Lock()
#: Every bulkhead alive, for the reset after a fork.
_every_bulkhead: weakref.WeakSet[Bulkhead] = weakref.WeakSet()


def _reset_after_fork() -> None:
    """A forked child starts with every slot free and fresh locks.

    The calls that held slots in the parent (its other threads) do not exist in
    the child and would never give them back; a lock held at the fork would
    never be released either.
    """
    global _registry_lock  # noqa: PLW0603
    _registry_lock = threading.Lock()
    for bulkhead in list(_every_bulkhead):
        bulkhead._lock = threading.Lock()
        bulkhead._in_flight = 0
        bulkhead._waiters = deque()


if hasattr(os, "register_at_fork"):  # not on every platform (Windows)
    os.register_at_fork(after_in_child=_reset_after_fork)


def get_bulkhead(name: str, max_concurrent_calls: int, max_wait: float = 0.0) -> Bulkhead:
    """The process's bulkhead for service ``name``, made on first use.

    Every ``ServiceSession`` for one service shares it, as they share its breaker.

    Raises:
        ValueError: A bulkhead of that name exists with other settings.
    """
    with _registry_lock:
        bulkhead = _registry.get(name)
        if bulkhead is None:
            bulkhead = _registry[name] = Bulkhead(name, max_concurrent_calls, max_wait)
        elif (bulkhead.max_concurrent_calls, bulkhead.max_wait) != (
            max_concurrent_calls,
            float(max_wait),
        ):
            raise ValueError(
                f"bulkhead {name!r} exists with max_concurrent_calls="
                f"{bulkhead.max_concurrent_calls}, max_wait={bulkhead.max_wait}"
            )
        return bulkhead


def remove_bulkhead(name: str) -> None:
    """Forget the bulkhead of service ``name`` (calls holding its slots keep them)."""
    with _registry_lock:
        _registry.pop(name, None)


def clear_bulkheads() -> None:
    """Forget every service's bulkhead (sessions made before keep theirs)."""
    with _registry_lock:
        _registry.clear()
