"""Crash recovery: finish or undo the apply a journal names, or put back what a torn journal left.

Called by ``engine.session`` with the host lock held, before every command that reads or writes
live state. The apply committed iff its id reached this host's ``reconciler_hosts`` row (or, for
a journal of an older version, ``reconciler_state``); without a journal, leftovers of an apply
killed before it wrote one are removed.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from reconciler.apply.files import BAK, cleanup_temps, finish_committed, undo_files
from reconciler.apply.journal import Journal, Phase
from reconciler.apply.service import restore_service
from reconciler.db import Connection
from reconciler.fleet import applied_apply_id
from reconciler.postfix import postfix_cmd
from reconciler.state import Inventory, StateDir, fsync_dir
from reconciler.verify import check_health

log = structlog.get_logger("reconciler.apply")


def _recover_unreadable(state: StateDir, config_dir: Path, exc: Exception, health_timeout: float) -> str:
    """Recovery without a readable journal (torn by a power loss, or edited): put back what can be.

    Every backup beside a live file (``.NAME.reconciler-bak``) is renamed back and temporaries are
    removed, so every file an apply replaced or deleted is old again; the rows are whatever the
    database committed. Files the lost apply created stay. The inventory's revision is forgotten,
    so that the next apply plans from the live state alone and converges to its revision.
    """
    log.warning("apply.journal_unreadable", path=str(state.journal_path), error=str(exc).splitlines()[0])
    restored = 0
    if config_dir.is_dir():
        for backup in sorted(config_dir.rglob(f".*{BAK}")):  # subdirectories too
            live = backup.with_name(backup.name[1 : -len(BAK)])
            os.replace(backup, live)
            restored += 1
        cleanup_temps(config_dir)
        fsync_dir(config_dir)
    inventory = state.read_inventory()
    state.write_inventory(Inventory(None, inventory.files, inventory.tables))
    if restored and postfix_cmd(config_dir, "status", timeout=30).returncode == 0:
        restore_service(config_dir, restart=False, timeout=health_timeout)
    os.replace(state.journal_path, state.journal_path.with_name(f"{state.journal_path.name}.corrupt"))
    fsync_dir(state.path)
    log.info("apply.recovered", outcome="restored backups", restored=restored, revision=None)
    return "restored backups"


def recover(
    state: StateDir,
    conn: Connection,
    config_dir: Path,
    health_timeout: float = 10.0,
    outside_paths: tuple[str, ...] = (),
    host: str = "",
) -> str | None:
    """Finish or undo an interrupted apply; returns what was done, None when there was nothing.

    Call with the host lock held. The apply committed iff its id reached this host's
    ``reconciler_hosts`` row (or, for a journal of an older version, ``reconciler_state``).
    Without a journal, leftovers of an apply killed before it wrote one are removed.
    """
    try:
        journal = Journal.from_json(state.journal_path.read_bytes())
    except FileNotFoundError:
        if config_dir.is_dir():
            cleanup_temps(config_dir, outside_paths)
        return None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        return _recover_unreadable(state, config_dir, exc, health_timeout)
    config_dir = Path(journal.config_dir)
    committed = journal.phase is Phase.COMMITTED
    if not committed and journal.phase is Phase.SWAPPING:
        committed = applied_apply_id(conn, host) == journal.apply_id
        if not committed:
            with conn.cursor() as cur:
                cur.execute("SELECT value FROM reconciler_state WHERE name = %s", ("last_apply_id",))
                row = cur.fetchone()
            committed = row is not None and row[0] == journal.apply_id
        conn.commit()
    if committed:
        finish_committed(journal)
        state.write_inventory(Inventory.from_json(journal.inventory))
        outcome = "finished"
    else:
        undo_files(journal)
        outcome = "undone"
    if journal.postfix_running:
        # Killed between "postfix stop" and "start" of a restart, Postfix is down: start it.
        running = postfix_cmd(config_dir, "status", timeout=30).returncode == 0
        if running:
            restore_service(config_dir, restart=False, timeout=health_timeout)
        else:
            postfix_cmd(config_dir, "start", timeout=60)
            check_health(config_dir, health_timeout)
    state.journal_path.unlink()
    fsync_dir(state.path)
    log.warning("apply.recovered", outcome=outcome, revision=journal.revision)
    return outcome
