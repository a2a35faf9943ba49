"""Trigger-kept per-domain digests: always equal to hashing every row, in Python and in SQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from mailhost import MailHost, reset_database

from harness.mariadb import MariaDB
from reconciler.apply import repair_digests
from reconciler.db import init_db
from reconciler.observed import _STORED_DIGEST_SQL, _digests, domain_digests, read_digests
from reconciler.rows import rows_digest


@pytest.fixture
def conn(mariadb: MariaDB) -> Iterator[Any]:
    reset_database(mariadb)
    connection = mariadb.connect(autocommit=False)
    assert init_db(connection), "the agent's user could not create the digest triggers"
    yield connection
    connection.close()


def _python_digests(conn: Any) -> dict[str, tuple[int, int, int, int]]:
    with conn.cursor() as cur:
        cur.execute("SELECT id, name FROM virtual_domains")
        names = dict(cur.fetchall())
        cur.execute("SELECT domain_id, email, password FROM virtual_users")
        users = cur.fetchall()
        cur.execute("SELECT domain_id, source, destination FROM virtual_aliases")
        aliases = cur.fetchall()
    return {
        name: rows_digest([(e, p) for d, e, p in users if d == i], [(s, t) for d, s, t in aliases if d == i])
        for i, name in names.items()
    }


def _agree(conn: Any) -> None:
    fast = domain_digests(conn)
    assert fast == domain_digests(conn, full_scan=True) == _python_digests(conn)


def test_triggers_follow_every_kind_of_write(conn: Any) -> None:
    """Inserts, updates (also moving a row to another domain), deletes and cascades keep the digests exact."""
    with conn.cursor() as cur:
        cur.execute("INSERT INTO virtual_domains (name) VALUES ('a.example'), ('b.example'), ('c.example')")
        cur.execute("SELECT name, id FROM virtual_domains")
        ids = dict(cur.fetchall())
        cur.executemany(
            "INSERT INTO virtual_users (domain_id, email, password) VALUES (%s, %s, %s)",
            [(ids["a.example"], f"u{i}@a.example", f"{{X}}h{i}") for i in range(50)]
            + [(ids["b.example"], "o'brien@b.example", "{X}q")],
        )
        cur.executemany(
            "INSERT INTO virtual_aliases (domain_id, source, destination) VALUES (%s, %s, %s)",
            [(ids["a.example"], "@a.example", "u1@a.example"), (ids["c.example"], "x@c.example", "u2@a.example")],
        )
    conn.commit()
    _agree(conn)
    with conn.cursor() as cur:
        cur.execute("UPDATE virtual_users SET password = '{X}new' WHERE email = 'u3@a.example'")
        cur.execute("UPDATE virtual_users SET domain_id = %s WHERE email = 'u4@a.example'", (ids["c.example"],))
        cur.execute("UPDATE virtual_aliases SET destination = 'u9@a.example' WHERE source = 'x@c.example'")
        cur.execute("DELETE FROM virtual_users WHERE email = 'u5@a.example'")
        cur.execute("DELETE FROM virtual_aliases WHERE source = '@a.example'")
    conn.commit()
    _agree(conn)
    with conn.cursor() as cur:
        cur.execute("DELETE FROM virtual_domains WHERE name = 'a.example'")  # cascades, fires no row trigger
    conn.commit()
    _agree(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM reconciler_digest")
        assert cur.fetchone()[0] == 2


def test_rolled_back_writes_leave_no_trace(conn: Any) -> None:
    """The digest rows change in the writer's transaction, so a rollback undoes them too."""
    with conn.cursor() as cur:
        cur.execute("INSERT INTO virtual_domains (name) VALUES ('r.example')")
    conn.commit()
    before = domain_digests(conn)
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO virtual_users (domain_id, email, password) SELECT id, 'z@r.example', '{X}z' FROM virtual_domains"
        )
    conn.rollback()
    assert domain_digests(conn) == before
    _agree(conn)


