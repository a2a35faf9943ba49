"""The private services that every other service test stands on: MariaDB, Postfix and the sandboxing
of a desired-state tree, exercised for real (no mocks)."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pymysql
import pytest

from harness import cli
from harness.mariadb import MariaDB, start_mariadb
from harness.postfix import PostfixInstance, cool_down
from harness.repo import LOOKUP_PASSWORD_SECRET, sandboxize_postfix_tree

ROOT = Path(__file__).resolve().parent.parent
PostfixFactory = Callable[..., PostfixInstance]  # the postfix_instance fixture of conftest.py

# Each start must finish well within this: a guard against a hang, not a timing (speed is bench/'s).
HANG_GUARD = 60.0


# --------------------------------------------------------------------------------------------------
# MariaDB


def test_reconciler_user_creates_writes_and_reads(mariadb: MariaDB) -> None:
    """The agent's user can create a table in mailserver, insert into it and read it back over TCP."""
    conn = mariadb.connect("reconciler")
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS sandbox_probe (id INT PRIMARY KEY, note VARCHAR(64))")
            cur.execute("REPLACE INTO sandbox_probe VALUES (%s, %s)", (1, "hello"))
            cur.execute("SELECT note FROM sandbox_probe WHERE id = %s", (1,))
            assert cur.fetchone() == ("hello",)
            cur.execute("SELECT CURRENT_USER()")
            assert cur.fetchone() == ("reconciler@127.0.0.1",)
    finally:
        conn.close()


def test_mailuser_reads_but_may_not_insert(mariadb: MariaDB) -> None:
    """Postfix's lookup user can SELECT from mailserver but its INSERT is refused with error 1142."""
    conn = mariadb.connect("reconciler")
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS sandbox_lookup (name VARCHAR(64) PRIMARY KEY)")
            cur.execute("REPLACE INTO sandbox_lookup VALUES ('example.org')")
    finally:
        conn.close()
    lookup = mariadb.connect("mailuser")
    try:
        with lookup.cursor() as cur:
            cur.execute("SELECT name FROM sandbox_lookup")
            assert cur.fetchall() == (("example.org",),)
            with pytest.raises(pymysql.err.OperationalError) as refused:
                cur.execute("INSERT INTO sandbox_lookup VALUES ('evil.example')")
            assert refused.value.args[0] == 1142  # ER_TABLEACCESS_DENIED_ERROR
    finally:
        lookup.close()


def test_wrong_password_is_refused(mariadb: MariaDB) -> None:
    """Grants are enforced: a wrong password for the agent's user is refused (error 1045)."""
    args = mariadb.connection_args("reconciler") | {"password": "wrong"}
    with pytest.raises(pymysql.err.OperationalError) as refused:
        pymysql.connect(**args)
    assert refused.value.args[0] == 1045


def test_stop_and_start_keeps_the_data(mariadb: MariaDB) -> None:
    """MariaDB stopped and started again on the same port still has the committed rows."""
    conn = mariadb.connect("reconciler")
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS sandbox_restart (id INT PRIMARY KEY)")
        cur.execute("REPLACE INTO sandbox_restart VALUES (42)")
    conn.close()

    mariadb.stop()
    assert not mariadb.is_running()
    assert not mariadb.answers()
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(**mariadb.connection_args("reconciler"))

    started = time.monotonic()
    mariadb.start()
    assert time.monotonic() - started < HANG_GUARD
    conn = mariadb.connect("reconciler")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM sandbox_restart")
            assert cur.fetchall() == ((42,),)
    finally:
        conn.close()


def test_killed_mariadb_recovers_committed_rows(mariadb: MariaDB) -> None:
    """After SIGKILL (a crash), start runs InnoDB recovery and the committed rows are still there."""
    conn = mariadb.connect("reconciler")
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS sandbox_crash (id INT PRIMARY KEY)")
        cur.execute("REPLACE INTO sandbox_crash VALUES (7)")
    conn.close()

    mariadb.kill()
    assert not mariadb.is_running()
    mariadb.start()
    conn = mariadb.connect("reconciler")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM sandbox_crash")
            assert cur.fetchall() == ((7,),)
    finally:
        conn.close()


