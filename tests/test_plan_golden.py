"""Golden, data-driven cases of the plan stage: a desired tree and an observed host in, the diff JSON out.

A case is ``tests/cases/_base/`` with the overlay ``tests/cases/<name>/`` laid over it: the base is a
host in sync with a small revision, and a case holds only the files that make it (``compose_case``
writes the two into a temporary directory, an overlay file replacing the base's). A composed case holds:

- ``desired/``: a mini desired-state repository (``postfix/<files>``, ``domains/<domain>.yaml``);
- ``tables.json`` (optional): the tables the revision declares, ``[[name, type, builder], ...]``,
  written out instead of asking Postfix which tables main.cf names;
- ``observed.json``: the live host. ``files`` maps a name to ``{"text", "mode", "group"}`` or to
  ``{"in_sync": true}`` (the desired file as rendered, with optional ``mode``/``group`` overrides);
  ``managed_files``, ``managed_tables``, ``stale_tables``; ``rows`` is every domain in the database
  (``{"users": [[email, password]], "aliases": [[source, destination]]}``); ``postfix_running``;
  ``secrets`` (``{"NAME": "value"}``, what ``[secrets].dir`` holds for the revision's names);
- ``expected.json``: exactly what ``diff --format json`` prints (revision null);
- ``checks.json`` (optional): ``never_shown`` strings (hashes, old secret values) that no rendering may
  contain, and ``text_contains`` lines the text rendering must show;
- ``xfail.json`` (optional): ``{"json"|"text"|"secrets": reason}``, the checks a known plan bug fails
  (the case keeps its correct, hand-written expectation);
- ``removed.txt`` (overlay only, optional): base files this case does not have, one path a line
  (``desired/postfix/sender_access``);
- ``observed.patch.json`` (overlay only, optional): how this case's live host differs from the base's
  ``observed.json``, as a JSON merge patch (RFC 7386: objects merge, ``null`` removes a key, lists and
  values replace).

``expected.json``, ``checks.json`` and ``xfail.json`` belong to a case, never to the base. Adding a case
is adding a directory with the files that differ from the base and its ``expected.json``. ``REGENERATE=1 pytest tests/test_plan_golden.py`` rewrites every
``expected.json`` from the code; review each one by hand afterwards, as it is the oracle (a case
whose JSON check is marked xfail keeps its hand-written expectation and is never rewritten).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from reconciler.desired.domains import parse_domain_file
from reconciler.desired.render import model_rows, render_desired
from reconciler.desired.text import secret_refs
from reconciler.desired.types import DesiredFile
from reconciler.plan import Desired, LiveFile, Observed, plan
from reconciler.render import plan_json, plan_text
from reconciler.rows import DomainRows
from reconciler.tables import TableDecl

CASES = Path(__file__).resolve().parent / "cases"
BASE = CASES / "_base"
CASE_NAMES = sorted(p.name for p in CASES.iterdir() if p.is_dir() and p != BASE)
REGENERATE = os.environ.get("REGENERATE") == "1"


@dataclass(frozen=True)
class Case:
    """One golden case loaded from disk (in-memory)."""

    name: str
    desired: Desired
    observed: Observed
    expected: dict[str, Any]
    never_shown: tuple[str, ...]
    text_contains: tuple[str, ...]
    xfail: dict[str, str]


def _read_json(path: Path, default: Any = None) -> Any:
    if not path.is_file():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def _mode(value: str | int) -> int:
    return int(value, 8) if isinstance(value, str) else value


def _rows(data: dict[str, Any]) -> DomainRows:
    """DomainRows keyed as the observer keys rows read from MySQL (case-folded natural keys)."""
    users = {email.casefold(): (email, password) for email, password in data.get("users", [])}
    aliases = {(s.casefold(), d.casefold()): (s, d) for s, d in data.get("aliases", [])}
    return DomainRows(users, aliases)


def compose_case(name: str, into: Path) -> None:
    """Write the case ``name`` into the empty directory ``into``: the base, the overlay over it, minus removed.txt."""
    overlay = CASES / name
    shutil.copytree(BASE, into, dirs_exist_ok=True)
    shutil.copytree(overlay, into, dirs_exist_ok=True, ignore=shutil.ignore_patterns("removed.txt"))
    removed = overlay / "removed.txt"
    for line in removed.read_text(encoding="utf-8").splitlines() if removed.is_file() else []:
        path = into / line.strip()
        assert line.strip() and path.is_file(), f"{removed}: {line!r} is not a file of the base"
        path.unlink()
    patch = into / "observed.patch.json"
    if patch.is_file():  # what the case's live host differs in, as a JSON merge patch (RFC 7386)
        observed = merge_patch(_read_json(into / "observed.json"), _read_json(patch))
        (into / "observed.json").write_text(json.dumps(observed), encoding="utf-8")
        patch.unlink()


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: ``patch``'s objects merge into ``target``'s, a null removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def load_case(name: str) -> Case:
    """Build the plan's inputs of one case the way the engine and the observer would."""
    with tempfile.TemporaryDirectory(prefix=f"case-{name}-") as tmp:
        return _load_composed(name, Path(tmp))


