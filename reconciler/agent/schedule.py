"""When the agent reconciles again: the backoff after errors, the debounce of events, the busy limit.

Also which triggers fetch the remote and which check an unmoved head. Read by the loop (``loop``),
the reconcile attempt (``reconcile``) and the state it keeps (``book``); no state of its own.
"""

from __future__ import annotations

import random

from reconciler.agent.triggers import Reason

BACKOFF_BASE = 1.0  # seconds before the first retry after a temporary error
BACKOFF_MAX = 60.0
HOST_RETRY = 60.0  # seconds between retries of a host fault, besides the secrets dir's events
DRIFT_DEBOUNCE = 0.2  # seconds of quiet after a config-dir event before checking
BUSY_LIMIT = 900.0  # an attempt running longer than this makes the loop unhealthy (no watchdog ping)
FETCH_REASONS = frozenset({Reason.START, Reason.POLL, Reason.WEBHOOK, Reason.SYNC, Reason.RETRY})
CHECK_REASONS = frozenset(
    {Reason.START, Reason.SYNC, Reason.WEBHOOK, Reason.DRIFT_FILE, Reason.DRIFT_TIMER, Reason.RETRY, Reason.SECRETS}
)


def backoff(failures: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after ``failures`` consecutive temporary errors: exponential, capped, jittered."""
    ceiling = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, failures - 1))
    return (rng or random).uniform(ceiling / 2, ceiling)
