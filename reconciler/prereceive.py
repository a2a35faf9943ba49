"""``reconciler pre-receive``: the git server refuses a bad revision before it is on the branch.

Called by the CLI from the bare repository's ``hooks/pre-receive`` (``deploy/pre-receive.example``).
git writes one ``<old> <new> <ref>`` line per updated ref on stdin and runs the hook inside the
repository, with the pushed objects still in quarantine (``gitrepo`` makes them readable). Each new
head of ``[source].branch`` gets the checks the agent would run before touching anything live:

- the signature policy (``engine.check_signature``), on the new head commit, as the agent checks it;
- ``validate_snapshot``, exactly as ``reconciler validate --rev`` (schemas, Postfix's own tools on
  a staged copy, every ``warning:`` an error);
- the deletion guard (``engine.deletion_guard``). At push time the database is not consulted (the
  git server need not reach it, and a push must not fail because it is down): the managed rows are
  those the branch describes now (the ``old`` side of the update), the deleted rows those of it the
  new head no longer describes. On a synced host that is what the agent computes from the database;
  the agent checks again against the database when it applies.

Other refs (tags, other branches) are accepted untouched: agents only follow ``[source].branch``.
Deleting that branch is refused: every agent would lose its source. Problems are returned as
``Problem`` (``path[:line]: message``; a problem of the commit itself is located at the ref).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from reconciler.desired.build import build_desired
from reconciler.desired.types import ParsedRevision
from reconciler.engine import check_signature, deletion_guard
from reconciler.errors import PermanentError, Problem, ReconcilerError
from reconciler.models import AgentConfig
from reconciler.source import Snapshot, open_snapshot
from reconciler.validate import validate_snapshot
from reconciler.vocab import Table

log = structlog.get_logger("reconciler.prereceive")

_LINE = re.compile(r"(?P<old>[0-9a-f]{40}|[0-9a-f]{64}) (?P<new>[0-9a-f]{40}|[0-9a-f]{64}) (?P<ref>\S+)\Z")


class HookInputError(ReconcilerError):
    """git's input to the hook is not ``<old> <new> <ref>`` lines: the hook cannot judge the push."""


@dataclass(frozen=True)
class RefUpdate:
    """One line of git's input to the hook (in-memory)."""

    old: str
    new: str
    ref: str

    @property
    def creates(self) -> bool:
        return not self.old.strip("0")

    @property
    def deletes(self) -> bool:
        return not self.new.strip("0")


@dataclass(frozen=True)
class RefVerdict:
    """What the hook decided for one ref (in-memory result); no problems means accepted."""

    update: RefUpdate
    checked: bool  # False: not the followed branch, accepted without checks
    problems: tuple[Problem, ...] = ()


def parse_updates(lines: Iterable[str]) -> list[RefUpdate]:
    """git's ``<old> <new> <ref>`` lines; raises ``HookInputError`` naming a malformed line."""
    updates = []
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None:
            raise HookInputError(f"stdin:{number}: expected '<old> <new> <ref>' from git, got {line[:200]!r}")
        updates.append(RefUpdate(m["old"], m["new"], m["ref"]))
    return updates


def _row_keys(desired: ParsedRevision) -> set[tuple[str, ...]]:
    """Every row the domain files describe, keyed as the plan compares them (case-folded)."""
    keys: set[tuple[str, ...]] = set()
    for name, data in desired.domains.items():
        keys.add((Table.DOMAINS, name.casefold()))
        users, _ = data.load()
        keys.update((Table.USERS, email.casefold()) for email, _password in users)
        keys.update((Table.ALIASES, source, destination) for source, destination in data.alias_keys)
    return keys


def _deletion_problems(
    cfg: AgentConfig, repo: Path, update: RefUpdate, new: Snapshot, desired: ParsedRevision
) -> list[str]:
    if update.creates:
        return []  # a new branch replaces no rows of it
    old_desired, _ = build_desired(open_snapshot(repo, update.old))
    before = _row_keys(old_desired)
    deletes = len(before - _row_keys(desired))
    try:
        deletion_guard(cfg, new, deletes, len(before))
    except PermanentError as exc:
        return [str(exc)]
    return []


def check_update(cfg: AgentConfig, repo: Path, update: RefUpdate) -> RefVerdict:
    """The verdict for one ref update (see the module docstring)."""
    if update.ref != f"refs/heads/{cfg.source.branch}":
        return RefVerdict(update, checked=False)
    if update.deletes:
        message = "deleting the branch the agents follow is refused"
        return RefVerdict(update, checked=True, problems=(Problem(update.ref, None, message),))
    snapshot = open_snapshot(repo, update.new)
    try:
        check_signature(cfg, snapshot)
    except PermanentError as exc:
        return RefVerdict(update, checked=True, problems=(Problem(update.ref, None, str(exc)),))
    validated = validate_snapshot(
        snapshot, cfg.postfix.config_dir, outside_paths=cfg.postfix.outside_paths, every_host=True
    )
    if validated.problems:
        return RefVerdict(update, checked=True, problems=validated.problems)
    refused = _deletion_problems(cfg, repo, update, snapshot, validated.desired)
    return RefVerdict(update, checked=True, problems=tuple(Problem(update.ref, None, m) for m in refused))


def check_push(cfg: AgentConfig, repo: Path, updates: Iterable[RefUpdate]) -> list[RefVerdict]:
    """The verdict for every ref of a push; the push is accepted when no verdict has a problem."""
    verdicts = []
    for update in updates:
        verdict = check_update(cfg, repo, update)
        log.info(
            "prereceive.verdict",
            ref=update.ref,
            new=update.new[:12],
            checked=verdict.checked,
            problems=len(verdict.problems),
        )
        verdicts.append(verdict)
    return verdicts
