"""Property tests of the plan stage: applying a plan to the observed state yields the desired state.

A small pure executor stands in for ``apply``: files are set or removed, built tables rebuilt or
removed, and rows changed by natural key exactly as the SQL of ``reconciler/apply/rows.py`` does it
(comparisons under the case-insensitive collation of ``reconciler/sql/mysql.sql``, UNIQUE keys
enforced, domain deletes cascading). The state is then observed again the way ``observed.observe``
does (digests first, full rows only for differing domains) and planned again: nothing may be left.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.desired.render import render_file
from reconciler.plan import (
    Action,
    Desired,
    FileChange,
    FileSpec,
    LiveFile,
    Observed,
    RowChange,
    TableChange,
    plan,
)
from reconciler.rows import DomainRows
from reconciler.tables import TableDecl

DOMAINS = ("a.example", "b.example", "c.example")
LOCALS = ("ann", "bob", "cy")
PASSWORDS = ("{SHA512-CRYPT}$6$one", "{SHA512-CRYPT}$6$two", "{BLF-CRYPT}$2y$05$three")
FILE_NAMES = ("main.cf", "master.cf", "aliases", "canonical", "relay_password", "extra.cf")
TEMPLATES = (
    b"inet_interfaces = all\n",
    b"inet_interfaces = 127.0.0.1\nmyhostname = mx.example\n",
    b"root admin@a.example\n",
    b"[relay.example]:587 user:${secret:pw}\n",
    b"password = ${secret:pw}\ndbname = mail\n",
)
SECRET_VALUES = (b"Alpha-Secret-1", b"Bravo-Secret-2")
TABLE_TYPES = ("hash", "btree", "lmdb", "cdb")
BUILDERS = ("postmap", "postalias")


class IntegrityError(Exception):
    """A UNIQUE key or foreign key refused a statement (what MySQL would raise)."""


def ci(value: str) -> str:
    """A value as utf8mb4_unicode_ci compares it (the test data is ASCII, so folding case is enough)."""
    return value.casefold()


@dataclass
class Db:
    """The three tables of SPEC section 2 (in-memory, mutable)."""

    domains: dict[int, str] = field(default_factory=dict)
    users: dict[int, tuple[int, str, str]] = field(default_factory=dict)  # id -> (domain_id, email, password)
    aliases: dict[int, tuple[int, str, str]] = field(default_factory=dict)  # id -> (domain_id, source, dest)
    next_id: int = 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def check_unique(self) -> None:
        """Raise like MySQL when a UNIQUE key holds two equal values."""
        names = [ci(n) for n in self.domains.values()]
        emails = [ci(e) for _, e, _ in self.users.values()]
        pairs = [(ci(s), ci(d)) for _, s, d in self.aliases.values()]
        for what, values in (("domain", names), ("email", emails), ("alias", pairs)):
            if len(values) != len(set(values)):
                raise IntegrityError(f"duplicate {what}")
        for domain_id, _, _ in [*self.users.values(), *self.aliases.values()]:
            if domain_id not in self.domains:
                raise IntegrityError("foreign key")

    def insert_domain(self, name: str) -> None:
        self.domains[self._id()] = name
        self.check_unique()

    def domain_id(self, name: str) -> int:
        """``SELECT id FROM virtual_domains WHERE name = %s``."""
        for domain_id, have in self.domains.items():
            if ci(have) == ci(name):
                return domain_id
        raise AssertionError(f"domain {name} vanished during the apply")

    def rows_of(self, domain_id: int) -> DomainRows:
        """Rows of one domain keyed as ``observed.read_domain_rows`` keys them."""
        users = {ci(e): (e, p) for d, e, p in self.users.values() if d == domain_id}
        aliases = {(ci(s), ci(t)): (s, t) for d, s, t in self.aliases.values() if d == domain_id}
        return DomainRows(users, aliases)

    def as_state(self) -> dict[str, tuple[frozenset[tuple[str, str]], frozenset[tuple[str, str]]]]:
        """Every domain's exact users and aliases, for comparing with the desired state."""
        return {
            name: (
                frozenset((e, p) for d, e, p in self.users.values() if d == domain_id),
                frozenset((s, t) for d, s, t in self.aliases.values() if d == domain_id),
            )
            for domain_id, name in self.domains.items()
        }


