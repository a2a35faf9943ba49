"""`reconciler apply` against a real private Postfix and a real MariaDB: all of it or none of it."""

from __future__ import annotations

import random
import shutil
import subprocess
import time

import pytest
from mailhost import RELAY_SECRET, MailHost

STEPS = ["prepare", "build", "journal", "rows", "swap", "swap:0", "swap:2", "check", "service", "health", "commit"]


def test_first_apply_then_real_smtp(mailhost: MailHost) -> None:
    """First apply on an empty host: mailboxes, aliases, catch-all, a new domain and o'brien work over SMTP."""
    host = mailhost
    host.add_mailbox("fresh@newdomain.example")
    host.commit("add a new domain")
    res = host.cli("apply")
    assert res.returncode == 0, res.stderr
    assert "applied" in res.stdout
    assert host.rcpt("john@example.org") == 250  # mailbox
    assert host.rcpt("jack@example.org") == 250  # alias
    assert host.rcpt("anything@example.org") == 250  # catch-all
    assert host.rcpt("fresh@newdomain.example") == 250  # new domain
    assert host.rcpt("o'brien@example.com") == 250  # a quote end to end
    assert host.rcpt("nobody@example.net") == 550
    assert host.rcpt("nobody@example.com") == 550


def test_second_apply_does_nothing(mailhost: MailHost) -> None:
    """Applying the same revision again writes nothing and does not reload Postfix."""
    host = mailhost
    assert host.cli("apply").returncode == 0
    before = host.fingerprint()
    mtimes = {p.name: p.stat().st_mtime_ns for p in host.postfix.config_dir.iterdir()}
    log_before = host.postfix.maillog_text().count("reload")
    res = host.cli("apply")
    assert res.returncode == 0
    assert "nothing to do" in res.stdout
    assert host.fingerprint() == before
    assert {p.name: p.stat().st_mtime_ns for p in host.postfix.config_dir.iterdir()} == mtimes
    assert host.postfix.maillog_text().count("reload") == log_before
    assert host.cli("diff").returncode == 0


def test_secret_never_in_output_or_state(mailhost: MailHost) -> None:
    """The relay password is written live but never printed, logged or stored in the state dir."""
    host = mailhost
    outputs = [host.cli("diff"), host.cli("diff", "--format", "json"), host.cli("apply")]
    assert RELAY_SECRET in (host.postfix.config_dir / "relay_password").read_text()
    assert (host.postfix.config_dir / "relay_password").stat().st_mode & 0o007 == 0
    for res in outputs:
        assert RELAY_SECRET not in res.stdout + res.stderr
    for path in host.state.rglob("*"):
        if path.is_file():
            assert RELAY_SECRET.encode() not in path.read_bytes(), path
    # A rotated secret shows by name only, neither value.
    (host.secrets / "relay_password").write_text("rotated-Value-0042\n")
    res = host.cli("diff")
    assert res.returncode == 1
    assert "secret relay_password changed" in res.stdout
    assert RELAY_SECRET not in res.stdout and "rotated-Value-0042" not in res.stdout


def test_health_failure_rolls_back_everything(mailhost: MailHost) -> None:
    """A value postconf accepts but smtpd dies on is caught by the probe; files, tables and rows stay old."""
    host = mailhost
    assert host.cli("apply").returncode == 0
    before = host.fingerprint()
    host.edit("postfix/main.cf", lambda t: t + "smtpd_client_connection_count_limit = banana\n")
    host.add_mailbox("doomed@example.net")
    host.edit("postfix/canonical", lambda t: t + "doomed doomed@example.net\n")
    host.commit("bad value")
    res = host.cli("apply")
    assert res.returncode == 1
    assert "step health" in res.stderr
    assert host.fingerprint() == before
    assert host.rcpt("john@example.org") == 250
    assert host.rcpt("doomed@example.net") == 550
    # Not retried until the branch moves on; the next good revision applies.
    assert host.cli("apply").returncode == 1
    host.edit("postfix/main.cf", lambda t: t.replace("smtpd_client_connection_count_limit = banana\n", ""))
    host.commit("fix")
    assert host.cli("apply").returncode == 0
    assert host.rcpt("doomed@example.net") == 250


def test_invalid_revision_changes_nothing(mailhost: MailHost) -> None:
    """A revision Postfix's staged checks reject exits 1 before anything live changes."""
    host = mailhost
    assert host.cli("apply").returncode == 0
    before = host.fingerprint()
    host.edit("postfix/main.cf", lambda t: t + "smtp_sender_restrictions = reject\n")
    host.commit("ignored parameter")
    res = host.cli("apply")
    assert res.returncode == 1
    assert "smtp_sender_restrictions" in res.stderr
    assert host.fingerprint() == before


