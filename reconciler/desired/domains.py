"""Domain files: YAML loaded with line numbers, checked against the model and the cross-file rules.

Pure. ``parse_domain_file`` is called by ``desired.build`` (in worker processes for a large
revision) and by tests; ``cross_domain_problems`` once per revision over every domain.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import ValidationError

from reconciler.desired.types import (
    DOMAINS_DIR,
    MAX_PROBLEMS_PER_FILE,
    DomainData,
    ParsedDomain,
)
from reconciler.desired.yamlfile import YamlLines, load_yaml, validation_problems
from reconciler.errors import Problem
from reconciler.models import DomainFile
from reconciler.source import Snapshot


def parse_domain_file(path: str, data: bytes) -> ParsedDomain:
    """Parse and check one ``domains/<domain>.yaml``; problems carry the file's line numbers."""
    raw, problems = load_yaml(path, data)
    if problems:
        return ParsedDomain(None, tuple(problems))
    lines = YamlLines(data.decode("utf-8"))
    if not isinstance(raw, dict):
        return ParsedDomain(None, (Problem(path, 1, "a domain file must be a mapping with a 'domain' key"),))
    try:
        model = DomainFile.model_validate(raw)
    except ValidationError as exc:
        problems.extend(validation_problems(path, lines, exc, MAX_PROBLEMS_PER_FILE))
        return ParsedDomain(None, tuple(problems))
    problems = _domain_rules(path, model, lines)
    return ParsedDomain(None if problems else model, tuple(problems))


def _domain_rules(path: str, model: DomainFile, lines: YamlLines) -> list[Problem]:
    problems: list[Problem] = []
    domain = model.domain
    stem = path[len(DOMAINS_DIR) :].removesuffix(".yaml")
    if stem != domain:
        problems.append(Problem(path, lines.at(["domain"]), f"domain {domain!r} must equal the file name {stem!r}"))
    seen_mailboxes: dict[str, int] = {}
    for i, mailbox in enumerate(model.mailboxes):
        if mailbox.address.rpartition("@")[2].lower() != domain:
            problems.append(
                Problem(path, lines.at(["mailboxes", i]), f"mailbox {mailbox.address} is not in domain {domain}")
            )
        key = mailbox.address.casefold()
        if key in seen_mailboxes:
            problems.append(
                Problem(
                    path,
                    lines.at(["mailboxes", i]),
                    f"duplicate mailbox {mailbox.address} "
                    f"(first at line {lines.at(['mailboxes', seen_mailboxes[key]])})",
                )
            )
        else:
            seen_mailboxes[key] = i
    seen_aliases: dict[tuple[str, str], int] = {}
    for i, alias in enumerate(model.aliases):
        if alias.source.rpartition("@")[2].lower() != domain:
            problems.append(
                Problem(path, lines.at(["aliases", i]), f"alias source {alias.source} is not in domain {domain}")
            )
        pair = (alias.source.casefold(), alias.destination.casefold())
        if pair in seen_aliases:
            problems.append(
                Problem(
                    path,
                    lines.at(["aliases", i]),
                    f"duplicate alias {alias.source} -> {alias.destination} "
                    f"(first at line {lines.at(['aliases', seen_aliases[pair]])})",
                )
            )
        else:
            seen_aliases[pair] = i
    return problems


def cross_domain_problems(snapshot: Snapshot, domains: Iterable[DomainData]) -> list[Problem]:
    """Rules across domain files: a domain declared twice, alias cycles among hosted addresses."""
    problems: list[Problem] = []
    owner: dict[str, str] = {}
    ordered = sorted(domains, key=lambda d: d.path)
    for d in ordered:
        if d.name in owner:
            problems.append(Problem(d.path, 1, f"domain {d.name} is already declared in {owner[d.name]}"))
        else:
            owner[d.name] = d.path
    # Alias graph over hosted addresses; a self-edge (keep a copy) is how Postfix users say "also
    # deliver here" and is not a loop. Any longer cycle makes Postfix bounce the mail. Postfix
    # tries user@domain, then @domain: a destination that is neither an alias source nor a mailbox
    # of a domain with a catch-all goes on to that catch-all (a loop through two catch-alls is as
    # fatal as any other). Only edges into an address that leads on can close a cycle, so the graph
    # kept is small (a million mailboxes with plain aliases give none); mailboxes are read only
    # for domains with a catch-all that such an edge reaches.
    sources: set[str] = set()
    catch_all: dict[str, tuple[str, int]] = {}  # domain -> where its catch-all row is
    for d in ordered:
        for i, (src, _) in enumerate(d.alias_keys):
            sources.add(src)
            if src.startswith("@"):
                catch_all.setdefault(src[1:], (d.path, i))
    by_name = {d.name: d for d in ordered}
    mailboxes: dict[str, set[str]] = {}

    def leads_on(dst: str) -> bool:
        if dst in sources:
            return True
        domain = dst.rpartition("@")[2]
        if domain not in catch_all or dst.startswith("@"):
            return False
        if domain not in mailboxes:
            mailboxes[domain] = {e.casefold() for e, _ in by_name[domain].load()[0]}
        return dst not in mailboxes[domain]

    edges: dict[str, list[tuple[str, str, int]]] = {}
    for d in ordered:
        for i, (src, dst) in enumerate(d.alias_keys):
            if src != dst and leads_on(dst):
                edges.setdefault(src, []).append((dst, d.path, i))
                if dst not in sources:  # on to its domain's catch-all
                    domain = dst.rpartition("@")[2]
                    path, index = catch_all[domain]
                    edges.setdefault(dst, [("@" + domain, path, index)])
    for cycle in _cycles(edges):
        src = cycle[0]
        dst, path, index = next(e for e in edges[src] if e[0] == cycle[1 % len(cycle)])
        line = YamlLines(snapshot.read(path).decode("utf-8")).at(["aliases", index])
        problems.append(Problem(path, line, "alias cycle: " + " -> ".join([*cycle, cycle[0]])))
    return problems


def _cycles(edges: Mapping[str, list[tuple[str, str, int]]]) -> list[list[str]]:
    """One representative cycle per strongly connected loop (iterative DFS, colours)."""
    white, grey, black = 0, 1, 2
    colour: dict[str, int] = {}
    found: list[list[str]] = []
    for start in sorted(edges):
        if colour.get(start, white) != white:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        trail: list[str] = [start]
        colour[start] = grey
        while stack:
            node, idx = stack[-1]
            succ = edges.get(node, [])
            if idx < len(succ):
                stack[-1] = (node, idx + 1)
                nxt = succ[idx][0]
                state = colour.get(nxt, white)
                if state == white:
                    colour[nxt] = grey
                    stack.append((nxt, 0))
                    trail.append(nxt)
                elif state == grey:
                    found.append(trail[trail.index(nxt) :])
            else:
                colour[node] = black
                stack.pop()
                trail.pop()
    return found
