"""Renders a Plan for people (text, colour on a tty) and for scripts (JSON of SPEC section 4), and
validation problems as JSON or as GitHub Actions workflow commands (``validate --format``).

Pure. Never prints a secret: file diffs come from templates (``FileChange.diff``), a rotated
secret is named, and password hashes show as changed, never as values.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from reconciler.errors import Problem
from reconciler.plan import Action, FileChange, Plan, RowChange, ServiceChange, TableChange
from reconciler.vocab import MASK

_COLOURS = {"+": "\033[32m", "-": "\033[31m", "@": "\033[36m", "~": "\033[33m"}
_RESET = "\033[0m"


def _masked_row(values: Any) -> dict[str, str] | None:
    if values is None:
        return None
    return {k: (MASK if k == "password" else v) for k, v in values.items()}


def change_json(change: FileChange | TableChange | RowChange | ServiceChange) -> dict[str, Any]:
    """One change as SPEC section 4 describes it."""
    out: dict[str, Any] = {"kind": change.kind.value, "action": change.action.value, "target": change.target}
    if isinstance(change, FileChange):
        out["diff"] = change.diff
        if change.secrets_changed:
            out["secrets_changed"] = list(change.secrets_changed)
        if change.notes:
            out["notes"] = list(change.notes)
    elif isinstance(change, TableChange):
        out["type"] = change.table.type
        out["builder"] = change.table.builder
        out["reason"] = change.reason
    elif isinstance(change, RowChange):
        out["table"] = change.table
        out["key"] = change.key
        out["domain"] = change.domain
        out["before"] = _masked_row(change.before)
        out["after"] = _masked_row(change.after)
        if change.before and change.after:
            out["changed"] = sorted(k for k in change.after if change.before.get(k) != change.after.get(k))
    else:
        out["reason"] = change.reason
    return out


def plan_json(plan: Plan) -> str:
    """``diff --format json``: one document."""
    doc: dict[str, Any] = {"revision": plan.revision, "changes": [change_json(c) for c in plan.changes]}
    if plan.host:
        doc["host"] = plan.host
    return json.dumps(doc, indent=2) + "\n"


def plan_text(plan: Plan, *, colour: bool = False) -> str:
    """The human dry-run report: file diffs with parameter summaries, rows by domain, tables, service."""
    lines: list[str] = []

    def paint(line: str) -> str:
        if not colour or not line:
            return line
        code = _COLOURS.get(line[0])
        return f"{code}{line}{_RESET}" if code and not line.startswith(("+++", "---")) else line

    rev = (plan.revision or "working tree")[:12] + (f" on host {plan.host}" if plan.host else "")
    if plan.empty:
        return f"revision {rev}: in sync, nothing to do\n"
    lines.append(f"revision {rev}: {len(plan.changes)} change(s)")
    for f in plan.files:
        lines.append("")
        lines.append(f"file {f.action.value}: {f.name}" + (f"  ({'; '.join(f.notes)})" if f.notes else ""))
        if f.name == "main.cf" and plan.main_cf_params:
            for name, old, new in plan.main_cf_params:
                if old is None:
                    lines.append(paint(f"+ parameter {name} = {new}"))
                elif new is None:
                    lines.append(paint(f"- parameter {name} (was {old})"))
                else:
                    lines.append(paint(f"~ parameter {name}: {old} -> {new}"))
        if f.name == "master.cf" and plan.master_cf_services:
            for name, old, new in plan.master_cf_services:
                verb = "added" if old is None else "removed" if new is None else "changed"
                lines.append(paint(f"~ service {name} {verb}"))
        for secret in f.secrets_changed:
            lines.append(paint(f"~ secret {secret} changed"))
        lines.extend(paint(line) for line in f.diff.rstrip("\n").split("\n") if f.diff)
    tables = plan.tables
    if tables:
        lines.append("")
        for t in tables:
            lines.append(f"table {t.action.value}: {t.table.type}:{t.table.name} ({t.table.builder}; {t.reason})")
    rows = plan.rows
    by_domain: dict[str, list[RowChange]] = {}
    for r in rows:
        by_domain.setdefault(r.domain, []).append(r)
    for domain in sorted(by_domain):
        lines.append("")
        lines.append(f"domain {domain}:")
        for r in by_domain[domain]:
            sign = {Action.CREATE: "+", Action.DELETE: "-"}.get(r.action, "~")
            what = r.key
            if r.action is Action.UPDATE and r.before and r.after:
                changed = [k for k in r.after if r.before.get(k) != r.after.get(k)]
                what += (
                    " ("
                    + ", ".join("password hash changed" if k == "password" else f"{k} changed" for k in changed)
                    + ")"
                )
            lines.append(paint(f"{sign} {r.table} {r.action.value} {what}"))
    lines.append("")
    lines.append(f"postfix: {plan.service.action.value} ({plan.service.reason})")
    return "\n".join(lines) + "\n"


def problems_json(target: str, revision: str | None, problems: Iterable[Problem]) -> str:
    """``validate --format json``: one document with every problem (path, line, message)."""
    found = [{"path": p.path, "line": p.line, "message": p.message} for p in problems]
    doc = {"target": target, "revision": revision, "valid": not found, "problems": found}
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def github_escape_data(text: str) -> str:
    """A workflow command's message, escaped as GitHub's toolkit does (``%``, CR, LF)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def github_escape_property(text: str) -> str:
    """A workflow command's property value (file=...), escaped as the message plus ``:`` and ``,``."""
    return github_escape_data(text).replace(":", "%3A").replace(",", "%2C")


def problems_github(problems: Iterable[Problem], prefix: str = "") -> str:
    """``validate --format github``: one ``::error file=...,line=...::message`` line per problem.

    ``prefix`` is the repository's folder inside the checkout (annotations name files from its root).
    """
    lines = []
    for p in problems:
        path = f"{prefix.rstrip('/')}/{p.path}" if prefix else p.path
        props = f"file={github_escape_property(path)}"
        if p.line is not None:
            props += f",line={p.line}"
        lines.append(f"::error {props}::{github_escape_data(p.message)}\n")
    return "".join(lines)