def test_write_without_triggers_falls_back_and_repairs(conn: Any, mariadb: MariaDB) -> None:
    """A TRUNCATE fires no trigger: the count check notices and hashes every row; the apply step rebuilds the table."""
    with conn.cursor() as cur:
        cur.execute("INSERT INTO virtual_domains (name) VALUES ('t.example')")
        cur.execute(
            "INSERT INTO virtual_users (domain_id, email, password) SELECT id, 'a@t.example', '{X}a' FROM virtual_domains"
        )
    conn.commit()
    root = mariadb.root_connect()
    try:
        with root.cursor() as cur:
            cur.execute("SET FOREIGN_KEY_CHECKS = 0")
            cur.execute("TRUNCATE TABLE mailserver.virtual_users")
        root.commit()
    finally:
        root.close()
    assert read_digests(conn) == ({"t.example": (0, 0, 0, 0)}, True)
    assert domain_digests(conn) == _python_digests(conn)
    with conn.cursor() as cur:
        assert _digests(cur, _STORED_DIGEST_SQL)["t.example"][0] == 1  # observing repairs nothing
    repair_digests(conn)
    assert read_digests(conn) == ({"t.example": (0, 0, 0, 0)}, False)
    with conn.cursor() as cur:
        assert _digests(cur, _STORED_DIGEST_SQL) == {"t.example": (0, 0, 0, 0)}


def test_bulk_session_skips_triggers_then_rebuilds(conn: Any) -> None:
    """With @reconciler_digest_off the triggers stay idle; one rebuild in the same transaction makes it exact."""
    from reconciler.db import rebuild_digests

    with conn.cursor() as cur:
        cur.execute("INSERT INTO virtual_domains (name) VALUES ('bulk.example')")
        cur.execute("SET @reconciler_digest_off = 1")
        cur.executemany(
            "INSERT INTO virtual_users (domain_id, email, password) SELECT id, %s, %s FROM virtual_domains",
            [(f"b{i}@bulk.example", f"{{X}}{i}") for i in range(200)],
        )
        assert _digests(cur, _STORED_DIGEST_SQL) == {"bulk.example": (0, 0, 0, 0)}  # triggers were idle
        rebuild_digests(cur)
        cur.execute("SET @reconciler_digest_off = NULL")
    conn.commit()
    _agree(conn)
    with conn.cursor() as cur:
        assert _digests(cur, _STORED_DIGEST_SQL) == _python_digests(conn)


def _stored(host: MailHost) -> dict[str, tuple[int, int, int, int]]:
    conn = host.db.connect(autocommit=True)
    try:
        with conn.cursor() as cur:
            return _digests(cur, _STORED_DIGEST_SQL)
    finally:
        conn.close()


def _scanned(host: MailHost) -> dict[str, tuple[int, int, int, int]]:
    conn = host.db.connect(autocommit=True)
    try:
        return domain_digests(conn, full_scan=True)
    finally:
        conn.close()


BULK = {"RECONCILER_TEST_BULK_ROWS": "1"}


def test_bulk_apply_stores_the_planned_digests(mailhost: MailHost) -> None:
    """A bulk apply writes the touched domains' digests from the plan; they equal hashing every row."""
    host = mailhost
    assert host.cli("apply", env=BULK).returncode == 0  # creates: every domain touched
    assert _stored(host) == _scanned(host)
    assert len(_stored(host)) == 3
    # Every kind of row change at once: a new domain, a new mailbox, a changed password, a removed
    # alias, a domain deleted with its rows (cascade), and one domain left untouched.
    host.add_mailbox("first@bulk.example")
    host.add_mailbox("second@example.com")
    host.edit("domains/example.com.yaml", lambda t: t.replace("$2y$05$QsIStK9U", "$2y$05$ZZZZZZZZ", 1))
    host.edit(
        "domains/example.com.yaml",
        lambda t: t.replace("  - source: abuse@example.com\n    destination: alice@example.com\n", "", 1),
    )
    (host.work / "domains" / "example.net.yaml").unlink()
    host.commit("bulk change\n\nAllow-Mass-Delete: yes")
    untouched = _stored(host)["example.org"]
    res = host.cli("apply", env=BULK)
    assert res.returncode == 0, res.stdout + res.stderr
    stored = _stored(host)
    assert stored == _scanned(host)
    assert set(stored) == {"example.com", "example.org", "bulk.example"}
    assert stored["example.org"] == untouched
    assert host.rcpt("second@example.com") == 250
    assert host.cli("diff").returncode == 0  # the stored digests say "in sync", and they are right


def test_failed_bulk_apply_leaves_the_digests(mailhost: MailHost) -> None:
    """A bulk apply that fails after its row writes rolls the digests back with the rows."""
    host = mailhost
    assert host.cli("apply").returncode == 0
    before = _stored(host)
    host.add_mailbox("late@example.net")
    host.commit("one more")
    res = host.cli("apply", env={**BULK, "RECONCILER_TEST_FAIL_AT": "health"})
    assert res.returncode == 1
    assert _stored(host) == before == _scanned(host)
