"""Prometheus metrics of the agent, in a registry of its own (``GET /metrics`` renders it).

Updated by the agent loop after every attempt; the "head not applied" age is computed at scrape
time. Label values are revisions and closed vocabularies only, never anything secret.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info

from reconciler.status import AgentState, AttemptResult


class NotifyResult(StrEnum):
    """What became of one notification (webhook event or commit status) or one try of it."""

    SENT = "sent"  # the receiver answered 2xx
    RETRIED = "retried"  # a try failed (network, timeout, 5xx, 429) and it is tried again after a backoff
    FAILED = "failed"  # given up: out of tries, or refused (another 4xx)
    DROPPED = "dropped"  # never sent: the queue was full, or the agent stopped first


BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    """The agent's metrics (see the module docstring)."""

    def __init__(self, unapplied_since: Callable[[], float | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reconciles = Counter(
            "reconciler_reconciles",
            "Reconcile attempts by result (no_change counts new revisions and self-heals only)",
            ["result"],
            registry=self.registry,
        )
        for result in AttemptResult:
            self.reconciles.labels(result=result.value)
        self.duration = Histogram(
            "reconciler_reconcile_duration_seconds",
            "Duration of reconcile attempts (validate, plan and apply)",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.applied = Info(
            "reconciler_applied_revision", "The revision the live state is synced to", registry=self.registry
        )
        self.head = Info("reconciler_head_revision", "The branch head as last read", registry=self.registry)
        self.drift_items = Gauge(
            "reconciler_drift_items", "Live differences from the applied revision not reverted", registry=self.registry
        )
        self.pending_changes = Gauge(
            "reconciler_pending_changes", "Changes in the pending plan (GET /diff)", registry=self.registry
        )
        self.last_success = Gauge(
            "reconciler_last_success_timestamp_seconds",
            "Unix time of the last attempt that ended synced (applied or nothing to do)",
            registry=self.registry,
        )
        self.notifications = Counter(
            "reconciler_notifications",
            "Webhook events and commit statuses by outcome: sent, retried (a try failed, tried again), "
            "failed (given up), dropped (queue full or agent stopping)",
            ["result"],
            registry=self.registry,
        )
        for outcome in NotifyResult:
            self.notifications.labels(result=outcome.value)
        self.state = Enum(
            "reconciler_state", "The agent's state", states=[s.value for s in AgentState], registry=self.registry
        )
        self.state.state(AgentState.SYNCED.value)
        unapplied = Gauge(
            "reconciler_head_unapplied_seconds",
            "Seconds since the branch head moved without being applied (0 when synced)",
            registry=self.registry,
        )

        def age() -> float:
            since = unapplied_since()
            return 0.0 if since is None else max(0.0, time.time() - since)

        unapplied.set_function(age)
