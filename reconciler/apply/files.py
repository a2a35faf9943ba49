"""The files of an apply: new files and built tables beside the live ones, backups, swap and undo.

Called by the ``Applier``'s steps (prepare, build, swap, and the rollback) and by crash recovery
(``reconciler.apply.recover``: undo or finish a journalled apply, remove leftovers). New content
is written to ``.NAME.reconciler-new`` and each live file hard-linked to ``.NAME.reconciler-bak``,
in the same directory with the same permissions: a secret never leaves it. Every rename is an
``Op`` of the journal.
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import structlog

from reconciler.apply.journal import Journal, Op
from reconciler.apply.steps import ApplyFailed, Step
from reconciler.parsecache import built_files
from reconciler.plan import Action, FileChange, Plan
from reconciler.postfix import backdate, beside, live_path, postalias, postmap
from reconciler.state import fsync_dir

log = structlog.get_logger("reconciler.apply")

NEW = ".reconciler-new"
BAK = ".reconciler-bak"
BUILD_DIR = ".reconciler-conf"  # the directory of the main.cf tables are built against


def prepare(plan: Plan, config_dir: Path, journal: Journal) -> None:
    """The prepare step: every new file beside its live one, every live file (and deleted table) backed up."""
    for change in plan.files:
        live = live_path(config_dir, change.name)
        if change.action is Action.DELETE:
            journal.ops.append(Op(str(live), None, _link_backup(live)))
            continue
        if not change.name.startswith("/") and "/" in change.name:
            # A subdirectory of the config dir (postfix/sql/...); left in place on a rollback.
            live.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        new = beside(live, NEW)
        assert change.content is not None  # noqa: S101 - create/update always carry content
        _write_new(new, change.content, change.mode, change.group)
        journal.ops.append(Op(str(live), str(new), _link_backup(live)))
    for table_change in plan.tables:
        if table_change.action is Action.DELETE:
            for suffix in table_change.table.built_suffixes:
                live = Path(f"{live_path(config_dir, table_change.table.name)}{suffix}")
                if live.exists():
                    journal.ops.append(Op(str(live), None, _link_backup(live)))


def build(plan: Plan, config_dir: Path, parsed_dir: Path, journal: Journal) -> None:
    """The build step: every table to rebuild built beside its live one (or copied from the staged check's build)."""
    files = {c.name: c for c in plan.files}
    if not any(c.action is Action.REBUILD for c in plan.tables):
        return
    with build_config(config_dir, files.get("main.cf")) as build_dir:
        _build_tables(plan, config_dir, parsed_dir, journal, files, build_dir)


def _build_tables(
    plan: Plan, config_dir: Path, parsed_dir: Path, journal: Journal, files: Mapping[str, FileChange], build_dir: Path
) -> None:
    for change in plan.tables:
        if change.action is not Action.REBUILD:
            continue
        table = change.table
        source_change = files.get(table.name)
        live_source = live_path(config_dir, table.name)
        tmp_source = beside(live_source, NEW)
        mode, group = 0o644, "root"
        if source_change is None:
            # Stale or missing built table: rebuild from the live source, beside the live table.
            content = live_source.read_bytes()
            st = live_source.stat()
            mode, group = st.st_mode & 0o777, _group_of(st.st_gid)
            tmp_source = beside(live_source, ".reconciler-src")
            _write_new(tmp_source, content, mode, group)
        else:
            mode, group = source_change.mode, source_change.group
        prebuilt = built_files(parsed_dir, table.build_key, table.name, table.built_suffixes)
        if prebuilt is not None and _copy_built(prebuilt, tmp_source, table.built_suffixes):
            log.info("table.reused", table=table.name)  # the staged check's build of the same bytes
        else:
            res = (postalias if table.builder == "postalias" else postmap)(build_dir, f"{table.type}:{tmp_source}")
            diags = [d.text for d in res.diagnostics]
            if res.returncode != 0 or diags:
                raise ApplyFailed(Step.BUILD, f"{table.builder} {table.name}: " + "; ".join(diags or ["failed"]))
        for suffix in table.built_suffixes:
            built = Path(f"{tmp_source}{suffix}")
            _chgrp(built, group, mode)
            live = Path(f"{live_source}{suffix}")
            journal.ops.append(Op(str(live), str(built), _link_backup(live)))
        if source_change is None:
            tmp_source.unlink()


def swap(journal: Journal, before: Callable[[int], None]) -> None:
    """The swap step: every new file renamed into place, every deleted one removed (``before`` each: the hook)."""
    for index, op in enumerate(journal.ops):
        before(index)
        if op.new is not None:
            os.replace(op.new, op.live)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(op.live)
        op.done = True
    fsync_dir(Path(journal.config_dir))


def _chgrp(path: Path, group: str, mode: int) -> None:
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        gid = 0
    os.chown(path, 0 if os.geteuid() == 0 else -1, gid if os.geteuid() == 0 else -1)
    os.chmod(path, mode)


def _write_new(path: Path, content: bytes, mode: int, group: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:  # a full disk: say which file (os.write does not)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    finally:
        os.close(fd)
    _chgrp(path, group, mode)
    backdate(path)


def _link_backup(live: Path) -> str | None:
    if not live.exists():
        return None
    backup = beside(live, BAK)
    with contextlib.suppress(FileNotFoundError):
        backup.unlink()
    os.link(live, backup)
    return str(backup)


@contextlib.contextmanager
def build_config(config_dir: Path, main_cf: FileChange | None) -> Iterator[Path]:
    """A private directory holding the main.cf the tables are built against: the new one.

    ``postmap -c DIR`` reads DIR/main.cf. The live one may not exist yet (a first apply onto
    Debian's "No configuration" install) or may be about to change, so tables are built against
    the main.cf of the plan (else the live one, else an empty one), in a 0700 directory inside
    the config dir (main.cf may hold a secret), removed afterwards.
    """
    build_dir = config_dir / f".build{BUILD_DIR}"
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(mode=0o700)
    try:
        if main_cf is not None and main_cf.content is not None:
            content = main_cf.content
        else:
            try:
                content = (config_dir / "main.cf").read_bytes()
            except FileNotFoundError:
                content = b""
        _write_new(build_dir / "main.cf", content, 0o600, "root")
        yield build_dir
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)


def _copy_built(prebuilt: list[Path], tmp_source: Path, suffixes: tuple[str, ...]) -> bool:
    """Copy the staged check's built files beside the new source; False (and nothing left) if one is gone."""
    targets = [Path(f"{tmp_source}{suffix}") for suffix in suffixes]
    try:
        for path, target in zip(prebuilt, targets, strict=True):
            shutil.copyfile(path, target)
    except OSError:
        for target in targets:
            target.unlink(missing_ok=True)
        return False
    return True


def _group_of(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return "root"


def undo_files(journal: Journal) -> None:
    """Put every live path back as it was: backups renamed back, created files removed, temps gone."""
    for op in reversed(journal.ops):
        if op.backup is not None and os.path.exists(op.backup):
            os.replace(op.backup, op.live)
        elif op.backup is None and op.new is not None and _swapped(op):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(op.live)
        if op.new is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(op.new)
    cleanup_temps(Path(journal.config_dir))
    fsync_dir(Path(journal.config_dir))


def _swapped(op: Op) -> bool:
    # A created file was swapped in when its temp no longer exists but the live path does.
    return op.done or (op.new is not None and not os.path.exists(op.new) and os.path.exists(op.live))


def finish_committed(journal: Journal) -> None:
    """Complete a committed apply: any rename not yet done is done, backups removed."""
    for op in journal.ops:
        if op.new is not None and os.path.exists(op.new):
            os.replace(op.new, op.live)
        elif op.new is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(op.live)
        if op.backup is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(op.backup)
    cleanup_temps(Path(journal.config_dir))
    fsync_dir(Path(journal.config_dir))


def cleanup_temps(config_dir: Path, outside_paths: tuple[str, ...] = ()) -> None:
    """Remove leftovers of an apply that never reached its journal.

    In the config dir and its subdirectories, and beside each allowed outside table (only its own
    ``.NAME*.reconciler-*`` siblings: nothing else of /etc is looked at).
    """
    leftovers = list(config_dir.rglob(".*.reconciler-*"))
    for outside in outside_paths:
        path = Path(outside)
        if path.parent.is_dir():
            leftovers += path.parent.glob(f".{path.name}*.reconciler-*")
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