def execute_rows(db: Db, changes: Iterable[RowChange]) -> None:
    """The statements of ``Applier._rows``, in its order, against the in-memory tables."""
    changes = list(changes)
    for c in changes:
        if c.table == "virtual_domains" and c.action is Action.CREATE:
            db.insert_domain(c.key)
        elif c.table == "virtual_domains" and c.action is Action.UPDATE:
            assert c.before is not None
            for i, n in list(db.domains.items()):
                if ci(n) == ci(c.before["name"]):
                    db.domains[i] = c.key
    user_inserts: list[tuple[int, str, str]] = []
    alias_inserts: list[tuple[int, str, str]] = []
    for c in changes:
        if c.table == "virtual_users":
            if c.action is Action.DELETE:
                assert c.before is not None
                db.users = {i: r for i, r in db.users.items() if ci(r[1]) != ci(c.before["email"])}
            elif c.action is Action.UPDATE:
                assert c.before is not None and c.after is not None
                new_domain = db.domain_id(c.domain)
                for i, (_, email, _) in list(db.users.items()):
                    if ci(email) == ci(c.before["email"]):
                        db.users[i] = (new_domain, c.after["email"], c.after["password"])
                db.check_unique()
            else:
                assert c.after is not None
                user_inserts.append((db.domain_id(c.domain), c.after["email"], c.after["password"]))
        elif c.table == "virtual_aliases":
            if c.action is Action.DELETE:
                assert c.before is not None
                key = (ci(c.before["source"]), ci(c.before["destination"]))
                db.aliases = {i: r for i, r in db.aliases.items() if (ci(r[1]), ci(r[2])) != key}
            elif c.action is Action.UPDATE:
                assert c.before is not None and c.after is not None
                key = (ci(c.before["source"]), ci(c.before["destination"]))
                for i, (domain_id, source, dest) in list(db.aliases.items()):
                    if (ci(source), ci(dest)) == key:
                        db.aliases[i] = (domain_id, c.after["source"], c.after["destination"])
                db.check_unique()
            else:
                assert c.after is not None
                alias_inserts.append((db.domain_id(c.domain), c.after["source"], c.after["destination"]))
    for row in user_inserts:
        db.users[db._id()] = row
        db.check_unique()
    for row in alias_inserts:
        db.aliases[db._id()] = row
        db.check_unique()
    for c in changes:
        if c.table == "virtual_domains" and c.action is Action.DELETE:
            gone = {i for i, n in db.domains.items() if ci(n) == ci(c.key)}
            db.domains = {i: n for i, n in db.domains.items() if i not in gone}
            # ON DELETE CASCADE
            db.users = {i: r for i, r in db.users.items() if r[0] not in gone}
            db.aliases = {i: r for i, r in db.aliases.items() if r[0] not in gone}


@dataclass
class Host:
    """The live host: config files, built tables and the agent's inventory (in-memory, mutable)."""

    files: dict[str, LiveFile]
    built: dict[tuple[str, str], bytes]  # (source name, suffix) -> source content it was built from
    managed_files: frozenset[str]
    managed_tables: tuple[TableDecl, ...]
    db: Db
    running: bool


def execute(host: Host, changes: Iterable[FileChange | TableChange | RowChange | object]) -> None:
    """Apply a plan's changes to the host the way ``Applier`` does (files, then tables, then rows)."""
    changes = list(changes)
    for c in changes:
        if isinstance(c, FileChange):
            if c.action is Action.DELETE:
                host.files.pop(c.name, None)
            else:
                assert c.content is not None
                host.files[c.name] = LiveFile(c.content, c.mode, c.group)
    for c in changes:
        if isinstance(c, TableChange):
            for suffix in c.table.built_suffixes:
                if c.action is Action.REBUILD:
                    host.built[(c.table.name, suffix)] = host.files[c.table.name].content
                else:
                    host.built.pop((c.table.name, suffix), None)
    execute_rows(host.db, [c for c in changes if isinstance(c, RowChange)])


def observe(host: Host, desired: Desired, secrets: dict[str, bytes]) -> Observed:
    """What ``observed.observe`` reports of the host for a revision."""
    names = set(desired.files) | host.managed_files
    stale = set()
    for table in desired.tables:
        source = host.files.get(table.name)
        if source is None or any(host.built.get((table.name, s)) != source.content for s in table.built_suffixes):
            stale.add(table.name)
    digests = {name: host.db.rows_of(domain_id) for domain_id, name in host.db.domains.items()}
    unchanged = frozenset(
        n for n, rows in desired.domains.items() if n in digests and digests[n].digest() == rows.digest()
    )
    return Observed(
        files={n: host.files[n] for n in names if n in host.files},
        managed_files=host.managed_files,
        managed_tables=host.managed_tables,
        stale_tables=frozenset(stale),
        domains={n: rows for n, rows in digests.items() if n not in unchanged},
        unchanged_domains=unchanged,
        postfix_running=host.running,
        secrets=secrets,
    )


# ------------------------------------------------------------------------------------------------
# Strategies


def case_variant(draw: st.DrawFn, text: str) -> str:
    """``text`` with each letter's case drawn at random."""
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(ch.upper() if flip else ch for ch, flip in zip(text, flips, strict=True))


