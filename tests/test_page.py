"""The status page's rendering (``reconciler.api.page``) as pure units: layout, escaping, fleet, limits.

No services: a ``Status`` and a plan document in, HTML out. The golden plan cases of
``tests/cases/`` check that the page lays the pending diff out as ``reconciler diff`` prints it and
shows no secret; hostile text checks the escaping; the browser tests (``test_page_browser.py``)
check the same page live against a real agent.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_plan_golden import CASE_NAMES, load_case

from reconciler.api import page
from reconciler.api.page import DiffCache, LineStyle, PageInput, Renderer, blocks_text, diff_blocks, line_style
from reconciler.plan import plan
from reconciler.render import plan_json, plan_text
from reconciler.status import AgentState, Attempt, AttemptResult, DriftItem, HeadCommit, Status

NOW = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)
HOSTILE = "<img src=x onerror=alert(1)>"
RENDERER = Renderer()


class Tags(HTMLParser):
    """Every element and attribute of a document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> Tags:
    parser = Tags()
    parser.feed(html)
    parser.close()
    return parser


def attempt(**fields: Any) -> Attempt:
    base: dict[str, Any] = {
        "revision": "a" * 40,
        "result": AttemptResult.APPLIED,
        "started_at": NOW,
        "finished_at": NOW,
        "duration": 0.25,
        "subject": "initial revision",
        "author": "Test <test@example.net>",
        "trigger": "start",
    }
    return Attempt(**{**base, **fields})


def status(**fields: Any) -> Status:
    first = attempt()
    base: dict[str, Any] = {
        "state": AgentState.SYNCED,
        "head_revision": "a" * 40,
        "head_commit": HeadCommit(subject="initial revision", author="Test <test@example.net>", time=NOW),
        "applied_revision": "a" * 40,
        "last_attempt": first,
        "history": [first],
        "branch": "main",
        "source": "/srv/git/mail.git",
    }
    return Status(**{**base, **fields})


def render(st_: Status, pending: str | None = None, fleet: Any = None, token: bool = False) -> str:
    diff = DiffCache().get(pending) if pending is not None else None
    html, _ = RENDERER.page(PageInput(st_, diff, fleet, alive=True, token_required=token))
    return html


# -- the pending diff is laid out as `reconciler diff` prints it ---------------------------------------


def _without_summaries(text: str) -> str:
    """``plan_text`` minus what the JSON document does not carry: main.cf/master.cf summaries, Postfix's no-op."""
    summary = ("+ parameter ", "- parameter ", "~ parameter ", "~ service ")
    lines = [line for line in text.split("\n") if not line.startswith(summary)]
    if lines[-2].startswith("postfix: none"):
        lines = [*lines[:-3], ""]  # the blank line before it and the line itself
    return "\n".join(lines)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_page_diff_is_the_text_diff(name: str) -> None:
    """The page's pending diff of every golden case has exactly the lines of ``reconciler diff``, in its order."""
    case = load_case(name)
    result = plan(case.desired, case.observed)
    laid_out = diff_blocks(json.loads(plan_json(result)))
    assert blocks_text(laid_out) == _without_summaries(plan_text(result))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_page_shows_no_secret(name: str) -> None:
    """No secret value, old secret value or password hash of a golden case appears in the page showing its plan."""
    case = load_case(name)
    result = plan(case.desired, case.observed)
    html = render(status(state=AgentState.OUT_OF_SYNC), plan_json(result))
    secrets = [v.decode() for v in case.observed.secrets.values()]
    hashes = [p for rows in case.observed.domains.values() for _, p in rows.users.values()]
    hashes += [p for rows in case.desired.domains.values() for _, p in rows.users.values()]
    for value in [*secrets, *hashes, *case.never_shown]:
        assert value not in html, f"{value[:6]}... appears in the page of {name}"


