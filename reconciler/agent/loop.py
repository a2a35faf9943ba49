"""The agent of ``reconciler run``: the ``Agent`` that wires watchers, API view and the loop; one reconcile at a time.

Started by the CLI in the main thread (so that SIGTERM/SIGINT only set a flag: an apply in
progress runs to its end, then the loop returns). Watchers, API handlers and timers feed the
``Triggers`` queue; each wake-up runs one reconcile (``reconcile.Reconciler``), chosen by what moved:

- the branch head moved (or ``POST /sync``): ``engine.apply`` of the head (``engine.diff`` in a dry run);
- the head did not move (drift timer, config-dir event, start-up, retry): ``engine.diff``; when it
  finds changes, they are drift: reverted by ``engine.apply`` with ``self_heal``, else reported;
- the head already failed: nothing, until the branch moves on (the engine would refuse it anyway);
- in a fleet, a head whose lower waves have not applied it yet: nothing but ``waiting`` (with the
  hosts waited for), checked again every ``[fleet].poll_interval`` (``engine.wave_gate``).

After every change of state (and at least once a reconcile, the fleet's heartbeat) the agent
reports itself in ``reconciler_hosts`` (``fleet.report``, through ``report``), which other hosts'
wave checks read.

Errors are classified once (``reconciler.outcome.classify``): temporary ones set ``degraded`` and
retry with exponential backoff and jitter (``schedule``); the host's (a missing secret) set
``degraded`` naming the secrets and retry when ``[secrets].dir`` changes (and every ``HOST_RETRY``
seconds); the revision's set ``failed`` and park the head. Every attempt that did something is
appended to the history in the state dir. The status document is rebuilt under a lock for the API
thread (``book``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry

from reconciler.agent import systemd
from reconciler.agent.book import Book
from reconciler.agent.history import Records
from reconciler.agent.metrics import Metrics, NotifyResult
from reconciler.agent.notify import Notifier
from reconciler.agent.reconcile import Reconciler
from reconciler.agent.redact import Redactor
from reconciler.agent.schedule import BACKOFF_MAX, BUSY_LIMIT, DRIFT_DEBOUNCE
from reconciler.agent.source import BranchSource
from reconciler.agent.triggers import Reason, Triggers
from reconciler.agent.watchers import ConfigWatcher, DirWatcher, RefWatcher
from reconciler.apply import NO_FAULTS, Faults
from reconciler.fleet import read_fleet
from reconciler.models import AgentConfig
from reconciler.source_remote import public_url
from reconciler.state import StateDir
from reconciler.status import Fleet, Status

log = structlog.get_logger("reconciler.agent")


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
        self._busy_since: float | None = None
        self._running = False
        self._stop_reason = ""
        self.metrics = Metrics(lambda: self.book.head_moved_at)
        self.notifier = Notifier(cfg, redact=self.redact, count=self._count_notification)
        self.book = Book(
            cfg,
            dry_run=dry_run,
            records=self.records,
            state_dir=self.state_dir,
            redact=self.redact,
            metrics=self.metrics,
            notifier=self.notifier,
        )
        self.host_name = self.book.host_name
        self.reconciler = Reconciler(
            cfg,
            dry_run=dry_run,
            faults=faults,
            source=self.source,
            triggers=self.triggers,
            book=self.book,
            metrics=self.metrics,
            notifier=self.notifier,
            redact=self.redact,
            state_dir=self.state_dir,
            config_watcher=self.config_watcher,
            ensure_ref_watcher=self._ensure_ref_watcher,
        )

    # -- what the API reads (any thread) ---------------------------------------------------------

    @property
    def registry(self) -> CollectorRegistry:
        """The Prometheus registry of the agent's metrics."""
        return self.metrics.registry

    def status(self) -> Status:
        """The current status document."""
        return self.book.status()

    def fleet(self) -> Fleet:
        """The fleet document (``GET /fleet``), read from the database now."""
        return read_fleet(self.cfg)

    def pending_plan_json(self) -> str | None:
        """The pending plan (``diff --format json``), None when there is none (see ``plan_error``)."""
        return self.book.pending_plan_json()

    def plan_error(self) -> str | None:
        return self.book.plan_error()

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

    # -- watchers ----------------------------------------------------------------------------------

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

    def _ensure_ref_watcher(self) -> None:
        """Watch a local repository that did not exist at start-up, once it does (called every reconcile)."""
        if self.ref_watcher is None and not self.source.remote:
            self.start_ref_watcher_late()

    def start_ref_watcher_late(self) -> None:
        try:
            self.ref_watcher = RefWatcher(self.source.repo_path, self.source.branch, self._on_ref_event)
            self.ref_watcher.start()
        except Exception as exc:
            log.warning("agent.ref_watch_failed", error=str(exc))
            self.ref_watcher = None

    # -- the loop ----------------------------------------------------------------------------------

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

    def reconcile(self, reasons: set[Reason]) -> None:
        """One attempt for the coalesced ``reasons`` (``reconcile.Reconciler``)."""
        self.reconciler.reconcile(reasons)

    def _ping_watchdog(self) -> None:
        interval = systemd.watchdog_interval()
        if interval is None:
            return
        while self._running:
            if self.alive():
                systemd.notify("WATCHDOG=1")
            time.sleep(interval)