def address(draw: st.DrawFn, local: str, domain: str) -> str:
    return f"{case_variant(draw, local)}@{case_variant(draw, domain)}"


@st.composite
def desired_rows(draw: st.DrawFn) -> dict[str, DomainRows]:
    """Domain files as ``desired.model_rows`` turns them into rows (keys unique up to case, in their domain)."""
    out: dict[str, DomainRows] = {}
    for domain in draw(st.lists(st.sampled_from(DOMAINS), unique=True)):
        users = {}
        for local in draw(st.lists(st.sampled_from(LOCALS), unique=True)):
            email = address(draw, local, domain)
            users[ci(email)] = (email, draw(st.sampled_from(PASSWORDS)))
        aliases = {}
        for _ in range(draw(st.integers(0, 4))):
            local = draw(st.sampled_from(("", *LOCALS)))
            source = f"@{case_variant(draw, domain)}" if not local else address(draw, local, domain)
            dest = address(draw, draw(st.sampled_from(LOCALS)), draw(st.sampled_from(DOMAINS)))
            aliases.setdefault((ci(source), ci(dest)), (source, dest))
        out[domain] = DomainRows(users, aliases)
    return out


@st.composite
def live_db(draw: st.DrawFn, desired: dict[str, DomainRows]) -> Db:
    """Rows as found in MySQL: mostly the desired ones, some respelled, re-hashed, misplaced, missing or rogue."""
    db = Db()
    for domain in DOMAINS:
        if draw(st.integers(0, 3)) > (0 if domain in desired else 2):
            db.domains[db._id()] = domain
    if not db.domains:
        return db
    by_name = {name: domain_id for domain_id, name in db.domains.items()}
    ids = sorted(db.domains)
    emails: set[str] = set()
    pairs: set[tuple[str, str]] = set()

    def place(domain: str) -> int:
        home = by_name.get(domain)
        if home is not None and draw(st.integers(0, 4)):
            return home
        return draw(st.sampled_from(ids))  # a misplaced row, or one of a domain not in the database

    def respell(value: str) -> str:
        return case_variant(draw, value.lower()) if draw(st.integers(0, 3)) == 0 else value

    for domain, rows in desired.items():
        for email, password in rows.users.values():
            if draw(st.integers(0, 4)) and ci(email) not in emails:
                emails.add(ci(email))
                if draw(st.integers(0, 3)) == 0:
                    password = draw(st.sampled_from(PASSWORDS))
                db.users[db._id()] = (place(domain), respell(email), password)
        for source, dest in rows.aliases.values():
            if draw(st.integers(0, 4)) and (ci(source), ci(dest)) not in pairs:
                pairs.add((ci(source), ci(dest)))
                db.aliases[db._id()] = (place(domain), respell(source), respell(dest))
    for _ in range(draw(st.integers(0, 3))):
        domain = draw(st.sampled_from(DOMAINS))
        email = address(draw, draw(st.sampled_from(LOCALS)), domain)
        if ci(email) not in emails:
            emails.add(ci(email))
            db.users[db._id()] = (place(domain), email, draw(st.sampled_from(PASSWORDS)))
    for _ in range(draw(st.integers(0, 3))):
        domain = draw(st.sampled_from(DOMAINS))
        local = draw(st.sampled_from(("", *LOCALS)))
        source = f"@{case_variant(draw, domain)}" if not local else address(draw, local, domain)
        dest = address(draw, draw(st.sampled_from(LOCALS)), draw(st.sampled_from(DOMAINS)))
        if (ci(source), ci(dest)) not in pairs:
            pairs.add((ci(source), ci(dest)))
            db.aliases[db._id()] = (place(domain), source, dest)
    return db


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Desired, Host, dict[str, bytes]]:
    """A random revision and a random host to reconcile it onto."""
    secrets = {"pw": draw(st.sampled_from(SECRET_VALUES))}
    files: dict[str, FileSpec] = {}
    for name in draw(st.lists(st.sampled_from(FILE_NAMES), unique=True, min_size=1)):
        template = draw(st.sampled_from(TEMPLATES))
        holds = b"${secret:" in template
        files[name] = FileSpec(
            name,
            template,
            render_file(template, secrets),
            frozenset({"pw"}) if holds else frozenset(),
            0o640 if holds else 0o644,
            "postfix" if holds else "root",
        )
    table_names = [n for n in sorted(files) if n not in ("main.cf", "master.cf")]
    sources = draw(st.lists(st.sampled_from(table_names), unique=True)) if table_names else []
    tables = tuple(TableDecl(n, draw(st.sampled_from(TABLE_TYPES)), draw(st.sampled_from(BUILDERS))) for n in sources)
    rows = draw(desired_rows())
    desired = Desired(None, files, tables, rows)

    live: dict[str, LiveFile] = {}
    for name in FILE_NAMES:
        choice = draw(st.sampled_from(("absent", "desired", "other")))
        if choice == "absent":
            continue
        if choice == "desired" and name in files:
            content = files[name].content
        else:
            old = {"pw": draw(st.sampled_from(SECRET_VALUES))}
            content = render_file(draw(st.sampled_from(TEMPLATES)), old)
        live[name] = LiveFile(
            content, draw(st.sampled_from((0o644, 0o640, 0o600))), draw(st.sampled_from(("root", "postfix")))
        )
    managed_files = frozenset(draw(st.lists(st.sampled_from(FILE_NAMES), unique=True)))
    old_sources = draw(st.lists(st.sampled_from(sorted(managed_files)), unique=True)) if managed_files else []
    managed_tables = tuple(
        TableDecl(n, draw(st.sampled_from(TABLE_TYPES)), draw(st.sampled_from(BUILDERS))) for n in old_sources
    )
    built: dict[tuple[str, str], bytes] = {}
    for table in (*managed_tables, *tables):
        for suffix in table.built_suffixes:
            state = draw(st.sampled_from(("absent", "fresh", "stale")))
            if state == "fresh" and table.name in live:
                built[(table.name, suffix)] = live[table.name].content
            elif state != "absent":
                built[(table.name, suffix)] = b"built from an older source"
    host = Host(live, built, managed_files, managed_tables, draw(live_db(rows)), draw(st.booleans()))
    return desired, host, secrets


