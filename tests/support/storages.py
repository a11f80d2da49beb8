"""A fake shared breaker storage that records what the breaker asks of it."""

from __future__ import annotations

from typing import Any, ClassVar

from gennet_sync.circuit_breaker import CircuitBreaker
from gennet_sync.storage import CircuitState, SharedState

__all__ = ["RecordingStorage"]


class RecordingStorage:
    """A shared storage that records calls, answers as told, and checks the lock is free.

    Every call is recorded as a tuple (the method's name, then its arguments);
    a method named in :attr:`raise_on` then raises ``ConnectionError``, as a
    storage that is down does.  A call made while :attr:`breaker` (which the
    test sets) holds its lock fails the test: storage I/O never runs under the
    lock; a subclass used without a breaker sets :attr:`checks_lock` to False.
    It keeps no fleet window (no ``sync_window``): a subclass adds one where a
    test needs it.

    Args:
        sync_interval: Seconds between the breaker's syncs (0: at every call).
    """

    shared: ClassVar[bool] = True
    checks_lock: ClassVar[bool] = True

    def __init__(self, sync_interval: float = 0.0) -> None:
        self.sync_interval = sync_interval
        self.calls: list[tuple[Any, ...]] = []
        self.breaker: CircuitBreaker | None = None
        #: What ``load`` answers.
        self.state: SharedState | None = SharedState(CircuitState.CLOSED)
        #: What ``record_failure`` answers.
        self.failure_answer: SharedState | None = None
        #: What ``acquire_trial`` answers.
        self.trial_answer: bool | None = True
        self.raise_on: set[str] = set()

    def _note(self, *call: Any) -> None:
        if self.checks_lock:
            assert self.breaker is not None
            assert not self.breaker._lock.locked(), f"{call[0]} called while holding the lock"
        self.calls.append(call)
        if call[0] in self.raise_on:
            raise ConnectionError("storage down")

    def load(self, name: str) -> SharedState | None:
        self._note("load", name)
        return self.state

    def record_failure(
        self, name: str, *, failure_threshold: int, open_for: float
    ) -> SharedState | None:
        self._note("record_failure", name, failure_threshold, open_for)
        return self.failure_answer

    def reset_failures(self, name: str) -> None:
        self._note("reset_failures", name)

    def set_open(self, name: str, open_for: float) -> None:
        self._note("set_open", name, open_for)

    def set_closed(self, name: str) -> None:
        self._note("set_closed", name)

    def acquire_trial(self, name: str, *, max_calls: int, lease: float) -> bool | None:
        self._note("acquire_trial", name, max_calls, lease)
        return self.trial_answer

    def release_trial(self, name: str) -> None:
        self._note("release_trial", name)
