"""The agent's state under one lock: the status document, the history, and where both are published.

Owned by the ``Agent`` (``loop``), changed by the reconcile attempt (``reconcile``) from the loop
thread only, read by the API thread through ``status``. The transitions below change the state and
return what the caller needs to log and schedule; ``publish`` pushes the state to the metrics,
systemd, the state dir (outside a dry run) and the fleet table (``report``). Every recorded attempt
is prepended to the history (persisted by ``history.Records``) and queued to the notifier.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import structlog

from reconciler.agent import report, systemd
from reconciler.agent.attempt import Run, count_changes, empty_plan_json, now
from reconciler.agent.history import HISTORY_SIZE, Records, read_status
from reconciler.agent.metrics import Metrics
from reconciler.agent.notify import Notifier
from reconciler.agent.outcome import Outcome
from reconciler.agent.redact import Redactor
from reconciler.agent.schedule import HOST_RETRY, backoff
from reconciler.errors import Fault
from reconciler.fleet import WaveCheck
from reconciler.models import AgentConfig
from reconciler.plan import Plan
from reconciler.render import plan_json
from reconciler.source_remote import public_url
from reconciler.state import StateDir
from reconciler.status import AgentState, Attempt, AttemptResult, DriftItem, HeadCommit, Status

log = structlog.get_logger("reconciler.agent")


class Book:
    """The agent's state (see the module docstring); what is read without the lock only the loop thread writes."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        dry_run: bool,
        records: Records,
        state_dir: StateDir,
        redact: Redactor,
        metrics: Metrics,
        notifier: Notifier,
    ) -> None:
        self.cfg = cfg
        self.dry_run = dry_run
        self.records = records
        self.state_dir = state_dir
        self.redact = redact
        self.metrics = metrics
        self.notifier = notifier
        self.host_name = cfg.host.resolved()
        self._lock = threading.Lock()
        self._history = records.history()
        previous = read_status(Path(cfg.state.dir))
        self.synced: str | None = previous.applied_revision if previous else state_dir.read_inventory().revision
        self.state = AgentState.OUT_OF_SYNC  # until the start-up reconcile says otherwise
        self.head: str | None = None
        self._head_commit: HeadCommit | None = None  # read in set_head, as soon as the head moves
        self.head_moved_at: float | None = None  # wall time the head was first seen unapplied
        self._last_attempt: Attempt | None = self._history[0] if self._history else None
        self._drift: list[DriftItem] = []
        self._pending: str | None = None  # the pending plan as ``diff --format json`` prints it
        self._pending_changes = 0
        self._plan_error: str | None = None  # why there is no pending plan
        self._failed: dict[str, str] = {}  # head -> error, in memory (a dry run records nothing on disk)
        self._failures = 0  # consecutive temporary errors
        self._next_retry_at: datetime | None = None
        self._missing_secrets: list[str] = []  # what a host fault waits for
        self.wave = 0  # from this host's hosts/<name>.yaml in the head, once read
        self.waiting: WaveCheck | None = None  # set while state is waiting
        self.reports = 0  # fleet reports sent; a reconcile that sent none sends a heartbeat

    # -- what the API reads (any thread) ---------------------------------------------------------

    def status(self) -> Status:
        """The current status document."""
        with self._lock:
            return Status(
                state=self.state,
                head_revision=self.head,
                head_commit=self._head_commit,
                applied_revision=self.synced,
                last_attempt=self._last_attempt,
                drift=list(self._drift),
                history=list(self._history),
                dry_run=self.dry_run,
                self_heal=self.cfg.policy.self_heal,
                source=public_url(self.cfg.source.url),
                branch=self.cfg.source.branch,
                pending_changes=self._pending_changes,
                next_retry_at=self._next_retry_at,
                missing_secrets=list(self._missing_secrets),
                updated_at=now(),
                host=self.host_name,
                waiting_for=list(self.waiting.waiting_for) if self.waiting else [],
                waiting_reason=self.waiting.reason if self.waiting else None,
            )

    def pending_plan_json(self) -> str | None:
        with self._lock:
            return self._pending

    def plan_error(self) -> str | None:
        with self._lock:
            return self._plan_error

    # -- transitions (the loop thread) -------------------------------------------------------------

    def set_head(self, head: str, commit: HeadCommit | None) -> None:
        """The branch head as just read; ``commit`` its metadata when it moved."""
        with self._lock:
            if commit is not None:
                self.metrics.head.info({"revision": head})
                self._head_commit = commit
            self.head = head
            if head == self.synced:
                self.head_moved_at = None
            elif self.head_moved_at is None:
                self.head_moved_at = time.time()

    def set_state(self, state: AgentState) -> None:
        with self._lock:
            self.state = state
        self.publish()

    def parked(self, error: str) -> bool:
        """The head failed before: state ``failed`` until the branch moves on; whether the state changed."""
        with self._lock:
            changed = self.state is not AgentState.FAILED
            self.state = AgentState.FAILED
            self._plan_error = error
            self._pending, self._pending_changes = None, 0
        return changed

    def wait(self, check: WaveCheck) -> bool:
        """Hold the head for lower waves (state ``waiting``); whether the state or what it waits for changed."""
        with self._lock:
            changed = self.state is not AgentState.WAITING or self.waiting != check
            self.state = AgentState.WAITING
            self.waiting = check
            self._failures, self._next_retry_at = 0, None
        return changed

    def stop_waiting(self) -> None:
        if self.waiting is not None:
            with self._lock:
                self.waiting = None

    def synced_at(self, head: str, *, record: Attempt | None) -> None:
        """In sync at ``head``; ``record`` (if any) is added to the history."""
        with self._lock:
            self.state = AgentState.SYNCED
            self.synced = head
            self.head_moved_at = None
            self._drift = []
            self._pending, self._pending_changes, self._plan_error = empty_plan_json(head), 0, None
            self._failures, self._next_retry_at, self._missing_secrets = 0, None, []
            if record is not None:
                self._last_attempt = record
                self._history = self._store(record)

    def out_of_sync(self, head: str, run: Run, plan: Plan, items: list[DriftItem], drift: list[DriftItem]) -> bool:
        """A plan not applied (``items`` its changes, ``drift`` those shown as drift); whether that is news."""
        with self._lock:
            last = self._last_attempt
            # A dry run records one "planned" attempt per revision, not one per check.
            if self.dry_run and (last is None or last.revision != head or last.result is not AttemptResult.PLANNED):
                record = run.attempt(AttemptResult.PLANNED, changes=len(items))
                self._last_attempt = record
                self._history = self._store(record)
            drift_changed = [d.target for d in drift] != [d.target for d in self._drift]
            state_changed = self.state is not AgentState.OUT_OF_SYNC
            self.state = AgentState.OUT_OF_SYNC
            self._drift = drift
            self._pending, self._pending_changes, self._plan_error = plan_json(plan), len(items), None
            self._failures, self._next_retry_at, self._missing_secrets = 0, None, []
        return drift_changed or state_changed

    def retrying(self, outcome: Outcome, attempt: Attempt, error: str) -> float:
        """A temporary or host fault: state ``degraded`` until a retry; the seconds until that retry."""
        host = outcome.fault is Fault.HOST
        with self._lock:
            self._failures += 1
            delay = HOST_RETRY if host else backoff(self._failures)
            last = self._last_attempt
            first = self._failures == 1 or (host and (last is None or last.error != error))
            self.state = outcome.state
            self._next_retry_at = datetime.fromtimestamp(time.time() + delay, UTC)
            self._missing_secrets = list(outcome.missing_secrets)
            self._last_attempt = attempt
            if host:  # no plan without the secret: /diff says why
                self._pending, self._pending_changes, self._plan_error = None, 0, error
            if first:  # one history entry per outage (or per host problem), not one per retry
                self._history = self._store(attempt)
        return delay

    def failed(self, outcome: Outcome, revision: str, attempt: Attempt, error: str) -> None:
        """The revision's fault: state ``failed``, the revision parked."""
        with self._lock:
            self._failures, self._next_retry_at, self._missing_secrets = 0, None, []
            self.state = outcome.state
            self._failed[revision] = error
            self._last_attempt = attempt
            self._history = self._store(attempt)
            self._pending, self._pending_changes, self._plan_error = None, 0, error

    def set_pending(self, plan: Plan) -> None:
        """What is still pending after a rolled-back apply (``GET /diff``)."""
        with self._lock:
            self._pending, self._pending_changes = plan_json(plan), count_changes(plan)

    def failed_error(self, head: str) -> str | None:
        """Why ``head`` failed before (in memory, else the state dir's record), None if it did not."""
        if head in self._failed:
            return self._failed[head]
        if self.dry_run:
            return None
        recorded = self.state_dir.failed_revisions().get(head)
        if recorded is None or self.state_dir.read_inventory().revision == head:
            return None  # never failed, or applied since (``reconciler apply --rev`` retries it)
        error = self.redact(recorded) or recorded
        with self._lock:
            self._failed[head] = error
        return error

    def _store(self, attempt: Attempt) -> list[Attempt]:
        """Prepend ``attempt`` to the history (persisted, except in a dry run); call with the lock held."""
        self.notifier.attempt_finished(attempt)  # only queues: [notify] is sent from its own thread
        if self.dry_run:
            return [attempt, *self._history][:HISTORY_SIZE]
        try:
            return self.records.add(attempt, self._history)
        except OSError as exc:  # a full or read-only state dir: kept in memory, written with the next one
            log.warning("history.write_failed", error=str(exc))
            return [attempt, *self._history][:HISTORY_SIZE]

    # -- publishing --------------------------------------------------------------------------------

    def publish(self) -> None:
        """Push the state to the metrics, systemd and (outside a dry run) the state dir and the fleet."""
        status = self.status()
        self.metrics.state.state(status.state.value)
        self.metrics.drift_items.set(len(status.drift))
        self.metrics.pending_changes.set(status.pending_changes)
        if status.applied_revision:
            self.metrics.applied.info({"revision": status.applied_revision})
        short = (status.head_revision or "none")[:12]
        systemd.notify(f"STATUS={status.state.value}, head {short}")
        if not self.dry_run:
            try:
                self.records.write_status(status)
            except OSError as exc:
                log.warning("status.write_failed", error=str(exc))
        self.report(status)

    def report(self, status: Status) -> None:
        """Tell the fleet where this host stands (its ``reconciler_hosts`` row); never fails the loop."""
        if self.dry_run:
            return
        self.reports += 1
        report.send(self.cfg, report.fleet_row(self.host_name, self.wave, status))
