"""The agent loop of ``reconciler run``: one reconcile at a time, on coalesced triggers.

Started by the CLI in the main thread (so that SIGTERM/SIGINT only set a flag: an apply in
progress runs to its end, then the loop returns). Watchers, API handlers and timers feed the
``Triggers`` queue; each wake-up runs one reconcile, chosen by what moved:

- the branch head moved (or ``POST /sync``): ``engine.apply`` of the head (``engine.diff`` in a dry run);
- the head did not move (drift timer, config-dir event, start-up, retry): ``engine.diff``; when it
  finds changes, they are drift: reverted by ``engine.apply`` with ``self_heal``, else reported;
- the head already failed: nothing, until the branch moves on (the engine would refuse it anyway);
- in a fleet, a head whose lower waves have not applied it yet: nothing but ``waiting`` (with the
  hosts waited for), checked again every ``[fleet].poll_interval`` (``engine.wave_gate``).

After every change of state (and at least once a reconcile, the fleet's heartbeat) the agent
reports itself in ``reconciler_hosts`` (``fleet.report``), which other hosts' wave checks read.

Errors are classified once (``reconciler.outcome.classify``): temporary ones set ``degraded`` and
retry with exponential backoff and jitter; the host's (a missing secret) set ``degraded`` naming the
secrets and retry when ``[secrets].dir`` changes (and every ``HOST_RETRY`` seconds); the revision's
set ``failed`` and park the head. Every attempt
that did something is appended to the history in the state dir. The status document is rebuilt
under a lock for the API thread.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
from structlog.contextvars import bound_contextvars

from reconciler import engine
from reconciler.agent import systemd
from reconciler.agent.history import Records, read_status
from reconciler.agent.metrics import Metrics, NotifyResult
from reconciler.agent.notify import Notifier
from reconciler.agent.outcome import Outcome, classify
from reconciler.agent.redact import Redactor
from reconciler.agent.source import BranchSource
from reconciler.agent.triggers import Reason, Triggers
from reconciler.agent.watchers import ConfigWatcher, DirWatcher, RefWatcher
from reconciler.apply import NO_FAULTS, ApplyFailed, Faults
from reconciler.db import connect
from reconciler.errors import Fault
from reconciler.fleet import Report, WaveCheck, read_fleet, report
from reconciler.models import AgentConfig
from reconciler.plan import Kind, Plan
from reconciler.render import plan_json
from reconciler.source_remote import public_url
from reconciler.state import StateDir
from reconciler.status import AgentState, Attempt, AttemptResult, DriftItem, Fleet, HeadCommit, Status

log = structlog.get_logger("reconciler.agent")

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


def drift_items(plan: Plan) -> list[DriftItem]:
    """The changes of a plan as drift items (the service action is a consequence, not drift)."""
    return [
        DriftItem(kind=c.kind.value, action=c.action.value, target=c.target)
        for c in plan.changes
        if c.kind is not Kind.SERVICE
    ]


def _count(plan: Plan) -> int:
    return sum(1 for c in plan.changes if c.kind is not Kind.SERVICE)


def _now() -> datetime:
    return datetime.now(UTC)


def _empty_plan_json(revision: str | None) -> str:
    return json.dumps({"revision": revision, "changes": []}, indent=2) + "\n"


def _trigger_name(reasons: Iterable[Reason]) -> str:
    order = list(Reason)
    return ",".join(sorted((r.value for r in reasons), key=lambda v: order.index(Reason(v))))


@dataclass(frozen=True)
class _Run:
    """What one attempt is about (in-memory): builds its ``Attempt`` record."""

    run_id: str
    trigger: str
    started: float  # monotonic
    started_at: datetime
    revision: str | None = None
    subject: str | None = None
    author: str | None = None

    def seconds(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def attempt(self, result: AttemptResult, **fields: Any) -> Attempt:
        return Attempt(
            revision=self.revision,
            subject=self.subject,
            author=self.author,
            trigger=self.trigger,
            run_id=self.run_id,
            started_at=self.started_at,
            finished_at=_now(),
            duration=self.seconds(),
            result=result,
            **fields,
        )


class Agent:
    """The long-running reconciler (see the module docstring); ``run`` blocks until ``stop``."""

    def __init__(self, cfg: AgentConfig, *, dry_run: bool = False, faults: Faults = NO_FAULTS) -> None:
        self.cfg = cfg
        self.dry_run = dry_run
        self.faults = faults  # test hooks, read by the CLI from its environment, for every apply
        self.source = BranchSource(cfg)
        self.triggers = Triggers()
        self.redact = Redactor(cfg)
        self.state_dir = StateDir(cfg.state.dir)
        self.records = Records(Path(cfg.state.dir))
        self.config_watcher = ConfigWatcher(Path(cfg.postfix.config_dir), self._on_config_event)
        self.ref_watcher: RefWatcher | None = None
        self.secrets_watcher: DirWatcher | None = None
        self._lock = threading.Lock()
        self._history = self.records.history()
        previous = read_status(Path(cfg.state.dir))
        self._synced: str | None = previous.applied_revision if previous else self.state_dir.read_inventory().revision
        self._state = AgentState.OUT_OF_SYNC  # until the start-up reconcile says otherwise
        self._head: str | None = None
        self._head_commit: HeadCommit | None = None  # read in _set_head, as soon as the head moves
        self._head_moved_at: float | None = None  # wall time the head was first seen unapplied
        self._last_attempt: Attempt | None = self._history[0] if self._history else None
        self._drift: list[DriftItem] = []
        self._pending: str | None = None  # the pending plan as ``diff --format json`` prints it
        self._pending_changes = 0
        self._plan_error: str | None = None  # why there is no pending plan
        self._failed: dict[str, str] = {}  # head -> error, in memory (a dry run records nothing on disk)
        self._failures = 0  # consecutive temporary errors
        self._next_retry_at: datetime | None = None
        self._missing_secrets: list[str] = []  # what a host fault waits for
        self._busy_since: float | None = None
        self._last_full_scan = float("-inf")  # monotonic time of the last row check hashing every row
        self._running = False
        self._stop_reason = ""
        self.host_name = cfg.host.resolved()
        self._wave = 0  # from this host's hosts/<name>.yaml in the head, once read
        self._waiting: WaveCheck | None = None  # set while state is waiting
        self._reports = 0  # fleet reports sent; a reconcile that sent none sends a heartbeat
        self.metrics = Metrics(lambda: self._head_moved_at)
        self.notifier = Notifier(cfg, redact=self.redact, count=self._count_notification)

    # -- what the API reads (any thread) ---------------------------------------------------------

    @property
    def registry(self) -> CollectorRegistry:
        """The Prometheus registry of the agent's metrics."""
        return self.metrics.registry

    def status(self) -> Status:
        """The current status document."""
        with self._lock:
            return Status(
                state=self._state,
                head_revision=self._head,
                head_commit=self._head_commit,
                applied_revision=self._synced,
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
                updated_at=_now(),
                host=self.host_name,
                waiting_for=list(self._waiting.waiting_for) if self._waiting else [],
                waiting_reason=self._waiting.reason if self._waiting else None,
            )

    def fleet(self) -> Fleet:
        """The fleet document (``GET /fleet``), read from the database now."""
        return read_fleet(self.cfg)

    def pending_plan_json(self) -> str | None:
        """The pending plan (``diff --format json``), None when there is none (see ``plan_error``)."""
        with self._lock:
            return self._pending

    def plan_error(self) -> str | None:
        with self._lock:
            return self._plan_error

    def alive(self) -> bool:
        """Whether the loop runs and is not stuck in one attempt."""
        busy = self._busy_since
        return self._running and (busy is None or time.monotonic() - busy < BUSY_LIMIT)

    def request(self, reason: str) -> None:
        """Ask for a reconcile (``sync`` or ``webhook``, from the API)."""
        self.triggers.request(Reason(reason))

    def stop(self, why: str = "stop") -> None:
        """Make ``run`` return after the attempt in progress; safe from a signal handler (it logs nothing)."""
        self._stop_reason = why
        self.triggers.stop()

    # -- the loop --------------------------------------------------------------------------------

    def _count_notification(self, result: NotifyResult) -> None:
        self.metrics.notifications.labels(result=result.value).inc()

    def _on_config_event(self) -> None:
        self.triggers.request(Reason.DRIFT_FILE, debounce=DRIFT_DEBOUNCE)

    def _on_ref_event(self) -> None:
        self.triggers.request(Reason.REF)

    def _on_secrets_event(self) -> None:
        self.triggers.request(Reason.SECRETS, debounce=DRIFT_DEBOUNCE)

    def start_watchers(self) -> None:
        """Start the filesystem watchers (before the first reconcile, so no push is missed)."""
        if not self.source.remote:
            try:
                self.ref_watcher = RefWatcher(self.source.repo_path, self.source.branch, self._on_ref_event)
                self.ref_watcher.start()
            except Exception as exc:  # the repository may not exist yet: degraded, retried
                log.warning("agent.ref_watch_failed", error=str(exc))
                self.ref_watcher = None
        self.config_watcher.set_managed(self.state_dir.read_inventory().files)
        self.config_watcher.start()
        try:
            self.secrets_watcher = DirWatcher(Path(self.cfg.secrets.dir), self._on_secrets_event)
            self.secrets_watcher.start()
        except Exception as exc:  # no secrets dir (yet): a host fault is still retried every HOST_RETRY s
            log.warning("agent.secrets_watch_failed", path=self.cfg.secrets.dir, error=str(exc))
            self.secrets_watcher = None

    def stop_watchers(self) -> None:
        for watcher in (self.ref_watcher, self.config_watcher, self.secrets_watcher):
            if watcher is not None:
                watcher.stop()

    def run(self) -> None:
        """Reconcile on every trigger until ``stop``; returns after the attempt in progress."""
        self._running = True
        self.notifier.start()
        self.start_watchers()
        self.triggers.request(Reason.START)
        pinger = threading.Thread(target=self._ping_watchdog, name="sd-watchdog", daemon=True)
        pinger.start()
        systemd.notify("READY=1", "STATUS=started")
        log.info(
            "agent.started",
            source=public_url(self.cfg.source.url),
            branch=self.cfg.source.branch,
            dry_run=self.dry_run,
            self_heal=self.cfg.policy.self_heal,
        )
        try:
            while True:
                reasons = self.triggers.wait()
                if self.triggers.stopping:
                    log.info("agent.stopping", reason=self._stop_reason)
                    break
                if not reasons:
                    continue
                self._busy_since = time.monotonic()
                try:
                    self.reconcile(reasons)
                except Exception:  # a bug must not kill the agent: log it, retry later
                    log.exception("agent.unexpected_error")
                    self.triggers.schedule(Reason.RETRY, BACKOFF_MAX)
                finally:
                    self._busy_since = None
        finally:
            systemd.notify("STOPPING=1")
            self._running = False
            self.stop_watchers()
            self.notifier.close()
            log.info("agent.stopped")

    def _ping_watchdog(self) -> None:
        interval = systemd.watchdog_interval()
        if interval is None:
            return
        while self._running:
            if self.alive():
                systemd.notify("WATCHDOG=1")
            time.sleep(interval)

    # -- one reconcile -----------------------------------------------------------------------------

    def reconcile(self, reasons: set[Reason]) -> None:
        """One attempt for the coalesced ``reasons``."""
        run = _Run(uuid.uuid4().hex[:12], _trigger_name(reasons), time.monotonic(), _now())
        reports = self._reports
        try:
            self._reconcile(reasons, run)
        finally:
            if self._reports == reports:
                self._report(self.status())  # the heartbeat: last_seen moves on every reconcile

    def _reconcile(self, reasons: set[Reason], run: _Run) -> None:
        with bound_contextvars(run_id=run.run_id, trigger=run.trigger):
            fetched = False
            try:
                if self.source.remote and reasons & FETCH_REASONS:
                    fetched = True
                    self.source.fetch()
                head = self.source.head()
            except Exception as exc:
                self._failed_attempt(classify(exc), replace(run, revision=self._head), planned_changes=0)
                return
            finally:
                if fetched:
                    self.triggers.schedule(Reason.POLL, self.cfg.source.poll_interval)
            if self.ref_watcher is None and not self.source.remote:
                self.start_ref_watcher_late()
            self._set_head(head)
            with bound_contextvars(revision=head[:12]):
                self._reconcile_head(head, reasons, run)
            if self._state is not AgentState.DEGRADED:  # while degraded, the backoff timer retries
                self.triggers.schedule(Reason.DRIFT_TIMER, self.cfg.policy.drift_check_interval)

    def _full_scan_due(self) -> bool:
        interval = self.cfg.policy.full_scan_interval
        return interval == 0 or time.monotonic() - self._last_full_scan >= interval

    def start_ref_watcher_late(self) -> None:
        try:
            self.ref_watcher = RefWatcher(self.source.repo_path, self.source.branch, self._on_ref_event)
            self.ref_watcher.start()
        except Exception as exc:
            log.warning("agent.ref_watch_failed", error=str(exc))
            self.ref_watcher = None

    def _reconcile_head(self, head: str, reasons: set[Reason], run: _Run) -> None:
        failed = self._failed_error(head)
        if failed is not None:
            # Parked: not retried until the branch moves on (engine.apply would refuse it as well).
            with self._lock:
                changed = self._state is not AgentState.FAILED
                self._state = AgentState.FAILED
                self._plan_error = failed
                self._pending, self._pending_changes = None, 0
            if changed:
                log.info("reconcile.parked", reason="revision failed before", error=failed)
                self._publish()
            return
        head_moved = head != self._synced
        if not head_moved and not reasons & CHECK_REASONS:
            return  # a ref write that did not move the branch, or a poll that fetched nothing new
        if head_moved and not self.dry_run:
            try:
                gate = engine.wave_gate(self.source.engine_config, head)
            except Exception as exc:
                self._failed_attempt(classify(exc), replace(run, revision=head), planned_changes=0)
                return
            if gate is not None:
                self._wave = gate[0]
                if not gate[1].ready:
                    self._wait(gate[1])
                    return
        if self._waiting is not None:
            with self._lock:
                self._waiting = None
        meta = self.source.commit_meta(head)
        run = replace(run, revision=head, subject=meta.subject, author=meta.author)
        cfg = self.source.engine_config
        planned_changes = 0
        declined: list[Plan] = []
        drift_only = not (head_moved or Reason.SYNC in reasons)

        def should_apply(planned: engine.Planned) -> bool:
            # Called by engine.apply with the plan it is about to execute: the plan shown as drift
            # (or declined without self-heal) is exactly the plan applied, never a second one.
            nonlocal planned_changes
            planned_changes = _count(planned.plan)
            if drift_only and not self.cfg.policy.self_heal:
                declined.append(planned.plan)
                return False
            if drift_only:
                log.info("drift.detected", items=[d.target for d in drift_items(planned.plan)], self_heal=True)
            self._set_state(AgentState.APPLYING)
            self.config_watcher.applying(True)
            self.notifier.apply_started(head, drift=drift_only)
            return True

        try:
            if self.dry_run:
                planned = engine.diff(cfg, head)
                self._planned(head, head_moved, planned.plan, run)
                return
            try:
                # Every [policy].full_scan_interval the periodic row check hashes every row; other
                # checks trust the trigger-kept digests (and their counts).
                full_scan = Reason.DRIFT_TIMER in reasons and self._full_scan_due()
                if full_scan:
                    self._last_full_scan = time.monotonic()
                    log.info("drift.full_scan")
                planned, result = engine.apply(
                    cfg, head, should_apply=should_apply, full_scan=full_scan, faults=self.faults
                )
            finally:
                self.config_watcher.applying(False)
                self.config_watcher.set_managed(self.state_dir.read_inventory().files)
            if declined or (drift_only and not result.changed):
                self._planned(head, head_moved, declined[0] if declined else planned.plan, run)
                return
        except Exception as exc:
            outcome = classify(exc)
            self._failed_attempt(outcome, run, planned_changes)
            if isinstance(exc, ApplyFailed) and outcome.parks:
                self._refresh_pending(head)
            return
        changes = _count(planned.plan)
        attempt = run.attempt(AttemptResult.APPLIED if result.changed else AttemptResult.NO_CHANGE, changes=changes)
        self._synced_at(head, record=attempt if (head_moved or result.changed) else None)
        log.info(
            "reconcile.done",
            result=attempt.result.value,
            changes=changes,
            files=result.files,
            tables=result.tables,
            rows=result.rows,
            service=result.service,
            seconds=attempt.duration,
            state=AgentState.SYNCED.value,
        )

    def _wait(self, check: WaveCheck) -> None:
        """Hold the head: lower waves do not have it applied and healthy yet (state ``waiting``)."""
        with self._lock:
            changed = self._state is not AgentState.WAITING or self._waiting != check
            self._state = AgentState.WAITING
            self._waiting = check
            self._failures, self._next_retry_at = 0, None
        self.triggers.cancel(Reason.RETRY)
        self.triggers.schedule(Reason.WAVE, self.cfg.fleet.poll_interval)
        if changed:
            log.info("reconcile.waiting", waiting_for=list(check.waiting_for), reason=check.reason)
            self._publish()

    def _report(self, status: Status) -> None:
        """Tell the fleet where this host stands (its ``reconciler_hosts`` row); never fails the loop."""
        if self.dry_run:
            return
        self._reports += 1
        last = status.last_attempt
        failed = status.head_revision if status.state is AgentState.FAILED else None
        error = last.error if last is not None and status.state in (AgentState.FAILED, AgentState.DEGRADED) else None
        if status.state is AgentState.WAITING:
            error = status.waiting_reason
        row = Report(
            host=self.host_name,
            wave=self._wave,
            state=status.state.value,
            applied_revision=status.applied_revision,
            head_revision=status.head_revision,
            error=error,
            failed_revision=failed,
            waiting_for=tuple(status.waiting_for),
        )
        try:
            conn = connect(self.cfg.mysql, autocommit=True)
        except Exception as exc:
            log.debug("fleet.report_failed", error=str(exc))
            return
        try:
            report(conn, row)
        except Exception as exc:
            log.debug("fleet.report_failed", error=str(exc))
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def _planned(self, head: str, head_moved: bool, plan: Plan, run: _Run) -> None:
        """A plan that is not applied: in sync, drift reported (no self-heal), or a dry run."""
        duration = run.seconds()
        if plan.empty:
            attempt = run.attempt(AttemptResult.NO_CHANGE) if head_moved else None
            was = self._state
            self._synced_at(head, record=attempt)
            if was is not AgentState.SYNCED or attempt is not None:
                log.info("reconcile.done", result="in_sync", changes=0, seconds=duration, state="synced")
            return
        items = drift_items(plan)
        with self._lock:
            last = self._last_attempt
            # A dry run records one "planned" attempt per revision, not one per check.
            record = None
            if self.dry_run and (last is None or last.revision != head or last.result is not AttemptResult.PLANNED):
                record = run.attempt(AttemptResult.PLANNED, changes=len(items))
                self._last_attempt = record
                self._history = self._store(record)
            new_drift = [] if head_moved else items
            drift_changed = [d.target for d in new_drift] != [d.target for d in self._drift]
            state_changed = self._state is not AgentState.OUT_OF_SYNC
            self._state = AgentState.OUT_OF_SYNC
            self._drift = new_drift
            self._pending, self._pending_changes, self._plan_error = plan_json(plan), len(items), None
            self._failures, self._next_retry_at, self._missing_secrets = 0, None, []
        self.triggers.cancel(Reason.RETRY)
        if drift_changed or state_changed:
            if new_drift:
                log.warning("drift.detected", items=[d.target for d in new_drift], self_heal=False)
            log.info("reconcile.done", result="out_of_sync", changes=len(items), seconds=duration, dry_run=self.dry_run)
        self._publish()

    def _synced_at(self, head: str, *, record: Attempt | None) -> None:
        with self._lock:
            self._state = AgentState.SYNCED
            self._synced = head
            self._head_moved_at = None
            self._drift = []
            self._pending, self._pending_changes, self._plan_error = _empty_plan_json(head), 0, None
            self._failures, self._next_retry_at, self._missing_secrets = 0, None, []
            if record is not None:
                self._last_attempt = record
                self._history = self._store(record)
        self.triggers.cancel(Reason.RETRY)
        if record is not None:
            self.metrics.reconciles.labels(result=record.result.value).inc()
            self.metrics.duration.observe(record.duration)
        self.metrics.last_success.set(time.time())
        self._publish()

    def _failed_attempt(self, outcome: Outcome, run: _Run, planned_changes: int) -> None:
        error = self.redact(outcome.error) or ""
        attempt = run.attempt(outcome.result, error=error, failed_step=outcome.failed_step, changes=planned_changes)
        duration = attempt.duration
        if outcome.unexpected:
            log.error("reconcile.unexpected", error=error, exc_info=True)
        self.metrics.reconciles.labels(result=outcome.result.value).inc()
        self.metrics.duration.observe(duration)
        if not outcome.parks:
            # Temporary (backoff) or the host's fault (retried when [secrets].dir changes, and slowly).
            host = outcome.fault is Fault.HOST
            with self._lock:
                self._failures += 1
                delay = HOST_RETRY if host else backoff(self._failures)
                last = self._last_attempt
                first = self._failures == 1 or (host and (last is None or last.error != error))
                self._state = outcome.state
                self._next_retry_at = datetime.fromtimestamp(time.time() + delay, UTC)
                self._missing_secrets = list(outcome.missing_secrets)
                self._last_attempt = attempt
                if host:  # no plan without the secret: /diff says why
                    self._pending, self._pending_changes, self._plan_error = None, 0, error
                if first:  # one history entry per outage (or per host problem), not one per retry
                    self._history = self._store(attempt)
            self.triggers.schedule(Reason.RETRY, delay)
            log.warning(
                "reconcile.done",
                result=outcome.result.value,
                fault=outcome.fault.value,
                error=error,
                missing_secrets=list(outcome.missing_secrets),
                retry_in=round(delay, 2),
                state=outcome.state.value,
            )
        else:
            with self._lock:
                self._failures, self._next_retry_at, self._missing_secrets = 0, None, []
                self._state = outcome.state
                self._failed[run.revision or ""] = error
                self._last_attempt = attempt
                self._history = self._store(attempt)
                self._pending, self._pending_changes, self._plan_error = None, 0, error
            self.triggers.cancel(Reason.RETRY)
            log.error(
                "reconcile.done",
                result=outcome.result.value,
                fault=outcome.fault.value,
                step=outcome.failed_step,
                error=error,
                seconds=duration,
                state=outcome.state.value,
            )
        self._publish()

    def _refresh_pending(self, head: str) -> None:
        """After a rolled-back apply, show what is still pending (``GET /diff``)."""
        try:
            planned = engine.diff(self.source.engine_config, head)
        except Exception as exc:
            log.info("reconcile.pending_unknown", error=self.redact(str(exc)))
            return
        with self._lock:
            self._pending, self._pending_changes = plan_json(planned.plan), _count(planned.plan)

    # -- bookkeeping -------------------------------------------------------------------------------

    def _failed_error(self, head: str) -> str | None:
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
            return [attempt, *self._history][:50]
        try:
            return self.records.add(attempt, self._history)
        except OSError as exc:  # a full or read-only state dir: kept in memory, written with the next one
            log.warning("history.write_failed", error=str(exc))
            return [attempt, *self._history][:50]

    def _set_head(self, head: str) -> None:
        commit = None
        if head != self._head:  # only this thread writes _head
            meta = self.source.commit_meta(head)
            commit = HeadCommit(subject=self.redact(meta.subject), author=self.redact(meta.author), time=meta.time)
        with self._lock:
            if commit is not None:
                self.metrics.head.info({"revision": head})
                self._head_commit = commit
            self._head = head
            if head == self._synced:
                self._head_moved_at = None
            elif self._head_moved_at is None:
                self._head_moved_at = time.time()

    def _set_state(self, state: AgentState) -> None:
        with self._lock:
            self._state = state
        self._publish()

    def _publish(self) -> None:
        """Push the state to the metrics, systemd and (outside a dry run) the state dir."""
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
        self._report(status)
