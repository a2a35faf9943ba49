"""Defects a new user hits, against a real private Postfix and MariaDB: each test fails without its fix.

A first apply onto a config dir without main.cf, a dry run that must write nothing, a missing
secret that the host (not the revision) must fix, and state files truncated as by a power loss.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PostfixFactory
from mailhost import MailHost
from test_agent import RunningAgent, configure

from harness.mariadb import MariaDB
from reconciler.observed import read_digests


@pytest.fixture
def fresh_host(mariadb: MariaDB, postfix_instance: PostfixFactory, tmp_path: Path) -> Iterator[MailHost]:
    """A mail host whose config dir holds no main.cf nor master.cf (Debian's "No configuration"), Postfix stopped."""
    instance = postfix_instance(start=False)
    host = MailHost.create(tmp_path, mariadb, instance)
    assert host.cli("init-db").returncode == 0
    for name in ("main.cf", "master.cf"):
        (instance.config_dir / name).unlink()
    yield host


def test_first_apply_onto_a_config_dir_without_main_cf(fresh_host: MailHost) -> None:
    """`reconciler apply` onto a config dir without main.cf builds the secret-holding table and leaves Postfix stopped."""
    host = fresh_host
    res = host.cli("apply")
    assert res.returncode == 0, res.stdout + res.stderr
    config_dir = host.postfix.config_dir
    assert (config_dir / "main.cf").is_file() and (config_dir / "relay_password.db").is_file()
    assert not list(config_dir.glob(".*reconciler*"))
    assert not host.postfix.is_running()
    assert host.cli("diff").returncode == 0
    host.postfix.start()
    assert host.rcpt("john@example.org") == 250


def test_agent_first_apply_onto_a_config_dir_without_main_cf(fresh_host: MailHost) -> None:
    """The agent's first reconcile onto a config dir without main.cf gets synced, not failed at build."""
    host = fresh_host
    configure(host)
    agent = RunningAgent(host)
    try:
        status = agent.wait_state("synced", 30)
        assert status["applied_revision"] == host.git("rev-parse", "HEAD")
        assert (host.postfix.config_dir / "relay_password.db").is_file()
    finally:
        assert agent.stop() == 0


def _checksums(host: MailHost) -> dict[str, int]:
    conn = host.db.root_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (host.db.database,))
            names = sorted(str(r[0]) for r in cur.fetchall())
            out = {}
            for name in names:
                cur.execute(f"CHECKSUM TABLE mailserver.`{name}`")  # a name read from information_schema
                out[name] = int(cur.fetchone()[1])
            return out
    finally:
        conn.close()


def _bypass_triggers(host: MailHost) -> None:
    """A row written with the digest triggers idle: reconciler_digest is stale afterwards."""
    conn = host.db.root_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET @reconciler_digest_off = 1")
            cur.execute(
                "INSERT INTO mailserver.virtual_users (domain_id, email, password) "
                "SELECT id, 'sneaky@example.org', '{PLAIN}x' FROM mailserver.virtual_domains WHERE name = 'example.org'"
            )
        conn.commit()
    finally:
        conn.close()


def test_diff_with_stale_digests_writes_no_row(mailhost: MailHost) -> None:
    """`diff` with stale stored digests changes no table (CHECKSUM TABLE of each) and no file; apply repairs them."""
    host = mailhost
    assert host.cli("apply").returncode == 0
    _bypass_triggers(host)
    before, files = _checksums(host), host.files_fingerprint()
    assert "reconciler_digest" in before
    for args in (("diff",), ("diff", "--format", "json")):
        res = host.cli(*args)
        assert res.returncode == 1, res.stdout + res.stderr
        assert "sneaky@example.org" in res.stdout
    assert _checksums(host) == before
    assert host.files_fingerprint() == files
    res = host.cli("apply")
    assert res.returncode == 0, res.stderr
    assert "digests.rebuilt" in res.stderr
    assert host.cli("diff").returncode == 0
    conn = host.db.connect(autocommit=True)
    try:
        assert read_digests(conn, full_scan=True)[1] is False  # stored digests equal the rows again
    finally:
        conn.close()


@pytest.fixture
def agent_ready(mailhost: MailHost) -> MailHost:
    """A mail host configured for ``RunningAgent`` (an [api] port, a 1 s row check)."""
    configure(mailhost)
    return mailhost


def test_missing_secret_waits_for_the_host_then_applies(agent_ready: MailHost) -> None:
    """A missing secret leaves the agent degraded naming it (not failed); writing the file is enough to sync."""
    host = agent_ready
    secret = host.secrets / "relay_password"
    value = secret.read_text()
    secret.unlink()
    assert host.cli("apply").returncode == 2  # the host's fault: could not run, nothing recorded
    assert not (host.state / "failed.json").exists()
    agent = RunningAgent(host)
    try:
        status = agent.wait_state("degraded", 20)
        assert status["missing_secrets"] == ["relay_password"]
        assert "relay_password" in status["last_attempt"]["error"]
        assert status["last_attempt"]["result"] == "error"
        assert status["applied_revision"] is None
        secret.write_text(value)
        secret.chmod(0o600)
        status = agent.wait_state("synced", 15)  # well before the slow retry (HOST_RETRY, 60 s)
        assert status["missing_secrets"] == []
        assert status["applied_revision"] == host.git("rev-parse", "HEAD")
        # Unsafe permissions are the host's fault too, named the same way.
        secret.chmod(0o644)
        host.edit("postfix/main.cf", lambda t: t.replace("delay_warning_time = 6h", "delay_warning_time = 5h"))
        head = host.commit("a change while the secret is world-readable")
        status = agent.wait_state("degraded", 15, head)
        assert status["missing_secrets"] == ["relay_password"] and "chmod 600" in status["last_attempt"]["error"]
        secret.chmod(0o600)
        agent.wait_state("synced", 15, head)
    finally:
        assert agent.stop() == 0


