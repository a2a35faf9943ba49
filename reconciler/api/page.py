"""The status page of ``GET /``: the agent's state for people, server-rendered from Jinja2 templates.

Called by the API application (``reconciler.api.app``) on ``GET /`` (the whole page) and
``GET /ui/live`` (the part the page's script swaps in to follow the agent without a reload). It is
handed the status document, the pending plan as ``diff --format json`` prints it, and the fleet
document as ``GET /fleet`` serves it; besides rendering, it only reads its templates and static
files from the package and keeps two small caches (the parsed plan, the fleet document for a few
seconds), because an open page asks every second.

Everything shown comes from the repository or the live host and is untrusted (a commit subject, an
author, a diff line): the templates are autoescaped, the page loads only its own script and style
sheet, and ``CSP`` forbids anything inline. Secrets are masked before any of it gets here (the
plan's diffs are made on templates; errors are scrubbed by the agent). The pending diff is laid out
as ``reconciler diff`` prints it (``reconciler.render.plan_text``): files with their unified diffs,
tables, rows grouped by domain, and the Postfix action with its reason.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from importlib import resources
from typing import Any

import structlog
from jinja2 import Environment, PackageLoader, StrictUndefined

from reconciler.status import Attempt, AttemptResult, Status

# Strict: nothing inline, nothing from elsewhere. The page's script and style sheet are its own files.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
MAX_DIFF_LINES = 2000  # lines of the pending diff on the page; GET /diff has all of it
MAX_PLAN_BYTES = 8 * 1024 * 1024  # a larger pending plan is not parsed for the page at all
FLEET_TTL = 5.0  # seconds the page reuses the fleet document
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}

FleetSource = Callable[[], Mapping[str, Any] | None]
log = structlog.get_logger("reconciler.api")


class LineStyle(StrEnum):
    """How a line of the pending diff is coloured (``reconciler diff``'s colours on a tty)."""

    PLAIN = "plain"
    ADD = "add"  # "+", green
    DELETE = "del"  # "-", red
    HUNK = "hunk"  # "@", cyan
    CHANGE = "change"  # "~", yellow
    META = "meta"  # "--- live/x" and "+++ desired/x", uncoloured as in the terminal


_STYLES = {"+": LineStyle.ADD, "-": LineStyle.DELETE, "@": LineStyle.HUNK, "~": LineStyle.CHANGE}


def line_style(line: str) -> LineStyle:
    """The colour ``plan_text(colour=True)`` gives ``line``."""
    if line.startswith(("+++", "---")):
        return LineStyle.META
    return _STYLES.get(line[:1], LineStyle.PLAIN)


@dataclass(frozen=True)
class DiffLine:
    """One line of the pending diff and its colour (in-memory view)."""

    style: LineStyle
    text: str


@dataclass(frozen=True)
class DiffBlock:
    """A paragraph of ``reconciler diff``: a file, the tables, a domain's rows, or Postfix (in-memory view)."""

    kind: str  # file, table, domain, service
    title: str  # the paragraph's first line ("" for the tables)
    lines: tuple[DiffLine, ...]
    key: str  # stable id, to keep a block open across live updates


@dataclass(frozen=True)
class PendingDiff:
    """The pending plan as the page shows it (in-memory view)."""

    header: str
    blocks: tuple[DiffBlock, ...]
    empty: bool
    omitted_lines: int = 0
    changes: int = 0


def _styled(lines: Sequence[str]) -> tuple[DiffLine, ...]:
    return tuple(DiffLine(line_style(line), line) for line in lines)


def _key(kind: str, name: str) -> str:
    return f"{kind}-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def diff_blocks(doc: Mapping[str, Any]) -> PendingDiff:
    """Lay out a ``diff --format json`` document the way ``plan_text`` prints the plan.

    The one difference: ``plan_text`` heads the diff of main.cf and master.cf with a summary of the
    parameters and services that changed, which the JSON document does not carry (the diff lines
    below it show the same).
    """
    changes: list[Mapping[str, Any]] = [c for c in doc.get("changes", []) if isinstance(c, Mapping)]
    rev = str(doc.get("revision") or "working tree")[:12]
    counted = [c for c in changes if c.get("kind") != "service"]
    if not counted:
        return PendingDiff(f"revision {rev}: in sync, nothing to do", (), empty=True)
    blocks: list[DiffBlock] = []
    budget = MAX_DIFF_LINES
    omitted = 0

    def take(lines: list[str]) -> list[str]:
        nonlocal budget, omitted
        kept = lines[: max(budget, 0)]
        omitted += len(lines) - len(kept)
        budget -= len(kept)
        return kept

    for c in changes:
        if c.get("kind") != "file":
            continue
        target = str(c.get("target", ""))
        notes = [str(n) for n in c.get("notes", [])]
        title = f"file {c.get('action')}: {target}" + (f"  ({'; '.join(notes)})" if notes else "")
        lines = [f"~ secret {s} changed" for s in c.get("secrets_changed", [])]
        diff = str(c.get("diff") or "")
        if diff:
            lines.extend(diff.rstrip("\n").split("\n"))
        blocks.append(DiffBlock("file", title, _styled(take(lines)), _key("file", target)))
    tables = [
        f"table {c.get('action')}: {c.get('target')} ({c.get('builder')}; {c.get('reason')})"
        for c in changes
        if c.get("kind") == "table"
    ]
    if tables:
        blocks.append(DiffBlock("table", "", _styled(take(tables)), "tables"))
    by_domain: dict[str, list[str]] = {}
    for c in changes:
        if c.get("kind") != "row":
            continue
        action = str(c.get("action"))
        sign = {"create": "+", "delete": "-"}.get(action, "~")
        what = str(c.get("key"))
        changed = c.get("changed")
        if action == "update" and changed:
            what += (
                " (" + ", ".join("password hash changed" if k == "password" else f"{k} changed" for k in changed) + ")"
            )
        by_domain.setdefault(str(c.get("domain")), []).append(f"{sign} {c.get('table')} {action} {what}")
    for domain in sorted(by_domain):
        styled = _styled(take(by_domain[domain]))
        blocks.append(DiffBlock("domain", f"domain {domain}:", styled, _key("domain", domain)))
    for c in changes:
        if c.get("kind") == "service":
            blocks.append(DiffBlock("service", f"postfix: {c.get('action')} ({c.get('reason')})", (), "service"))
    header = f"revision {rev}: {len(changes)} change(s)"
    return PendingDiff(header, tuple(blocks), empty=False, omitted_lines=omitted, changes=len(counted))


def blocks_text(pending: PendingDiff) -> str:
    """The page's diff as plain text, paragraph by paragraph as ``plan_text`` prints it."""
    out = [pending.header]
    for block in pending.blocks:
        out.append("")
        if block.title:
            out.append(block.title)
        out.extend(line.text for line in block.lines)
    return "\n".join(out) + "\n"


class DiffCache:
    """The parsed pending plan, kept until the agent publishes another one (thread-safe).

    The page's script asks for the live part every second: the agent's pending plan is a new string
    only when it changed, so it is parsed once per plan, not once per request.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._source: str | None = None
        self._value: PendingDiff | str | None = None

    def get(self, pending: str) -> PendingDiff | str:
        with self._lock:
            if self._source is pending and self._value is not None:
                return self._value
        value: PendingDiff | str
        if len(pending) > MAX_PLAN_BYTES:
            value = f"the pending plan is {len(pending) // 1024 // 1024} MiB: read it with GET /diff"
        else:
            try:
                doc = json.loads(pending)
                value = diff_blocks(doc) if isinstance(doc, Mapping) else "the pending plan is not a document"
            except ValueError:
                value = "the pending plan is not a document"
        with self._lock:
            self._source, self._value = pending, value
        return value


class FleetCache:
    """The fleet document for the page, read at most every ``ttl`` seconds (thread-safe).

    An open page asks for its live part every second; the fleet document may be a database query
    (``reconciler_hosts``), so the page reuses it for a few seconds. When reading it fails, the
    page keeps the last document it had (or shows no fleet) and the failure is logged once, not
    once a second.
    """

    def __init__(
        self, source: FleetSource, ttl: float = FLEET_TTL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._source = source
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._doc: Mapping[str, Any] | None = None
        self._read_at = float("-inf")
        self._failing = False

    def get(self) -> Mapping[str, Any] | None:
        with self._lock:
            now = self._clock()
            if now - self._read_at < self._ttl:
                return self._doc
            self._read_at = now
            try:
                self._doc = self._source()
            except Exception as exc:  # the page still shows this host
                if not self._failing:
                    log.warning("page.fleet_failed", error=exc.__class__.__name__)
                self._failing = True
            else:
                self._failing = False
            return self._doc


@dataclass(frozen=True)
class Commit:
    """A revision as the page shows it (in-memory view)."""

    revision: str | None
    subject: str | None = None
    author: str | None = None
    time: datetime | None = None

    @property
    def short(self) -> str:
        return (self.revision or "")[:12]


@dataclass(frozen=True)
class FleetRow:
    """One row of the fleet section, from a ``GET /fleet`` host entry (in-memory view)."""

    name: str
    wave: str
    applied_revision: str
    state: str
    last_seen: str  # as the page shows it
    error: str
    waiting_for: str = ""
    stale: bool = False  # not seen for [fleet].host_timeout
    this: bool = False  # the host serving the page


@dataclass(frozen=True)
class PageInput:
    """Everything one rendering of the page reads (in-memory)."""

    status: Status
    pending: PendingDiff | str | None  # a plan, or why there is none
    fleet: Mapping[str, Any] | None
    alive: bool
    token_required: bool


def _applied(status: Status) -> Commit:
    """The applied revision with the subject and author its last successful attempt recorded."""
    rev = status.applied_revision
    if rev and status.head_revision == rev and status.head_commit is not None:
        hc = status.head_commit
        return Commit(rev, hc.subject, hc.author, hc.time)
    for attempt in status.history:
        if attempt.revision == rev and attempt.result in (AttemptResult.APPLIED, AttemptResult.NO_CHANGE):
            return Commit(rev, attempt.subject, attempt.author, None)
    return Commit(rev)


def _applied_at(history: Sequence[Attempt], rev: str | None) -> datetime | None:
    for attempt in history:
        if attempt.revision == rev and attempt.result in (AttemptResult.APPLIED, AttemptResult.NO_CHANGE):
            return attempt.finished_at
    return None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _seen(value: Any) -> str:
    if isinstance(value, str):
        try:
            return _when(datetime.fromisoformat(value))
        except ValueError:
            return value
    return _when(value) if isinstance(value, datetime) else _text(value)


def fleet_hosts(doc: Mapping[str, Any] | None, this_host: str = "") -> list[FleetRow]:
    """The host rows of a ``GET /fleet`` document; none when there is no fleet.

    A fleet of one, this host itself, is no fleet: the rest of the page already shows it.
    """
    hosts = doc.get("hosts") if isinstance(doc, Mapping) else None
    if not isinstance(hosts, list):
        return []
    out = []
    for h in hosts:
        if not isinstance(h, Mapping):
            continue
        waiting = h.get("waiting_for")
        out.append(
            FleetRow(
                name=_text(h.get("name")),
                wave=_text(h.get("wave")),
                applied_revision=_text(h.get("applied_revision"))[:12],
                state=_text(h.get("state")),
                last_seen=_seen(h.get("last_seen")),
                error=_text(h.get("error")),
                waiting_for=", ".join(str(w) for w in waiting) if isinstance(waiting, list) else "",
                stale=h.get("stale") is True,
                this=bool(this_host) and h.get("name") == this_host,
            )
        )
    if len(out) == 1 and out[0].this:
        return []
    return out


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else ""


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""


class Renderer:
    """The page's templates, loaded once per application."""

    def __init__(self) -> None:
        self.env = Environment(
            loader=PackageLoader("reconciler.api", "templates"),
            autoescape=True,  # every template is HTML; nothing rendered is trusted
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.env.filters["when"] = _when
        self.env.filters["iso"] = _iso
        self.static = _static_files()

    def _context(self, data: PageInput) -> dict[str, Any]:
        status = data.status
        head = Commit(status.head_revision)
        if status.head_commit is not None:
            hc = status.head_commit
            head = Commit(status.head_revision, hc.subject, hc.author, hc.time)
        return {
            "status": status,
            "state": status.state.value,
            "head": head,
            "applied": _applied(status),
            "applied_at": _applied_at(status.history, status.applied_revision),
            "last": status.last_attempt,
            "pending": data.pending,
            "pending_is_plan": isinstance(data.pending, PendingDiff),
            "fleet": fleet_hosts(data.fleet, status.host),
            "alive": data.alive,
            "token_required": data.token_required,
        }

    def live(self, data: PageInput) -> str:
        """The part of the page that follows the agent (``GET /ui/live``)."""
        return self.env.get_template("live.html").render(self._context(data))

    def page(self, data: PageInput) -> tuple[str, str]:
        """The whole page and the ETag of its live part."""
        context = self._context(data)
        tag = etag(self.env.get_template("live.html").render(context))
        return self.env.get_template("page.html").render({**context, "etag": tag}), tag


def etag(body: str) -> str:
    """A strong ETag of a rendered body."""
    return '"' + hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()[:20] + '"'


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The page's own script, style sheet and icon: name -> (content, media type)."""
    root = resources.files("reconciler.api").joinpath("static")
    out: dict[str, tuple[bytes, str]] = {}
    for entry in root.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in STATIC_TYPES:
            out[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return out