def test_client_argv_keeps_the_password_off_the_command_line(mariadb: MariaDB) -> None:
    """The mariadb client runs as mailuser with its password in a 0600 option file, not in argv."""
    argv = mariadb.client_argv("mailuser")
    assert not any(mariadb.mailuser_password in arg for arg in argv)
    option_file = Path(argv[1].split("=", 1)[1])
    assert stat.S_IMODE(option_file.stat().st_mode) == 0o600
    out = subprocess.run(
        [*argv, "--batch", "--skip-column-names", "-e", "SELECT CURRENT_USER(), DATABASE()"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert out.split() == ["mailuser@localhost", "mailserver"]


def test_a_second_private_mariadb_starts_and_reattaches(postfix_tools_available: dict[str, str], tmp_path: Path) -> None:
    """A fresh MariaDB (install-db, start, users) comes up beside the session's and reattaches from its state file."""
    started = time.monotonic()
    db = start_mariadb(tmp_path / "db")
    try:
        assert time.monotonic() - started < HANG_GUARD
        again = MariaDB.load(tmp_path / "db")
        assert again == db
        assert again.answers()
    finally:
        db.stop()
    assert not db.is_running()


# --------------------------------------------------------------------------------------------------
# Postfix


def test_postfix_instance_starts_and_greets(postfix_instance: PostfixFactory) -> None:
    """A fresh instance starts, reports running and greets with 220 on its loopback port."""
    instance = postfix_instance(start=False)
    started = time.monotonic()
    instance.start()
    assert time.monotonic() - started < HANG_GUARD
    assert instance.is_running()
    banner = instance.greeting()
    assert banner is not None and banner.startswith("220 sandbox.test ESMTP"), banner
    assert f"{instance.syslog_name}/master" in instance.maillog_text()


def test_stranger_cannot_relay(postfix_instance: PostfixFactory) -> None:
    """RCPT TO a domain the instance does not serve, from a client outside mynetworks, gets 454."""
    instance = postfix_instance()
    code, text = instance.rcpt_to("sender@example.com", "someone@unknown.example", client_address="127.0.0.2")
    assert code == 454, text
    assert "Relay access denied" in text


def test_local_recipients_are_validated(postfix_instance: PostfixFactory) -> None:
    """An existing local account is accepted with 250 and an unknown one is refused with 550."""
    instance = postfix_instance()
    assert instance.rcpt_to("", "root@localhost", client_address="127.0.0.2")[0] == 250
    code, text = instance.rcpt_to("", "no-such-user@localhost", client_address="127.0.0.2")
    assert code == 550, text
    assert "User unknown" in text


def test_stop_stops_and_start_restarts_on_the_same_port(postfix_instance: PostfixFactory) -> None:
    """After stop the port is closed and status says stopped; start brings it back on the same port."""
    instance = postfix_instance()
    instance.stop()
    assert not instance.is_running()
    assert instance.greeting(timeout=2) is None
    instance.start()
    assert (instance.greeting() or "").startswith("220 ")


def test_reload_picks_up_a_changed_banner(postfix_instance: PostfixFactory) -> None:
    """A main.cf change followed by reload is visible on the next SMTP connection."""
    instance = postfix_instance()
    instance.postconf("-e", "smtpd_banner=$myhostname ESMTP reloaded")
    instance.reload()
    deadline = time.monotonic() + 10
    while "reloaded" not in (instance.greeting() or "") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "reloaded" in (instance.greeting() or "")
    assert instance.is_running()


def test_two_instances_run_side_by_side(postfix_instance: PostfixFactory) -> None:
    """Two instances have their own ports, queues and logs, and stopping one leaves the other up."""
    first, second = postfix_instance(), postfix_instance()
    assert first.smtp_port != second.smtp_port
    assert first.queue_dir != second.queue_dir
    first.stop()
    assert not first.is_running()
    assert second.is_running()
    assert (second.greeting() or "").startswith("220 ")


def test_instance_is_reattachable_from_its_state_file(postfix_instance: PostfixFactory) -> None:
    """PostfixInstance.load finds the instance that create_postfix_instance wrote under its base."""
    instance = postfix_instance()
    assert PostfixInstance.load(instance.base) == instance


# --------------------------------------------------------------------------------------------------
# Sandboxing a desired-state tree

# The mail server guide's shape, uncorrected: absolute /etc/postfix paths, hosts = localhost, a literal
# password, amavis as content filter, chroot, missing DH files and a non-local listener address.
GUIDE_MAIN_CF = """\
compatibility_level = 3.6
myhostname = mail.example.net
mydestination = $myhostname, localhost
inet_protocols = all
inet_interfaces = 127.0.0.1, ::1, 192.0.2.40
smtp_bind_address6 = 2001:db8::40
proxy_interfaces = 198.51.100.40
relayhost = [smtp.myisp.com]:587
smtpd_tls_cert_file = /etc/ssl/certs/example.net.chained.cert.pem
smtpd_tls_key_file = /etc/ssl/private/example.net.key.pem
smtpd_tls_dh1024_param_file = /etc/ssl/dhparams/dh_4096.pem
smtpd_tls_security_level = may
alias_maps = hash:/etc/postfix/aliases
content_filter = amavis:[127.0.0.1]:10024
smtpd_milters = inet:localhost:8891
postscreen_dnsbl_sites = zen.spamhaus.org*3
postscreen_pipelining_enable = yes
virtual_mailbox_domains = mysql:/etc/postfix/mysql-virtual-mailbox-domains.cf
"""

GUIDE_MASTER_CF = """\
smtp       inet  n       -       y       -       1       postscreen
smtpd      pass  -       -       y       -       -       smtpd
  -o smtpd_proxy_filter=127.0.0.1:10024
dnsblog    unix  -       -       n       -       0       dnsblog
tlsproxy   unix  -       -       n       -       0       tlsproxy
submission inet  n       -       n       -       -       smtpd
  -o syslog_name=postfix/submission
  -o content_filter=amavis:[127.0.0.1]:10024
127.0.0.1:10025 inet n   -       -       -       -       smtpd
  -o content_filter=
cleanup   unix  n       -       y       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
amavis    unix  -       -       n       -       6       smtp
  -o smtp_data_done_timeout=1800
"""

GUIDE_MYSQL_CF = """\
user = mailuser
password = ********
hosts = localhost
    db2.example.net
dbname = mailserver
query = SELECT 1 FROM virtual_domains
    WHERE name='%s'
"""


def _postconf_n(directory: Path) -> dict[str, str]:
    out = subprocess.run(
        ["postconf", "-c", str(directory), "-n"], capture_output=True, text=True, check=True, timeout=60
    )
    return dict(line.split(" = ", 1) if " = " in line else (line.rstrip(" ="), "") for line in out.stdout.splitlines())


def test_sandboxize_rewrites_a_guide_style_tree(postfix_instance: PostfixFactory, tmp_path: Path) -> None:
    """A guide-style tree is moved to loopback ports and private dirs, loses amavis and milters, and
    its MySQL maps point at the private MariaDB with the password read from a secret."""
    instance = postfix_instance(start=False)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "main.cf").write_text(GUIDE_MAIN_CF)
    (tree / "master.cf").write_text(GUIDE_MASTER_CF)
    (tree / "mysql-virtual-mailbox-domains.cf").write_text(GUIDE_MYSQL_CF)
    (tree / "aliases").write_text("postmaster: root\n")

    result = sandboxize_postfix_tree(tree, instance, 33061)

    main = _postconf_n(tree)
    assert main["inet_interfaces"] == "127.0.0.1"
    assert main["inet_protocols"] == "ipv4"
    assert main["queue_directory"] == str(instance.queue_dir)
    assert main["data_directory"] == str(instance.data_dir)
    assert main["maillog_file"] == str(instance.maillog)
    assert main["myhostname"] == "mail.example.net"  # kept: the repository set it
    for gone in (
        "content_filter",
        "smtpd_milters",
        "relayhost",
        "proxy_interfaces",
        "smtp_bind_address6",
        "smtpd_tls_dh1024_param_file",
    ):
        assert gone not in main, gone
    assert Path(main["smtpd_tls_cert_file"]).is_file()
    assert Path(main["smtpd_tls_key_file"]).is_file()
    assert main["postscreen_dnsbl_sites"] == ""
    assert main["postscreen_pipelining_enable"] == "no"
    assert main["alias_maps"] == f"hash:{instance.config_dir}/aliases"
    assert main["virtual_mailbox_domains"] == f"mysql:{instance.config_dir}/mysql-virtual-mailbox-domains.cf"

    assert set(result.ports) == {"smtp", "submission", "127.0.0.1:10025"}
    assert result.ports["smtp"] == instance.smtp_port
    assert len(set(result.ports.values())) == 3
    master = subprocess.run(
        ["postconf", "-c", str(tree), "-F"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    services = set(re.findall(r"^(\S+)/inet/service = ", master, re.M))
    assert services == {f"127.0.0.1:{port}" for port in result.ports.values()}
    assert "/chroot = y" not in master
    assert "postlogd" in master
    overrides = subprocess.run(
        ["postconf", "-c", str(tree), "-P"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "content_filter = amavis" not in overrides
    assert "smtpd_proxy_filter = 127.0.0.1:10024" not in overrides
    assert f"syslog_name = {instance.syslog_name}/submission" in overrides

    mysql_cf = (tree / "mysql-virtual-mailbox-domains.cf").read_text()
    assert "hosts = inet:127.0.0.1:33061\n" in mysql_cf
    assert "db2.example.net" not in mysql_cf
    assert f"password = ${{secret:{LOOKUP_PASSWORD_SECRET}}}" in mysql_cf
    assert "    WHERE name='%s'" in mysql_cf  # continuation lines of other keys survive
    assert result.lookup_secrets == (LOOKUP_PASSWORD_SECRET,)


def _install_tree(tree: Path, instance: PostfixInstance, secrets: dict[str, str]) -> None:
    """Do by hand what the agent's apply does: copy with secrets substituted, then build the tables."""
    for path in tree.iterdir():
        text = path.read_text()
        for name, value in secrets.items():
            text = text.replace(f"${{secret:{name}}}", value)
        (instance.config_dir / path.name).write_text(text)
    cool_down(instance.config_dir / "main.cf", instance.config_dir / "master.cf")
    for name in ("canonical", "sender_canonical", "generic", "sender_access", "relay_password"):
        if (instance.config_dir / name).exists():
            instance.postmap(f"hash:{instance.config_dir / name}")
    if (instance.config_dir / "aliases").exists():
        subprocess.run(
            ["postalias", "-c", str(instance.config_dir), f"hash:{instance.config_dir / 'aliases'}"],
            check=True,
            timeout=60,
        )


def test_sandboxed_example_repo_looks_up_recipients_in_mariadb(
    postfix_instance: PostfixFactory, tmp_path: Path
) -> None:
    """example-repo's postfix/ tree, sandboxed, runs with postscreen and answers RCPT from MariaDB rows."""
    source = ROOT / "example-repo" / "postfix"
    assert source.is_dir(), "example-repo/postfix is missing"
    db = start_mariadb(tmp_path / "db")
    try:
        root = db.root_connect()
        with root.cursor() as cur:
            cur.execute("USE mailserver")
            cur.execute("CREATE TABLE virtual_domains (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(253))")
            cur.execute(
                "CREATE TABLE virtual_users (id INT AUTO_INCREMENT PRIMARY KEY, domain_id INT, "
                "email VARCHAR(254), password VARCHAR(255))"
            )
            cur.execute(
                "CREATE TABLE virtual_aliases (id INT AUTO_INCREMENT PRIMARY KEY, domain_id INT, "
                "source VARCHAR(254), destination VARCHAR(254))"
            )
            cur.execute("INSERT INTO virtual_domains (id, name) VALUES (1, 'example.net')")
            cur.execute("INSERT INTO virtual_users (domain_id, email, password) VALUES (1, 'alice@example.net', 'x')")
            cur.execute(
                "INSERT INTO virtual_aliases (domain_id, source, destination) "
                "VALUES (1, 'sales@example.net', 'alice@example.net')"
            )
        root.close()

        instance = postfix_instance(start=False)
        tree = tmp_path / "tree"
        shutil.copytree(source, tree)
        result = sandboxize_postfix_tree(tree, instance, db.port)
        secrets = {name: db.mailuser_password for name in result.lookup_secrets}
        secrets |= {name: "sandbox-dummy" for name in result.other_secrets}
        _install_tree(tree, instance, secrets)
        check = instance.postfix("check", check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        instance.start()

        banner = instance.greeting()  # postscreen's greet test: "220-" first, then smtpd's "220 "
        assert banner is not None and banner.startswith("220") and banner.endswith("ESMTP"), banner
        stranger = {"client_address": "127.0.0.2"}
        assert instance.rcpt_to("", "alice@example.net", **stranger) == (250, "2.1.5 Ok")
        assert instance.rcpt_to("", "sales@example.net", **stranger)[0] == 250
        code, text = instance.rcpt_to("", "nobody@example.net", **stranger)
        assert code == 550, text
        assert "User unknown in virtual mailbox table" in text
        code, text = instance.rcpt_to("", "someone@elsewhere.example", **stranger)
        assert code == 554, text
        assert "Relay access denied" in text
        assert "warning" not in instance.maillog_text().lower().replace("warning_", ""), instance.maillog_text()
    finally:
        db.stop()


def test_sandbox_cli_up_status_down(postfix_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m harness up`` publishes example-repo to a bare repo with an agent config;
    ``status`` reports both services running and ``down`` stops them."""
    directory = postfix_root / "cli"
    try:
        assert cli.main(["up", "--dir", str(directory), "--repo", str(ROOT / "example-repo"), "--json"]) == 0
        up = json.loads(capsys.readouterr().out)
        assert up["postfix"]["running"] is True
        head = subprocess.run(
            ["git", "--git-dir", up["git"]["bare_repo"], "rev-parse", "main"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        assert head == up["git"]["head"]
        config = Path(up["agent_config"]).read_text()
        assert f"port = {up['mariadb']['port']}" in config
        secret = directory / "secrets" / "mysql_mailuser_password"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600

        assert cli.main(["status", "--dir", str(directory), "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status == {
            "postfix": {"running": True, "smtp": up["postfix"]["smtp"]},
            "mariadb": {"running": True, "port": up["mariadb"]["port"]},
        }
    finally:
        assert cli.main(["down", "--dir", str(directory)]) == 0
    capsys.readouterr()
    assert cli.main(["status", "--dir", str(directory), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["postfix"]["running"] is False
    assert status["mariadb"]["running"] is False