def test_diff_lines_are_coloured_like_the_terminal() -> None:
    """Added, deleted, hunk and summary lines get the terminal's colours; the ---/+++ file headers none."""
    assert [line_style(x) for x in ["+a", "-b", "@@ -1 +1 @@", "~ secret X changed", "--- live/x", "+++ d/x", " c", ""]] == [
        LineStyle.ADD,
        LineStyle.DELETE,
        LineStyle.HUNK,
        LineStyle.CHANGE,
        LineStyle.META,
        LineStyle.META,
        LineStyle.PLAIN,
        LineStyle.PLAIN,
    ]
    doc = {
        "revision": "b" * 40,
        "changes": [
            {"kind": "file", "action": "update", "target": "main.cf", "diff": "--- live/main.cf\n+++ desired/main.cf\n@@ -1 +1 @@\n-a = 1\n+a = 2\n"},
            {"kind": "row", "action": "create", "target": "virtual_users/x@example.org", "table": "virtual_users",
             "key": "x@example.org", "domain": "example.org", "before": None, "after": {"email": "x@example.org"}},
            {"kind": "service", "action": "reload", "target": "postfix", "reason": "changed: main.cf"},
        ],
    }
    tags = parse(render(status(state=AgentState.OUT_OF_SYNC), json.dumps(doc)))
    spans = [a.get("class") for t, a in tags.tags if t == "span" and (a.get("class") or "").startswith("l-")]
    assert spans == ["l-meta", "l-meta", "l-hunk", "l-del", "l-add", "l-add"]
    assert "domain example.org:" in tags.text and "postfix: reload (changed: main.cf)" in tags.text


def test_a_huge_diff_is_cut_with_a_pointer_to_get_diff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_DIFF_LINES the page stops and says how many lines GET /diff has beyond."""
    monkeypatch.setattr(page, "MAX_DIFF_LINES", 50)
    rows = [
        {"kind": "row", "action": "create", "target": f"virtual_users/u{i}@example.org", "table": "virtual_users",
         "key": f"u{i}@example.org", "domain": "example.org", "before": None, "after": {}}
        for i in range(120)
    ]
    laid_out = diff_blocks({"revision": None, "changes": rows})
    assert sum(len(b.lines) for b in laid_out.blocks) == 50 and laid_out.omitted_lines == 70
    html = RENDERER.page(PageInput(status(), laid_out, None, alive=True, token_required=False))[0]
    assert "70 more line(s) not shown" in html and 'href="/diff"' in html


def test_a_plan_too_large_to_parse_is_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pending plan over MAX_PLAN_BYTES is named, not parsed; the same string is parsed once."""
    cache = DiffCache()
    small = json.dumps({"revision": None, "changes": []})
    first = cache.get(small)
    assert cache.get(small) is first
    monkeypatch.setattr(page, "MAX_PLAN_BYTES", 10)
    assert "GET /diff" in str(cache.get(small + " "))


# -- untrusted text is text ------------------------------------------------------------------------------

TEMPLATE_TAGS = {
    "html", "head", "meta", "title", "link", "script", "body", "header", "h1", "form", "button", "span", "p",
    "main", "section", "div", "h2", "code", "dl", "dt", "dd", "time", "pre", "details", "summary", "ul", "li",
    "em", "a", "table", "thead", "tbody", "tr", "th", "td", "dialog", "label", "input", "footer",
}  # fmt: skip


def _hostile_status(text: str) -> Status:
    bad = attempt(result=AttemptResult.REJECTED, subject=text, author=text, error=f"postfix/main.cf:3: {text}",
                  failed_step="validate", trigger=text)
    return status(
        state=AgentState.FAILED,
        head_revision="c" * 40,
        head_commit=HeadCommit(subject=text, author=text, time=NOW),
        last_attempt=bad,
        history=[bad, attempt()],
        drift=[DriftItem(kind="file", action="update", target=text)],
        source=text,
        branch=text,
    )