def _desired_state(desired: Desired) -> dict[str, tuple[frozenset[tuple[str, str]], frozenset[tuple[str, str]]]]:
    return {
        name: (frozenset(rows.users.values()), frozenset(rows.aliases.values()))
        for name, rows in desired.domains.items()
    }


def _converges(desired: Desired, host: Host, secrets: dict[str, bytes]) -> None:
    """Plan, execute, check the host against desired, observe and plan again."""
    before_files = dict(host.files)
    before_managed = host.managed_files
    before_tables = host.managed_tables
    result = plan(desired, observe(host, desired, secrets))
    execute(host, result.changes)
    host.managed_files = result.managed_files
    host.managed_tables = result.managed_tables

    assert host.db.as_state() == _desired_state(desired)
    for name, spec in desired.files.items():
        assert host.files[name] == LiveFile(spec.content, spec.mode, spec.group), name
    for name in before_managed - set(desired.files):
        assert name not in host.files, f"{name} left behind after leaving the repo"
    for name in set(FILE_NAMES) - set(desired.files) - before_managed:
        assert host.files.get(name) == before_files.get(name), f"unmanaged file {name} touched"
    for table in desired.tables:
        for suffix in table.built_suffixes:
            assert host.built.get((table.name, suffix)) == host.files[table.name].content, table
    declared = {(t.name, s) for t in desired.tables for s in t.built_suffixes}
    for table in before_tables:
        for suffix in table.built_suffixes:
            key = (table.name, suffix)
            assert key in declared or key not in host.built, f"built {key} of an undeclared table left behind"

    again = plan(desired, observe(host, desired, secrets))
    assert again.empty, [f"{c.kind.value} {c.action.value} {c.target}" for c in again.changes]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_applying_the_plan_reaches_desired_and_replanning_is_empty(
    scenario: tuple[Desired, Host, dict[str, bytes]],
) -> None:
    """Executing plan(desired, observed) on the observed host yields exactly desired, and a second plan is empty."""
    desired, host, secrets = scenario
    _converges(desired, host, secrets)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_service_action_follows_the_changes(scenario: tuple[Desired, Host, dict[str, bytes]]) -> None:
    """Postfix is reloaded or restarted iff it runs and what it reads changes; mode-only and row-only plans touch nothing."""
    desired, host, secrets = scenario
    result = plan(desired, observe(host, desired, secrets))
    touches_postfix = any(f.content_changed for f in result.files) or any(
        t.reason != "source mode or group changed" for t in result.tables
    )
    if host.running and touches_postfix:
        assert result.service.action in (Action.RELOAD, Action.RESTART)
        assert result.changes[-1] is result.service
    else:
        assert result.service.action is Action.NONE
        assert all(c.kind.value != "service" for c in result.changes)


def test_domain_name_case_drift_converges() -> None:
    """A domain row spelled in another case is renamed in place rather than re-created beside itself."""
    users = {"john@example.org": ("john@example.org", PASSWORDS[0])}
    desired = Desired(None, {}, (), {"example.org": DomainRows(users, {})})
    db = Db()
    db.domains[1] = "Example.ORG"
    db.users[2] = (1, "john@example.org", PASSWORDS[0])
    host = Host({}, {}, frozenset(), (), db, True)
    _converges(desired, host, {})
