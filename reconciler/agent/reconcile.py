"""One reconcile of the agent loop: fetch, park, wave gate, plan or apply, and what each outcome does.

Called by the ``Agent`` loop (``loop``) once per wake-up with the coalesced trigger reasons. What
runs is chosen by what moved (see ``loop``); the outcome changes the agent's state (``book``), is
logged once, and sets the next timers (retry, drift check, poll, wave check) on the ``Triggers``.
Drift is a plan found for an unmoved head: reverted with ``[policy].self_heal``, else reported;
every ``[policy].full_scan_interval`` the periodic check hashes every row.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import replace

import structlog
from structlog.contextvars import bound_contextvars

from reconciler import engine
from reconciler.agent.attempt import Run, count_changes, drift_items, now, trigger_name
from reconciler.agent.book import Book
from reconciler.agent.metrics import Metrics
from reconciler.agent.notify import Notifier
from reconciler.agent.outcome import Outcome, classify
from reconciler.agent.redact import Redactor
from reconciler.agent.schedule import CHECK_REASONS, FETCH_REASONS
from reconciler.agent.source import BranchSource
from reconciler.agent.triggers import Reason, Triggers
from reconciler.agent.watchers import ConfigWatcher
from reconciler.apply import ApplyFailed, ApplyResult, Faults
from reconciler.fleet import WaveCheck
from reconciler.models import AgentConfig
from reconciler.plan import Plan
from reconciler.state import StateDir
from reconciler.status import AgentState, Attempt, AttemptResult, HeadCommit

log = structlog.get_logger("reconciler.agent")


class Reconciler:
    """Runs one attempt at a time for the loop (``reconcile``); holds only when the last full row scan ran."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        dry_run: bool,
        faults: Faults,
        source: BranchSource,
        triggers: Triggers,
        book: Book,
        metrics: Metrics,
        notifier: Notifier,
        redact: Redactor,
        state_dir: StateDir,
        config_watcher: ConfigWatcher,
        ensure_ref_watcher: Callable[[], None],
    ) -> None:
        self.cfg = cfg
        self.dry_run = dry_run
        self.faults = faults
        self.source = source
        self.triggers = triggers
        self.book = book
        self.metrics = metrics
        self.notifier = notifier
        self.redact = redact
        self.state_dir = state_dir
        self.config_watcher = config_watcher
        self.ensure_ref_watcher = ensure_ref_watcher  # a local repository created after start-up
        self._last_full_scan = float("-inf")  # monotonic time of the last row check hashing every row

    def reconcile(self, reasons: set[Reason]) -> None:
        """One attempt for the coalesced ``reasons``."""
        run = Run(uuid.uuid4().hex[:12], trigger_name(reasons), time.monotonic(), now())
        reports = self.book.reports
        try:
            self._reconcile(reasons, run)
        finally:
            if self.book.reports == reports:
                self.book.report(self.book.status())  # the heartbeat: last_seen moves on every reconcile

    def _reconcile(self, reasons: set[Reason], run: Run) -> None:
        with bound_contextvars(run_id=run.run_id, trigger=run.trigger):
            fetched = False
            try:
                if self.source.remote and reasons & FETCH_REASONS:
                    fetched = True
                    self.source.fetch()
                head = self.source.head()
            except Exception as exc:
                self._failed_attempt(classify(exc), replace(run, revision=self.book.head), planned_changes=0)
                return
            finally:
                if fetched:
                    self.triggers.schedule(Reason.POLL, self.cfg.source.poll_interval)
            self.ensure_ref_watcher()
            self._set_head(head)
            with bound_contextvars(revision=head[:12]):
                self._reconcile_head(head, reasons, run)
            if self.book.state is not AgentState.DEGRADED:  # while degraded, the backoff timer retries
                self.triggers.schedule(Reason.DRIFT_TIMER, self.cfg.policy.drift_check_interval)

    def _set_head(self, head: str) -> None:
        commit = None
        if head != self.book.head:  # only this thread writes the head
            meta = self.source.commit_meta(head)
            commit = HeadCommit(subject=self.redact(meta.subject), author=self.redact(meta.author), time=meta.time)
        self.book.set_head(head, commit)

    def _full_scan_due(self) -> bool:
        interval = self.cfg.policy.full_scan_interval
        return interval == 0 or time.monotonic() - self._last_full_scan >= interval

    def _reconcile_head(self, head: str, reasons: set[Reason], run: Run) -> None:
        failed = self.book.failed_error(head)
        if failed is not None:
            # Parked: not retried until the branch moves on (engine.apply would refuse it as well).
            if self.book.parked(failed):
                log.info("reconcile.parked", reason="revision failed before", error=failed)
                self.book.publish()
            return
        head_moved = head != self.book.synced
        if not head_moved and not reasons & CHECK_REASONS:
            return  # a ref write that did not move the branch, or a poll that fetched nothing new
        if head_moved and not self.dry_run and not self._wave_ready(head, run):
            return
        self.book.stop_waiting()
        meta = self.source.commit_meta(head)
        run = replace(run, revision=head, subject=meta.subject, author=meta.author)
        self._attempt(head, head_moved, reasons, run)

    def _wave_ready(self, head: str, run: Run) -> bool:
        """Whether the lower waves of a fleet have ``head`` applied (always, outside a fleet)."""
        try:
            gate = engine.wave_gate(self.source.engine_config, head)
        except Exception as exc:
            self._failed_attempt(classify(exc), replace(run, revision=head), planned_changes=0)
            return False
        if gate is not None:
            self.book.wave = gate[0]
            if not gate[1].ready:
                self._wait(gate[1])
                return False
        return True

    def _attempt(self, head: str, head_moved: bool, reasons: set[Reason], run: Run) -> None:
        """Plan ``head`` and apply it (a dry run only plans); drift without self-heal is only reported."""
        cfg = self.source.engine_config
        planned_changes = 0
        declined: list[Plan] = []
        drift_only = not (head_moved or Reason.SYNC in reasons)

        def should_apply(planned: engine.Planned) -> bool:
            # Called by engine.apply with the plan it is about to execute: the plan shown as drift
            # (or declined without self-heal) is exactly the plan applied, never a second one.
            nonlocal planned_changes
            planned_changes = count_changes(planned.plan)
            if drift_only and not self.cfg.policy.self_heal:
                declined.append(planned.plan)
                return False
            if drift_only:
                log.info("drift.detected", items=[d.target for d in drift_items(planned.plan)], self_heal=True)
            self.book.set_state(AgentState.APPLYING)
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
        self._applied(head, head_moved, planned.plan, result, run)

    # -- what each outcome does --------------------------------------------------------------------

    def _applied(self, head: str, head_moved: bool, plan: Plan, result: ApplyResult, run: Run) -> None:
        changes = count_changes(plan)
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
        changed = self.book.wait(check)
        self.triggers.cancel(Reason.RETRY)
        self.triggers.schedule(Reason.WAVE, self.cfg.fleet.poll_interval)
        if changed:
            log.info("reconcile.waiting", waiting_for=list(check.waiting_for), reason=check.reason)
            self.book.publish()

    def _planned(self, head: str, head_moved: bool, plan: Plan, run: Run) -> None:
        """A plan that is not applied: in sync, drift reported (no self-heal), or a dry run."""
        duration = run.seconds()
        if plan.empty:
            attempt = run.attempt(AttemptResult.NO_CHANGE) if head_moved else None
            was = self.book.state
            self._synced_at(head, record=attempt)
            if was is not AgentState.SYNCED or attempt is not None:
                log.info("reconcile.done", result="in_sync", changes=0, seconds=duration, state="synced")
            return
        items = drift_items(plan)
        new_drift = [] if head_moved else items
        news = self.book.out_of_sync(head, run, plan, items, new_drift)
        self.triggers.cancel(Reason.RETRY)
        if news:
            if new_drift:
                log.warning("drift.detected", items=[d.target for d in new_drift], self_heal=False)
            log.info("reconcile.done", result="out_of_sync", changes=len(items), seconds=duration, dry_run=self.dry_run)
        self.book.publish()

    def _synced_at(self, head: str, *, record: Attempt | None) -> None:
        self.book.synced_at(head, record=record)
        self.triggers.cancel(Reason.RETRY)
        if record is not None:
            self.metrics.reconciles.labels(result=record.result.value).inc()
            self.metrics.duration.observe(record.duration)
        self.metrics.last_success.set(time.time())
        self.book.publish()

    def _failed_attempt(self, outcome: Outcome, run: Run, planned_changes: int) -> None:
        error = self.redact(outcome.error) or ""
        attempt = run.attempt(outcome.result, error=error, failed_step=outcome.failed_step, changes=planned_changes)
        duration = attempt.duration
        if outcome.unexpected:
            log.error("reconcile.unexpected", error=error, exc_info=True)
        self.metrics.reconciles.labels(result=outcome.result.value).inc()
        self.metrics.duration.observe(duration)
        if not outcome.parks:
            # Temporary (backoff) or the host's fault (retried when [secrets].dir changes, and slowly).
            delay = self.book.retrying(outcome, attempt, error)
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
            self.book.failed(outcome, run.revision or "", attempt, error)
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
        self.book.publish()

    def _refresh_pending(self, head: str) -> None:
        """After a rolled-back apply, show what is still pending (``GET /diff``)."""
        try:
            planned = engine.diff(self.source.engine_config, head)
        except Exception as exc:
            log.info("reconcile.pending_unknown", error=self.redact(str(exc)))
            return
        self.book.set_pending(planned.plan)