def _hostile_plan(text: str) -> str:
    return json.dumps({"revision": text, "changes": [
        {"kind": "file", "action": "update", "target": text, "diff": f"--- a\n+++ b\n@@ -1 +1 @@\n-{text}\n+{text}\n",
         "notes": [text], "secrets_changed": [text]},
        {"kind": "row", "action": "update", "target": text, "table": text, "key": text, "domain": text,
         "before": {}, "after": {}, "changed": [text]},
        {"kind": "table", "action": "rebuild", "target": text, "builder": text, "reason": text},
        {"kind": "service", "action": "reload", "target": "postfix", "reason": text},
    ]})  # fmt: skip


def _assert_inert(html: str, text: str) -> None:
    tags = parse(html)
    for tag, attrs in tags.tags:
        assert tag in TEMPLATE_TAGS, tag
        assert not any(name.startswith("on") or name == "style" for name in attrs), (tag, attrs)
        if tag == "script":
            assert attrs.get("src") == "/static/status.js"
    assert not any(t == "style" for t, _ in tags.tags)


def test_a_hostile_subject_author_and_diff_are_shown_as_text() -> None:
    """A commit subject, author, error, drift target and diff line holding markup are shown literally, as text."""
    fleet = {"hosts": [{"name": HOSTILE, "wave": HOSTILE, "applied_revision": HOSTILE, "state": HOSTILE,
                        "last_seen": HOSTILE, "error": HOSTILE}]}  # fmt: skip
    html = render(_hostile_status(HOSTILE), _hostile_plan(HOSTILE), fleet)
    assert HOSTILE not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    _assert_inert(html, HOSTILE)
    text = "".join(parse(html).text)
    assert text.count(HOSTILE) >= 12  # every place shows it, as text


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([*"<>&\"'=/ ;:`\\x\n", "script", "</pre>", "{{", "}}", "{%", "onerror"]), max_size=20).map("".join))
def test_any_text_renders_inert(text: str) -> None:
    """Whatever the repository holds, the page has only its own elements and no event handler or inline style."""
    _assert_inert(render(_hostile_status(text), _hostile_plan(text)), text)


def test_the_page_has_no_inline_script_or_style_and_its_policy_forbids_them() -> None:
    """The page loads its own script and style sheet only, and the CSP allows nothing inline or foreign."""
    html = render(status(), token=True)
    tags = parse(html)
    scripts = [a for t, a in tags.tags if t == "script"]
    assert scripts == [{"src": "/static/status.js", "defer": None}]
    assert "'unsafe-inline'" not in page.CSP and "default-src 'none'" in page.CSP
    assert "script-src 'self'" in page.CSP and "style-src 'self'" in page.CSP
    assert set(RENDERER.static) == {"status.js", "status.css", "favicon.svg"}


# -- sections --------------------------------------------------------------------------------------------


def test_fleet_section_renders_the_fleet_document() -> None:
    """A ``GET /fleet`` document with hosts gives one row per host (wave, short revision, state badge, error)."""
    fleet = {"hosts": [
        {"name": "mx1", "wave": 0, "applied_revision": "d" * 40, "state": "synced", "last_seen": "2026-12-02T12:00:00Z", "error": None},
        {"name": "mx2", "wave": 1, "applied_revision": "e" * 40, "state": "failed", "last_seen": "2026-12-02T11:59:00Z",
         "error": "postfix/main.cf:4: unknown parameter"},
    ]}  # fmt: skip
    html = render(status(), fleet=fleet)
    tags = parse(html)
    assert any(a.get("id") == "fleet" for _, a in tags.tags)
    rows = html.split('id="fleet"')[1].split("</table>")[0]
    assert rows.count("<tr>") == 3  # the header and two hosts
    assert "mx1" in rows and "dddddddddddd" in rows and "d" * 13 not in rows
    assert 'badge-failed">failed' in rows and "postfix/main.cf:4: unknown parameter" in rows
    assert 'href="/fleet"' in html


