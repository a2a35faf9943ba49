"""One reconcile, composed from the stages: source -> validate -> observe -> plan -> apply.

Called by the CLI (``diff``, ``apply``) and the agent. ``diff`` is ``reconcile`` stopped after
planning: the same code path, with the same validators, so the dry run is faithful. Every entry
point that reads or writes live state first recovers an interrupted apply from the journal.
"""

from __future__ import annotations

import contextlib
import gc
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from reconciler.apply import NO_FAULTS, Applier, ApplyFailed, ApplyResult, Faults, host_lock, recover, repair_digests
from reconciler.db import Connection, connect
from reconciler.desired.hosts import host_specs
from reconciler.desired.render import desired_for
from reconciler.desired.types import HostSpec
from reconciler.errors import Fault, InvalidRevision, PermanentError, ReconcilerError, SourceError
from reconciler.fleet import WaveCheck, read_fleet, wave_check
from reconciler.models import AgentConfig
from reconciler.observed import observe
from reconciler.outcome import fault_of
from reconciler.parsecache import ParseCache
from reconciler.plan import Action, Observed, Plan, plan
from reconciler.secrets import load_secrets
from reconciler.signatures import SignatureRejected, verify_commit
from reconciler.source import Snapshot, open_snapshot
from reconciler.state import Inventory, StateDir
from reconciler.validate import validate_snapshot

log = structlog.get_logger("reconciler.engine")


class RevisionFailedBefore(PermanentError):
    """The branch head already failed to apply; it is not retried until the branch moves on."""


def local_repo_path(url: str) -> Path:
    """The filesystem path of a local source URL (a path or file://)."""
    if url.startswith("file://"):
        return Path(url[len("file://") :])
    if "://" in url or url.startswith("git@"):
        raise SourceError(f"{url}: remote sources are fetched by the agent (reconciler run)")
    return Path(url)


def open_revision(cfg: AgentConfig, rev: str | None) -> Snapshot:
    """The snapshot of ``rev``, or of the configured branch head."""
    return open_snapshot(local_repo_path(cfg.source.url), rev or f"refs/heads/{cfg.source.branch}")


@dataclass(frozen=True)
class Planned:
    """A planned reconcile (in-memory result): the plan and what it was computed from."""

    snapshot: Snapshot
    plan: Plan
    observed: Observed
    host: HostSpec | None = None  # this host's host file in the revision (None outside a fleet)


@contextlib.contextmanager
def session(cfg: AgentConfig) -> Iterator[tuple[StateDir, Any]]:
    """Host lock, database connection and crash recovery: the frame of every live-state command."""
    state = StateDir(cfg.state.dir)
    conn = connect(cfg.mysql)
    try:
        with host_lock(state), gc_paused():
            recover(
                state,
                conn,
                Path(cfg.postfix.config_dir),
                cfg.postfix.health_timeout,
                cfg.postfix.outside_paths,
                cfg.host.resolved(),
            )
            yield state, conn
    finally:
        with contextlib.suppress(Exception):  # a connection to a node that died cannot say goodbye
            conn.close()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection for the duration of one reconcile.

    A plan at a million mailboxes holds millions of young objects (rows, row changes), and every
    full collection walks them all: about a third of planning time, for no garbage (rows and
    changes are tuples and frozen records, not cycles). Whatever cycles one reconcile leaves are
    collected after it, once collection is back on. Restores the previous setting.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class MassDeletionRefused(PermanentError):
    """The revision deletes more of the managed rows than ``[policy].max_delete_fraction`` allows."""


MASS_DELETE_TRAILER = re.compile(r"^Allow-Mass-Delete:\s*yes\s*$", re.IGNORECASE | re.MULTILINE)


def check_signature(cfg: AgentConfig, snapshot: Snapshot) -> None:
    """Refuse the revision unless its commit is signed by a trusted key (when signatures are required)."""
    if cfg.source.signatures != "required":
        return
    if snapshot.commit is None:
        raise SignatureRejected("signatures are required, but a plain folder carries no signature")
    signer = verify_commit(Path(snapshot.root), snapshot.commit.id, cfg.source.allowed_signers, cfg.source.gpg_keyring)
    log.info("signature.valid", signer=signer)


def check_deletions(cfg: AgentConfig, snapshot: Snapshot, result: Plan, observed: Observed) -> None:
    """The deletion guard: refuse mass deletions unless the commit message allows them."""
    deletes = sum(1 for r in result.rows if r.action is Action.DELETE)
    deletion_guard(cfg, snapshot, deletes, observed.row_count)


def deletion_guard(cfg: AgentConfig, snapshot: Snapshot, deletes: int, row_count: int) -> None:
    """Refuse ``deletes`` of ``row_count`` managed rows beyond ``[policy].max_delete_fraction``.

    Unless the commit message's last paragraph has the trailer ``Allow-Mass-Delete: yes``. Shared
    by the apply (rows counted in the database) and ``pre-receive`` (rows counted in the branch).
    """
    if not deletes or not row_count:
        return
    fraction = deletes / row_count
    if fraction <= cfg.policy.max_delete_fraction:
        return
    message = snapshot.commit.message if snapshot.commit else ""
    last_paragraph = message.strip().split("\n\n")[-1]
    if MASS_DELETE_TRAILER.search(last_paragraph):
        log.warning("policy.mass_delete_allowed", deletes=deletes, rows=row_count)
        return
    raise MassDeletionRefused(
        f"revision deletes {deletes} of {row_count} managed rows ({fraction:.0%}), more than "
        f"max_delete_fraction {cfg.policy.max_delete_fraction:.0%}; add the trailer "
        "'Allow-Mass-Delete: yes' to the commit message to allow it"
    )