@pytest.mark.parametrize("step", STEPS)
def test_fault_at_each_step_leaves_old_state(mailhost: MailHost, step: str) -> None:
    """An injected failure at any step restores every file, table and row byte for byte."""
    host = mailhost
    assert host.cli("apply").returncode == 0
    before = host.fingerprint()
    host.add_mailbox("new@example.net")
    host.edit("postfix/main.cf", lambda t: t.replace("delay_warning_time = 6h", "delay_warning_time = 5h"))
    host.edit("postfix/canonical", lambda t: t + "newbie new@example.net\n")
    host.commit("change files, a table and rows")
    res = host.cli("apply", env={"RECONCILER_TEST_FAIL_AT": step})
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"step {step.split(':')[0]}" in res.stderr
    assert host.fingerprint() == before
    assert not list(host.postfix.config_dir.glob(".*reconciler*"))
    assert host.postfix.is_running()
    assert host.rcpt("john@example.org") == 250
    # The same change applies cleanly afterwards (explicit --rev retries a failed revision).
    assert host.cli("apply", "--rev", "HEAD").returncode == 0
    assert host.rcpt("new@example.net") == 250


def test_kill_9_at_random_moments(mailhost: MailHost) -> None:
    """kill -9 anywhere in an apply, then any command: the host is exactly the old or the new revision.

    Four random moments here (the deterministic crash at every step follows); the campaign of 50
    is ``bench/faults`` (docs/faults.md).
    """
    host = mailhost
    rng = random.Random(1234)
    old_rev = host.git("rev-parse", "HEAD")
    assert host.cli("apply").returncode == 0
    old = host.content_fingerprint()
    host.add_mailbox("killed@example.net")
    host.edit("postfix/main.cf", lambda t: t.replace("delay_warning_time = 6h", "delay_warning_time = 4h"))
    host.edit("postfix/sender_canonical", lambda t: t + "killed killed@example.net\n")
    new_rev = host.commit("change to be killed")
    assert host.cli("apply", "--rev", new_rev).returncode == 0
    new = host.content_fingerprint()
    seen = {"old": 0, "new": 0}
    for _ in range(4):
        assert host.cli("apply", "--rev", old_rev).returncode == 0
        assert host.content_fingerprint() == old
        proc = host.popen("apply", "--rev", new_rev)
        time.sleep(rng.uniform(0.05, 1.2))
        proc.kill()
        proc.wait()
        assert host.cli("diff", "--rev", new_rev).returncode in (0, 1)  # recovers first
        now = host.content_fingerprint()
        assert now in (old, new), "a mix of old and new after kill -9"
        seen["old" if now == old else "new"] += 1
        assert host.postfix.is_running()
    assert seen["old"] + seen["new"] == 4


@pytest.mark.parametrize("step", [*STEPS, "commit:1", "finish"])
def test_crash_at_each_step_recovers_old_or_new(mailhost: MailHost, step: str) -> None:
    """A SIGKILL at any step, then the next command: exactly old before the commit point, new after."""
    host = mailhost
    assert host.cli("apply").returncode == 0
    old = host.fingerprint()
    host.add_mailbox("crash@example.net")
    host.edit("postfix/main.cf", lambda t: t.replace("delay_warning_time = 6h", "delay_warning_time = 3h"))
    host.edit("postfix/canonical", lambda t: t + "crash crash@example.net\n")
    host.commit("crash me")
    res = host.cli("apply", env={"RECONCILER_TEST_KILL_AT": step})
    assert res.returncode == -9, res.stderr
    assert host.cli("diff").returncode in (0, 1)  # any live-state command recovers first
    now = host.content_fingerprint()
    if step in ("commit:1", "finish"):
        assert host.cli("diff").returncode == 0  # committed: the new revision is complete
        assert host.rcpt("crash@example.net") == 250
    else:
        assert host.fingerprint() == old
    assert not list(host.postfix.config_dir.glob(".*reconciler*"))
    assert host.postfix.is_running()
    assert now is not None