def _events(stderr: str) -> list[str]:
    out = []
    for line in stderr.splitlines():
        try:
            out.append(str(json.loads(line).get("event", "")))
        except ValueError:
            continue
    return out


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, len(data) // 2)])


def test_truncated_journal_is_recovered_with_one_warning(mailhost: MailHost) -> None:
    """A journal torn after a crash mid-swap: backups are put back, one warning, and the next apply converges."""
    host = mailhost
    assert host.cli("apply").returncode == 0
    host.add_mailbox("torn@example.net")
    host.edit("postfix/main.cf", lambda t: t.replace("delay_warning_time = 6h", "delay_warning_time = 3h"))
    host.edit("postfix/canonical", lambda t: t + "torn torn@example.net\n")
    host.commit("torn journal")
    assert host.cli("apply", env={"RECONCILER_TEST_KILL_AT": "swap:2"}).returncode == -9
    journal = host.state / "journal.json"
    _truncate(journal)
    res = host.cli("diff")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert _events(res.stderr).count("apply.journal_unreadable") == 1
    assert not journal.exists() and (host.state / "journal.json.corrupt").exists()
    assert not list(host.postfix.config_dir.glob(".*reconciler*"))
    assert "delay_warning_time = 6h" in (host.postfix.config_dir / "main.cf").read_text()  # the backup is back
    assert host.postfix.is_running()
    res = host.cli("apply")
    assert res.returncode == 0, res.stderr
    assert "journal_unreadable" not in res.stderr
    assert host.cli("diff").returncode == 0
    assert host.rcpt("torn@example.net") == 250


def test_torn_state_files_and_parse_cache_are_rebuilt(mailhost: MailHost) -> None:
    """Torn history, status, inventory, failed-revisions and parse-cache files: one warning each, no traceback, right plan."""
    host = mailhost
    assert host.cli("apply").returncode == 0
    (host.state / "history.json").write_text('[{"revision": "ab')
    (host.state / "status.json").write_text('{"state": "syn')
    (host.state / "failed.json").write_text("{")
    parsed = host.state / "parsed"
    for path in [parsed / "index.json", parsed / "stage.json", *sorted((parsed / "rows").iterdir())]:
        _truncate(path)
    res = host.cli("status")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert _events(res.stderr).count("status.unreadable") == 1
    res = host.cli("diff")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert _events(res.stderr).count("parse_cache.unreadable") == 1
    res = host.cli("apply")  # reads failed.json
    assert res.returncode == 0 and "nothing to do" in res.stdout, res.stdout + res.stderr
    assert _events(res.stderr).count("state.unreadable") == 1
    # A torn inventory, and torn rows files under a good index: read only when a domain differs.
    _truncate(host.state / "inventory.json")
    _rogue_password(host)
    for path in sorted((parsed / "rows").iterdir()):
        _truncate(path)
    res = host.cli("diff")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    events = _events(res.stderr)
    assert events.count("state.unreadable") == 1 and events.count("parse_cache.rows_unreadable") == 1, events
    assert "virtual_users update john@example.org" in res.stdout
    assert host.cli("apply").returncode == 0
    assert host.cli("diff").returncode == 0


def _rogue_password(host: MailHost) -> None:
    conn = host.db.root_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("UPDATE mailserver.virtual_users SET password = '{PLAIN}x' WHERE email = 'john@example.org'")
        conn.commit()
    finally:
        conn.close()


def test_torn_history_is_started_afresh(tmp_path: Path) -> None:
    """A torn history.json reads as no history, with one warning (it is set aside), instead of stopping the agent."""
    from structlog.testing import capture_logs

    from reconciler.agent.history import Records

    (tmp_path / "history.json").write_bytes(b'[{"revision": "ab')
    records = Records(tmp_path)
    with capture_logs() as logs:
        assert records.history() == []
        assert records.history() == []
    assert [e["event"] for e in logs] == ["history.unreadable"]
    assert (tmp_path / "history.json.corrupt").exists()


def test_sd_notify_never_blocks_the_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A notify socket nobody reads fills up (max_dgram_qlen); a notification then gives up after 1 s, not forever."""
    import socket
    import time

    from reconciler.agent import systemd

    path = tempfile.mkdtemp(prefix="nfy-", dir="/tmp") + "/s"  # short: AF_UNIX paths fit 108 bytes
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        sent = 0
        while systemd.notify("WATCHDOG=1") and sent < 10_000:
            sent += 1
        started = time.monotonic()
        assert systemd.notify("STATUS=still here") is False  # the queue is full, nobody reads
        assert time.monotonic() - started < systemd.SEND_TIMEOUT + 0.5
        assert sent < 10_000
    finally:
        receiver.close()
        shutil.rmtree(Path(path).parent, ignore_errors=True)