def managed_inventory(cfg: AgentConfig, state: StateDir) -> Inventory:
    """The inventory, less outside tables no longer in ``[postfix].outside_paths``: those are never touched."""
    inventory = state.read_inventory()
    allowed = set(cfg.postfix.outside_paths)
    keep = frozenset(n for n in inventory.files if not n.startswith("/") or n in allowed)
    if keep == inventory.files:
        return inventory
    tables = tuple(t for t in inventory.tables if not t.name.startswith("/") or t.name in allowed)
    return Inventory(inventory.revision, keep, tables)


def make_plan(
    cfg: AgentConfig, snapshot: Snapshot, state: StateDir, conn: Connection, *, full_scan: bool = False
) -> Planned:
    """Check the signature, validate the revision, observe the host, plan and apply the policies.

    Raises ``PermanentError`` subclasses (``InvalidRevision``, ``SignatureRejected``,
    ``MassDeletionRefused``) or a ``SecretError`` (the host's) before anything live changes.
    """
    started = time.monotonic()
    check_signature(cfg, snapshot)
    host = cfg.host.resolved()
    validated = validate_snapshot(
        snapshot, cfg.postfix.config_dir, ParseCache.open(state.path / "parsed"), cfg.postfix.outside_paths, host=host
    )
    if validated.problems:
        raise InvalidRevision(list(validated.problems))
    names = {n for f in validated.desired.files.values() for n in f.secrets}
    secrets = load_secrets(cfg.secrets.dir, names)
    desired = desired_for(validated.desired, validated.tables, secrets)
    spec = validated.desired.host
    observed = observe(
        Path(cfg.postfix.config_dir), desired, managed_inventory(cfg, state), conn, secrets, full_scan=full_scan
    )
    result = plan(desired, observed)
    check_deletions(cfg, snapshot, result, observed)
    log.info("plan.done", changes=len(result.changes), seconds=round(time.monotonic() - started, 3))
    return Planned(snapshot, result, observed, spec)


def wave_gate(cfg: AgentConfig, rev: str) -> tuple[int, WaveCheck] | None:
    """This host's wave and whether the fleet lets it apply ``rev`` now (SPEC 6 waves).

    None when the revision has no host file for this host: it is not part of a rollout. The
    waves are those of the revision's own ``hosts/*.yaml``; the fleet is read causally.
    """
    hosts, _ = host_specs(open_revision(cfg, rev))
    me = cfg.host.resolved()
    if me not in hosts:
        return None
    waves = {name: spec.wave for name, spec in hosts.items()}
    return hosts[me].wave, wave_check(read_fleet(cfg), me, rev, waves)


def diff(cfg: AgentConfig, rev: str | None, *, full_scan: bool = False) -> Planned:
    """The dry run: everything ``apply`` does up to the plan, and nothing after.

    ``full_scan`` hashes every row instead of trusting the trigger-kept digests (periodic checks).
    """
    snapshot = open_revision(cfg, rev)
    with session(cfg) as (state, conn):
        planned = make_plan(cfg, snapshot, state, conn, full_scan=full_scan)
        conn.rollback()
        return planned


def apply(
    cfg: AgentConfig,
    rev: str | None,
    *,
    retry_failed: bool = False,
    should_apply: Callable[[Planned], bool] | None = None,
    full_scan: bool = False,
    faults: Faults = NO_FAULTS,
) -> tuple[Planned, ApplyResult]:
    """One transactional reconcile to ``rev`` (default: the branch head).

    ``should_apply`` sees the plan and may decline it (the agent's drift check without self-heal):
    the very plan it saw is the one applied, nothing is recomputed in between. ``faults`` are the
    test hooks the entry point read from its environment (none by default).
    """
    snapshot = open_revision(cfg, rev)
    with session(cfg) as (state, conn):
        revision = snapshot.revision or ""
        failed = state.failed_revisions()
        if revision in failed and not retry_failed:
            raise RevisionFailedBefore(
                f"revision {revision[:12]} failed before ({failed[revision]}); "
                "it is not retried until the branch moves on"
            )
        try:
            planned = make_plan(cfg, snapshot, state, conn, full_scan=full_scan)
        except ReconcilerError as exc:
            # Only the revision's own faults park it; a missing secret is the host's (retried once
            # the secret is in place), a database outage nobody's.
            if fault_of(exc) is Fault.REVISION:
                state.record_failed(revision, str(exc))
            raise
        if planned.observed.stale_digests:
            repair_digests(conn)  # an apply step (as init-db): the dry run only reports them stale
        if planned.plan.empty or (should_apply is not None and not should_apply(planned)):
            conn.rollback()
            return planned, ApplyResult(changed=False)
        spec = planned.host
        applier = Applier(
            Path(cfg.postfix.config_dir),
            state,
            conn,
            cfg.postfix.health_timeout,
            host=cfg.host.resolved(),
            wave=spec.wave if spec is not None else 0,
            reconnect=lambda: connect(cfg.mysql),
            # An explicit ``apply --rev`` may go back; the agent never writes rows back over newer ones.
            rows_newer=None if retry_failed else partial(snapshot.superseded_by, ref=f"refs/heads/{cfg.source.branch}"),
            faults=faults,
        )
        try:
            result = applier.apply(planned.plan, postfix_running=planned.observed.postfix_running)
        except ApplyFailed as exc:
            if fault_of(exc) is Fault.REVISION:
                state.record_failed(revision, str(exc))
            raise
        finally:
            if applier.conn is not conn:
                with contextlib.suppress(Exception):
                    applier.conn.close()
        state.clear_failed(revision)
        return planned, result
