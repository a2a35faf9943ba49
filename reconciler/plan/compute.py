"""Computing the plan: a pure function from desired and observed state to an ordered, typed Plan.

``plan(desired, observed)`` does no I/O and builds nothing of either side: it only compares. The
changes come out in apply order (files, built tables, rows, then the service action); ``diff``
renders the result and ``apply`` executes it, so nothing is recomputed between showing and doing.
File diffs are made on templates (``plan.masking``), and a rotated secret shows as "secret NAME
changed". Called by ``reconciler.engine``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from reconciler.cfparse import diff_parameters, parse_main_cf, parse_master_cf
from reconciler.desired.types import Desired
from reconciler.plan.masking import mask_live, private, unified
from reconciler.plan.types import (
    RESTART_PARAMETERS,
    Action,
    Change,
    FileChange,
    Observed,
    Plan,
    RowChange,
    ServiceChange,
    TableChange,
)
from reconciler.rows import DomainRows
from reconciler.vocab import Digest, Table


def plan(desired: Desired, observed: Observed) -> Plan:
    """The changes that turn ``observed`` into ``desired``, in execution order."""
    file_changes = _file_changes(desired, observed)
    table_changes = _table_changes(desired, observed, file_changes)
    row_changes, row_digests = _row_changes(desired, observed)
    main_params = _param_diff(desired, observed, "main.cf", parse_main_cf)
    master_services = _param_diff(desired, observed, "master.cf", parse_master_cf)
    service = _service_action(file_changes, table_changes, main_params, observed.postfix_running)
    changes: list[Change] = [*file_changes, *table_changes, *row_changes]
    if service.action is not Action.NONE:
        changes.append(service)
    return Plan(
        revision=desired.revision,
        changes=tuple(changes),
        service=service,
        main_cf_params=tuple(main_params),
        master_cf_services=tuple(master_services),
        managed_files=frozenset(desired.files),
        managed_tables=desired.tables,
        row_digests=row_digests,
        host=desired.host,
    )


def _file_changes(desired: Desired, observed: Observed) -> list[FileChange]:
    out: list[FileChange] = []
    for name in sorted(desired.files):
        spec = desired.files[name]
        live = observed.files.get(name)
        holds_secret = bool(spec.secrets)
        if live is None:
            diff = unified(b"", spec.template, name)
            origin = (f"host-specific: {spec.origin}",) if spec.origin else ()
            out.append(
                FileChange(
                    Action.CREATE,
                    name,
                    spec.content,
                    spec.mode,
                    spec.group,
                    diff,
                    (),
                    origin,
                    holds_secret=holds_secret,
                )
            )
            continue
        notes: list[str] = []
        if (live.mode & 0o7777) != spec.mode:
            notes.append(f"mode {live.mode & 0o7777:04o} -> {spec.mode:04o}")
        if live.group != spec.group:
            notes.append(f"group {live.group} -> {spec.group}")
        if live.content == spec.content and not notes:
            continue
        if spec.origin:
            notes.append(f"host-specific: {spec.origin}")
        diff, rotated = "", tuple[str, ...]()
        if live.content != spec.content:
            masked, rotated = mask_live(spec.template, live.content, observed.secrets, secret_file=private(live))
            diff = unified(masked, spec.template, name)
        out.append(
            FileChange(
                Action.UPDATE,
                name,
                spec.content,
                spec.mode,
                spec.group,
                diff,
                rotated,
                tuple(notes),
                holds_secret=holds_secret,
                content_changed=live.content != spec.content,
            )
        )
    for name in sorted(observed.managed_files - set(desired.files)):
        live = observed.files.get(name)
        if live is None:
            continue
        masked, _ = mask_live(b"", live.content, observed.secrets, secret_file=private(live))
        out.append(FileChange(Action.DELETE, name, None, 0, "", unified(masked, b"", name)))
    return out


def _table_changes(desired: Desired, observed: Observed, files: list[FileChange]) -> list[TableChange]:
    out: list[TableChange] = []
    changed = {f.name: f for f in files}
    for table in desired.tables:
        if table.name in changed:
            # A mode or group change of the source is rebuilt too: the table inherits them.
            reason = "source changed" if _content_changed(changed[table.name]) else "source mode or group changed"
            out.append(TableChange(Action.REBUILD, table, reason))
        elif table.name in observed.stale_tables:
            out.append(TableChange(Action.REBUILD, table, "built table missing or older than its source"))
        elif table not in observed.managed_tables and observed.managed_files:
            out.append(TableChange(Action.REBUILD, table, "table type or builder changed"))
    wanted = {(t.name, t.type) for t in desired.tables}
    for table in observed.managed_tables:
        if (table.name, table.type) not in wanted and table.built_suffixes != _suffixes_of(desired, table.name):
            out.append(
                TableChange(
                    Action.DELETE, table, "no longer referenced" if table.name in desired.files else "source removed"
                )
            )
    return out


def _suffixes_of(desired: Desired, name: str) -> tuple[str, ...] | None:
    for t in desired.tables:
        if t.name == name:
            return t.built_suffixes
    return None


def _row_changes(desired: Desired, observed: Observed) -> tuple[list[RowChange], dict[str, Digest]]:
    digests: dict[str, Digest] = {}
    creates: list[RowChange] = []
    middle: list[RowChange] = []
    deletes: list[RowChange] = []
    # Domain names compare case-insensitively, as the UNIQUE key of virtual_domains does: a live
    # "Example.ORG" is renamed in place, never re-created beside itself.
    wanted = {n.casefold(): n for n in desired.domains}
    live = {n.casefold(): n for n in observed.domains}
    unchanged = {n.casefold() for n in observed.unchanged_domains}
    empty = DomainRows({}, {})
    for key in sorted((set(wanted) | set(live)) - unchanged):
        name = wanted.get(key) or live[key]
        want = desired.domains.get(name) if key in wanted else None
        have = observed.domains.get(live[key]) if key in live else None
        if want is not None and have is None:
            creates.append(RowChange(Action.CREATE, Table.DOMAINS, name, name, None, {"name": name}))
        elif want is not None and live[key] != name:
            creates.append(RowChange(Action.UPDATE, Table.DOMAINS, name, name, {"name": live[key]}, {"name": name}))
        w = want or empty
        h = have or empty
        if want is not None:
            digests[name] = want.digest()
        if have is None and want is not None:
            # A domain new to the database (every row of a cold apply): creates only, no matching.
            users, aliases = want.users, want.aliases
            for email in sorted(users):
                address, hashed = users[email]
                row = {"email": address, "password": hashed}
                middle.append(RowChange(Action.CREATE, Table.USERS, email, name, None, row))
            for pair in sorted(aliases):
                source, destination = aliases[pair]
                row = {"source": source, "destination": destination}
                middle.append(RowChange(Action.CREATE, Table.ALIASES, f"{pair[0]} -> {pair[1]}", name, None, row))
            continue
        middle.extend(_keyed_changes(Table.USERS, name, h.users, w.users, ("email", "password"), lambda k: k))
        middle.extend(_keyed_changes(Table.ALIASES, name, h.aliases, w.aliases, ("source", "destination"), " -> ".join))
        if want is None and have is not None:
            deletes.append(RowChange(Action.DELETE, Table.DOMAINS, name, name, {"name": live[key]}, None))
    return [*creates, *middle, *deletes], digests


def _keyed_changes(
    table: Table,
    domain: str,
    have: Mapping[Any, tuple[str, str]],
    want: Mapping[Any, tuple[str, str]],
    columns: tuple[str, str],
    key_text: Callable[[Any], str],
) -> list[RowChange]:
    """Creates, updates and deletes of one table's rows of a domain, by natural key in key order."""
    out: list[RowChange] = []
    for key in sorted(set(want) | set(have)):
        a, b = have.get(key), want.get(key)
        if a == b:
            continue
        before = dict(zip(columns, a, strict=True)) if a else None
        after = dict(zip(columns, b, strict=True)) if b else None
        action = Action.CREATE if a is None else Action.DELETE if b is None else Action.UPDATE
        out.append(RowChange(action, table, key_text(key), domain, before, after))
    return out