def _load_composed(name: str, root: Path) -> Case:
    """``load_case`` on the case composed under ``root`` (everything is read into memory)."""
    compose_case(name, root)
    obs = _read_json(root / "observed.json")
    secrets = {k: v.encode("utf-8") for k, v in obs.get("secrets", {}).items()}

    files: dict[str, DesiredFile] = {}
    for path in sorted((root / "desired" / "postfix").glob("*")):
        data = path.read_bytes()
        names, problems = secret_refs(f"postfix/{path.name}", data.decode("utf-8"))
        assert not problems, problems
        files[path.name] = DesiredFile(path.name, "", data, names)
    domains: dict[str, DomainRows] = {}
    for path in sorted((root / "desired" / "domains").glob("*.yaml")):
        parsed = parse_domain_file(f"domains/{path.name}", path.read_bytes())
        assert parsed.model is not None, parsed.problems
        domains[parsed.model.domain] = model_rows(parsed.model)
    tables = [TableDecl(*t) for t in _read_json(root / "tables.json", [])]
    desired = render_desired(None, files, tables, domains, secrets)

    live: dict[str, LiveFile] = {}
    for fname, spec in obs.get("files", {}).items():
        if spec.get("in_sync"):
            want = desired.files[fname]
            live[fname] = LiveFile(want.content, _mode(spec.get("mode", want.mode)), spec.get("group", want.group))
        else:
            live[fname] = LiveFile(spec["text"].encode("utf-8"), _mode(spec["mode"]), spec["group"])
    db = {dname: _rows(data) for dname, data in obs.get("rows", {}).items()}
    # As observed.observe does: a desired domain whose digest matches is unchanged and its rows are
    # not read; every other domain of the database comes with its full rows.
    unchanged = frozenset(n for n, rows in desired.domains.items() if n in db and db[n].digest() == rows.digest())
    observed = Observed(
        files=live,
        managed_files=frozenset(obs.get("managed_files", [])),
        managed_tables=tuple(TableDecl(*t) for t in obs.get("managed_tables", [])),
        stale_tables=frozenset(obs.get("stale_tables", [])),
        domains={n: rows for n, rows in db.items() if n not in unchanged},
        unchanged_domains=unchanged,
        postfix_running=bool(obs.get("postfix_running", True)),
        secrets=secrets,
    )
    checks = _read_json(root / "checks.json", {})
    return Case(
        name,
        desired,
        observed,
        _read_json(root / "expected.json", {}),
        tuple(checks.get("never_shown", [])),
        tuple(checks.get("text_contains", [])),
        _read_json(root / "xfail.json", {}),
    )


def _params(check: str) -> list[Any]:
    """One pytest param per case, marked xfail (strict) when the case's xfail.json names ``check``."""
    out = []
    for name in CASE_NAMES:
        reason = _read_json(CASES / name / "xfail.json", {}).get(check)
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def test_cases_exist() -> None:
    """The golden directory holds the cases the plan's contract is checked against."""
    assert len(CASE_NAMES) >= 17


@pytest.mark.parametrize("name", _params("json"))
def test_plan_json_matches_expected(name: str) -> None:
    """The plan of each case renders to exactly the case's expected ``diff --format json`` document."""
    case = load_case(name)
    got = json.loads(plan_json(plan(case.desired, case.observed)))
    if REGENERATE and "json" not in case.xfail:
        (CASES / name / "expected.json").write_text(json.dumps(got, indent=2) + "\n", encoding="utf-8")
        return
    assert got == case.expected


@pytest.mark.parametrize("name", _params("text"))
def test_plan_text_shows_expected_lines(name: str) -> None:
    """The text rendering of each case shows the lines an administrator looks for."""
    case = load_case(name)
    text = plan_text(plan(case.desired, case.observed))
    for line in case.text_contains:
        assert line in text, f"{line!r} missing from:\n{text}"


@pytest.mark.parametrize("name", _params("secrets"))
def test_no_secret_or_hash_in_any_rendering(name: str) -> None:
    """No secret value, old secret value or password hash of any case appears in the JSON, text or repr of its plan."""
    case = load_case(name)
    result = plan(case.desired, case.observed)
    renderings = {
        "json": plan_json(result),
        "text": plan_text(result),
        "colour": plan_text(result, colour=True),
        "repr": repr(result),
    }
    secrets = [v.decode() for v in case.observed.secrets.values()]
    hashes = [p for rows in case.observed.domains.values() for _, p in rows.users.values()]
    hashes += [p for rows in case.desired.domains.values() for _, p in rows.users.values()]
    for value in [*secrets, *hashes, *case.never_shown]:
        for kind, rendered in renderings.items():
            assert value not in rendered, f"{value[:6]}... appears in the {kind} rendering of {name}"


def _reversed(mapping: Any) -> dict[Any, Any]:
    return dict(reversed(list(mapping.items())))


def _rows_reversed(rows: DomainRows) -> DomainRows:
    return DomainRows(_reversed(rows.users), _reversed(rows.aliases))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_plan_order_does_not_depend_on_input_order(name: str) -> None:
    """The same inputs listed in reverse order (files, tables, domains, rows) give the same plan rendering."""
    case = load_case(name)
    d, o = case.desired, case.observed
    desired = replace(
        d,
        files=_reversed(d.files),
        domains={n: _rows_reversed(r) for n, r in reversed(list(d.domains.items()))},
    )
    observed = replace(
        o,
        files=_reversed(o.files),
        managed_tables=tuple(reversed(o.managed_tables)),
        domains={n: _rows_reversed(r) for n, r in reversed(list(o.domains.items()))},
    )
    assert plan_json(plan(desired, observed)) == plan_json(plan(d, o))


def test_no_op_case_is_empty() -> None:
    """A host in sync with the revision plans nothing at all, not even a service action."""
    case = load_case("no_op")
    result = plan(case.desired, case.observed)
    assert result.empty
    assert result.changes == ()
