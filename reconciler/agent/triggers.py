"""Coalescing trigger queue: why the agent should reconcile next, and when.

Written to by the watchers, the API handlers and the loop's own timers (from any thread); read by
the loop, which runs one reconcile at a time. Requests are coalesced by reason: however many
pushes arrive during an apply, the loop sees each reason once and runs one more reconcile after it.
Debounced requests (config-dir events) are due a short while after the last event of a burst.
The loop sleeps on a condition variable until the earliest due time: no busy polling.
"""

from __future__ import annotations

import threading
import time
from enum import StrEnum


class Reason(StrEnum):
    """Why a reconcile was requested."""

    START = "start"  # the agent just started
    REF = "ref"  # the branch ref of the local repository moved
    POLL = "poll"  # time to fetch the remote
    WEBHOOK = "webhook"  # POST /hooks/git
    SYNC = "sync"  # POST /sync: reconcile now, even without self-heal
    DRIFT_FILE = "drift_file"  # a managed file changed in the config dir
    DRIFT_TIMER = "drift_timer"  # periodic check of the rows (and files)
    RETRY = "retry"  # backoff after a temporary error (or the slow retry of a host fault)
    SECRETS = "secrets"  # a file of [secrets].dir changed: a host fault may be fixed, a secret rotated
    WAVE = "wave"  # a fleet host waiting for lower waves checks them again


DEBOUNCE_MAX = 2.0  # seconds: a continuous stream of events still triggers this often


class Triggers:
    """Pending reasons with the monotonic time each is due; thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[Reason, float] = {}
        self._first: dict[Reason, float] = {}  # first event of a debounced burst
        self._stopping = False

    def request(self, reason: Reason, *, debounce: float = 0.0) -> None:
        """Ask for a reconcile now, or ``debounce`` seconds after the last of a burst of requests."""
        now = time.monotonic()
        with self._cond:
            if debounce <= 0:
                self._due[reason] = min(self._due.get(reason, now), now)
            else:
                first = self._first.setdefault(reason, now)
                self._due[reason] = min(now + debounce, first + DEBOUNCE_MAX)
            self._cond.notify_all()

    def schedule(self, reason: Reason, delay: float) -> None:
        """Ask for a reconcile in ``delay`` seconds, replacing an earlier schedule of the same reason."""
        with self._cond:
            self._due[reason] = time.monotonic() + max(0.0, delay)
            self._first.pop(reason, None)
            self._cond.notify_all()

    def cancel(self, reason: Reason) -> None:
        with self._cond:
            self._due.pop(reason, None)
            self._first.pop(reason, None)

    def due_in(self, reason: Reason) -> float | None:
        """Seconds until ``reason`` is due (None when not pending)."""
        with self._cond:
            at = self._due.get(reason)
        return None if at is None else max(0.0, at - time.monotonic())

    def stop(self) -> None:
        """Wake the loop for good; ``wait`` returns an empty set from now on."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def wait(self, timeout: float | None = None) -> set[Reason]:
        """Block until some reasons are due (returned and cleared), ``stop``, or ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                ready = {r for r, at in self._due.items() if at <= now}
                if ready:
                    for r in ready:
                        del self._due[r]
                        self._first.pop(r, None)
                    return ready
                wake = min(self._due.values(), default=None)
                if deadline is not None:
                    if now >= deadline:
                        return set()
                    wake = deadline if wake is None else min(wake, deadline)
                self._cond.wait(None if wake is None else wake - now)
            return set()
