"""The desired state handed to ``plan``: a parsed revision rendered for this host with its secrets.

Pure. ``render_desired`` is called once per plan by ``reconciler.engine`` (and by tests): files
get their secret values and modes, domains become ``DomainRows`` that load their rows only when a
digest differs. Nothing downstream builds desired data again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from reconciler.desired.types import Desired, DomainData, FileSpec, HostSpec, ParsedRevision
from reconciler.rows import AliasRows, DomainRows, UserRows
from reconciler.tables import TableDecl
from reconciler.vocab import SECRET_REF_BYTES

SECRET_FILE_MODE = 0o640
SECRET_FILE_GROUP = "postfix"  # noqa: S105 - a group name


def model_rows(model: Any) -> DomainRows:
    """Rows of one ``DomainFile`` keyed by lower-cased natural key."""
    users = {m.address.casefold(): (m.address, m.password) for m in model.mailboxes}
    aliases = {(a.source.casefold(), a.destination.casefold()): (a.source, a.destination) for a in model.aliases}
    return DomainRows(users, aliases)


def lazy_domain_rows(data: DomainData) -> DomainRows:
    """Rows of a declared domain: its digest now, its rows (from the parse cache) only if needed."""

    def load() -> tuple[UserRows, AliasRows]:
        users, aliases = data.load()
        return {e.casefold(): (e, p) for e, p in users}, {(s.casefold(), d.casefold()): (s, d) for s, d in aliases}

    return DomainRows(digest=data.digest, load=load)


def render_file(template: bytes, secrets: Mapping[str, bytes]) -> bytes:
    """The template with every ``${secret:NAME}`` replaced by its value."""
    return SECRET_REF_BYTES.sub(lambda m: secrets[m.group(1).decode()], template)


def render_desired(
    revision: str | None,
    files: Mapping[str, Any],
    tables: Iterable[Any],
    domains: Mapping[str, DomainRows],
    secrets: Mapping[str, bytes],
    *,
    host: str = "",
    origins: Mapping[str, str] | None = None,
) -> Desired:
    """The plan's ``Desired`` from validated ``DesiredFile``s, ``TableDecl``s and domain rows.

    ``origins`` says, per file name, what makes a fleet host's file host-specific.
    """
    specs = {}
    for name, f in files.items():
        holds = bool(f.secrets)
        specs[name] = FileSpec(
            name,
            f.template,
            render_file(f.template, secrets) if holds else f.template,
            frozenset(f.secrets),
            SECRET_FILE_MODE if holds else 0o644,
            SECRET_FILE_GROUP if holds else "root",
            (origins or {}).get(name, ""),
        )
    decls = tuple(t for t in tables if t.builder)
    return Desired(revision, specs, decls, domains, host)


def host_origins(spec: HostSpec) -> dict[str, str]:
    """Per file name, what makes it host-specific on ``spec``'s host (``diff`` shows it)."""
    out = {name: f"hosts/{spec.name}/postfix/{name}" for name in spec.files}
    if spec.main_cf:
        params = ", ".join(sorted(spec.main_cf))
        out["main.cf"] = out.get("main.cf", "postfix/main.cf") + f" with {spec.path} main_cf: {params}"
    return out


def desired_for(parsed: ParsedRevision, tables: Iterable[TableDecl], secrets: Mapping[str, bytes]) -> Desired:
    """The desired state of a validated revision on this host: what the engine hands to ``plan``."""
    rows = {name: lazy_domain_rows(data) for name, data in parsed.domains.items()}
    spec = parsed.host
    return render_desired(
        parsed.revision,
        parsed.files,
        tables,
        rows,
        secrets,
        host=spec.name if spec is not None else "",
        origins=host_origins(spec) if spec is not None else None,
    )