def test_row_only_change_needs_no_reload(mailhost: MailHost) -> None:
    """Adding a mailbox changes one row and neither reloads nor restarts Postfix."""
    host = mailhost
    assert host.cli("apply").returncode == 0
    host.add_mailbox("quick@example.net")
    host.commit("one mailbox")
    diff = host.cli("diff", "--format", "json")
    assert diff.returncode == 1
    assert '"kind": "service"' not in diff.stdout
    started = time.monotonic()
    res = host.cli("apply")
    elapsed = time.monotonic() - started
    assert res.returncode == 0 and "postfix none" in res.stdout, res.stdout
    assert host.rcpt("quick@example.net") == 250
    print(f"one-mailbox apply: {elapsed:.2f} s")


def test_dry_run_changes_nothing(mailhost: MailHost) -> None:
    """`diff` on a revision with file, table, row and drift changes touches no byte, mtime or row."""
    host = mailhost
    assert host.cli("apply").returncode == 0
    host.add_mailbox("dry@example.net")
    host.edit("postfix/main.cf", lambda t: t.replace("delay_warning_time = 6h", "delay_warning_time = 2h"))
    host.edit("postfix/canonical", lambda t: t + "dry dry@example.net\n")
    host.commit("pending change")
    with (host.postfix.config_dir / "generic").open("a") as fh:
        fh.write("handedit@x handedit@example.net\n")
    before = host.fingerprint()
    mtimes = {p.name: p.stat().st_mtime_ns for p in host.postfix.config_dir.iterdir()}
    for args in (("diff",), ("diff", "--format", "json")):
        res = host.cli(*args)
        assert res.returncode == 1, res.stderr
        assert RELAY_SECRET not in res.stdout + res.stderr
    assert host.fingerprint() == before
    assert {p.name: p.stat().st_mtime_ns for p in host.postfix.config_dir.iterdir()} == mtimes
    text = host.cli("diff").stdout
    assert "~ parameter delay_warning_time: 6h -> 2h" in text
    assert "+ virtual_users create dry@example.net" in text
    assert "table rebuild: hash:canonical" in text
    assert "file update: generic" in text


def test_inet_interfaces_change_restarts_postfix(mailhost: MailHost) -> None:
    """A change of inet_interfaces stops and starts the master (a reload would not take it) and stays healthy."""
    host = mailhost
    assert host.cli("apply").returncode == 0
    pid_file = host.postfix.queue_dir / "pid" / "master.pid"
    before = pid_file.read_text().strip()
    host.edit("postfix/main.cf", lambda t: t.replace("inet_interfaces = 127.0.0.1", "inet_interfaces = loopback-only"))
    host.commit("listen on loopback-only")
    assert "restart" in host.cli("diff").stdout
    res = host.cli("apply")
    assert res.returncode == 0, res.stderr
    assert "postfix restart" in res.stdout
    assert pid_file.read_text().strip() != before
    assert host.rcpt("john@example.org") == 250


def _lookup(host: MailHost, table: str, key: str) -> str:
    res = subprocess.run(
        ["postmap", "-c", str(host.postfix.config_dir), "-q", key, f"hash:{host.postfix.config_dir / table}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return res.stdout.strip()


def test_changed_map_reuses_the_validation_build(mailhost: MailHost) -> None:
    """A changed map is built once, by the staged check; the applier copies that build.

    With the kept build gone the applier runs postmap itself; either way the live table answers
    the new line, and the state dir keeps no build of a table that holds a secret.
    """
    host = mailhost
    assert host.cli("apply").returncode == 0
    assert list((host.state / "parsed" / "built").iterdir())  # the first check kept its builds
    host.edit("postfix/canonical", lambda t: t + "reused reused@example.net\n")
    host.commit("one map line")
    res = host.cli("apply")
    assert res.returncode == 0, res.stderr
    assert "table.reused" in res.stderr and "canonical" in res.stderr
    assert _lookup(host, "canonical", "reused") == "reused@example.net"
    assert host.cli("diff").returncode == 0  # the copied table is not seen as stale
    for built in (host.state / "parsed" / "built").rglob("*"):
        assert not built.name.startswith("relay_password"), built
        if built.is_file():
            assert RELAY_SECRET.encode() not in built.read_bytes()
    # Without the kept build (pruned, or lost), the applier builds it itself.
    host.edit("postfix/canonical", lambda t: t + "built built@example.net\n")
    host.commit("another map line")
    assert host.cli("diff").returncode == 1  # validates the tree and keeps its builds ...
    shutil.rmtree(host.state / "parsed" / "built")  # ... which then go missing
    res = host.cli("apply")
    assert res.returncode == 0, res.stderr
    assert "table.reused" not in res.stderr
    assert _lookup(host, "canonical", "built") == "built@example.net"
    assert _lookup(host, "canonical", "reused") == "reused@example.net"