@pytest.mark.parametrize("doc", [None, {"hosts": []}, {"hosts": "no"}, {}])
def test_no_fleet_section_without_hosts(doc: Any) -> None:
    """Without a fleet (no document, or no hosts in it) the page has no fleet section."""
    html = render(status(), fleet=doc)
    assert 'id="fleet"' not in html and 'href="/fleet"' not in html


def test_first_render_is_complete_without_script() -> None:
    """The HTML itself shows state, head and applied revision with subject and author, last attempt and history."""
    failed = attempt(revision="f" * 40, result=AttemptResult.REJECTED, subject="typo", error="postfix/main.cf:7: bad",
                     failed_step="validate", trigger="ref")  # fmt: skip
    st_ = status(
        state=AgentState.FAILED,
        head_revision="f" * 40,
        head_commit=HeadCommit(subject="typo", author="Eve <eve@example.net>", time=NOW),
        last_attempt=failed,
        history=[failed, attempt()],
    )
    text = " ".join(" ".join(parse(render(st_)).text).split())
    assert 'failed the branch head was refused' in text
    assert "ffffffffffff typo author Eve <eve@example.net> committed 2026-12-02 12:00:00 UTC" in text
    assert "aaaaaaaaaaaa initial revision author Test <test@example.net>" in text
    assert "failed step validate postfix/main.cf:7: bad" in text
    assert "no plan: the branch head failed" in text
    assert text.count("rejected") == 2  # last attempt and the history row


def test_sync_button_says_whether_a_token_is_wanted() -> None:
    """The Sync form tells the script whether the agent wants a token; the page never holds the token itself."""
    for wanted, value in ((True, "yes"), (False, "no")):
        forms = [a for t, a in parse(render(status(), token=wanted)).tags if t == "form" and a.get("id") == "sync"]
        assert forms == [{"id": "sync", "class": "sync", "method": "post", "action": "/sync", "data-token-required": value}]


def test_live_part_and_its_etag_follow_the_state() -> None:
    """The live part's ETag is the one the page carries, and it changes when the state does."""
    data = PageInput(status(), None, None, alive=True, token_required=False)
    html, tag = RENDERER.page(data)
    assert f'data-etag="{tag.replace(chr(34), "&#34;")}"' in html
    assert page.etag(RENDERER.live(data)) == tag
    other = PageInput(status(state=AgentState.APPLYING), None, None, alive=True, token_required=False)
    assert page.etag(RENDERER.live(other)) != tag
    stuck = PageInput(status(), None, None, alive=False, token_required=False)
    assert 'id="not-alive"' in RENDERER.live(stuck)


def test_fleet_document_is_reused_for_a_few_seconds_and_a_failure_keeps_the_last() -> None:
    """The page reads the fleet at most every FLEET_TTL seconds; a failing read keeps the last document."""
    now = [0.0]
    calls: list[int] = []
    docs: list[Any] = [{"hosts": [{"name": "mx1"}]}, RuntimeError("database down"), {"hosts": []}]

    def source() -> Any:
        calls.append(1)
        doc = docs[len(calls) - 1]
        if isinstance(doc, Exception):
            raise doc
        return doc

    cache = page.FleetCache(source, ttl=5.0, clock=lambda: now[0])
    assert cache.get() == {"hosts": [{"name": "mx1"}]}
    now[0] = 4.9
    assert cache.get() == {"hosts": [{"name": "mx1"}]} and len(calls) == 1
    now[0] = 5.0
    assert cache.get() == {"hosts": [{"name": "mx1"}]} and len(calls) == 2  # the read failed: the last one
    now[0] = 10.0
    assert cache.get() == {"hosts": []} and len(calls) == 3


def test_a_fresh_agent_renders_before_its_first_attempt() -> None:
    """Before the first reconcile (no head, no history, no plan) the page renders and says so."""
    fresh = Status(state=AgentState.OUT_OF_SYNC)
    text = " ".join(" ".join(parse(render(fresh)).text).split())
    assert "out_of_sync" in text and "not planned yet" in text and "no attempt yet" in text
    assert text.count("none yet") == 3  # head, applied, last attempt