def _param_diff(
    desired: Desired, observed: Observed, name: str, parse: Any
) -> list[tuple[str, str | None, str | None]]:
    spec = desired.files.get(name)
    live = observed.files.get(name)
    if spec is None or live is None or live.content == spec.content:
        return []
    masked, _ = mask_live(spec.template, live.content, observed.secrets, secret_file=private(live))
    return diff_parameters(parse(masked.decode("utf-8", "replace")), parse(spec.template.decode("utf-8", "replace")))


def _service_action(
    files: list[FileChange],
    tables: list[TableChange],
    main_params: list[tuple[str, str | None, str | None]],
    running: bool,
) -> ServiceChange:
    content = [f for f in files if _content_changed(f)]
    if not content and not [t for t in tables if t.reason != "source mode or group changed"]:
        if files:
            return ServiceChange(Action.NONE, "only modes or groups changed; Postfix reads the same content")
        return ServiceChange(Action.NONE, "no file or table changed")
    if not running:
        return ServiceChange(Action.NONE, "Postfix is not running; it is left stopped")
    restart = [n for n, _, _ in main_params if n in RESTART_PARAMETERS]
    if restart:
        return ServiceChange(Action.RESTART, f"{', '.join(restart)} changed: Postfix takes it only on a restart")
    if any(f.name == "main.cf" and f.action is Action.CREATE for f in files):
        return ServiceChange(Action.RESTART, "main.cf created: a restart reads every setting")
    what = ", ".join(sorted({f.name for f in content} | {t.table.name for t in tables}))
    return ServiceChange(Action.RELOAD, f"changed: {what}")


def _content_changed(change: FileChange) -> bool:
    return change.content_changed
