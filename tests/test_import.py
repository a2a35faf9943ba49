"""`reconciler import`: adopting a live host, on real Postfix and MariaDB.

A host is set up by hand the way the reference guide and Debian leave it (NAME.in sources beside a
Makefile, mysql configs with the real password in a subdirectory, an alias table outside the config
directory, a SASL password map with a real secret, Debian's unused files, rows inserted with the
mariadb client with $6$ passwords), imported, and then: `diff` exits 0, `apply` does nothing, a
re-import gives the same tree, no secret value is anywhere in the repo or the output, and a mailbox
added to the imported repo applies and is accepted over SMTP. What cannot be represented exits 1
and writes nothing. example-repo (plus 10k generated mailboxes) applied and imported round-trips.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mailhost import HASH, RELAY_SECRET, MailHost, reset_database

from harness.mariadb import MariaDB
from harness.postfix import PostfixInstance, cool_down
from harness.repo import sandboxize_postfix_tree
from reconciler.adopt.rows import LineReader, Lines, LineTaker
from reconciler.models import AgentConfig
from reconciler.passwd import sha512_crypt

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example-repo"
MAKEFILE = """# Postfix hashed maps maintenance
MAPS = canonical.db generic.db relay_password.db sender_access.db sender_canonical.db

all: $(MAPS)

%.db: %.in
\t@echo Rebuilding hashed DB for $@
\t@postmap hash:$<
\t@mv $<.db $@
"""
DEBIAN_LEFTOVERS = {
    "dynamicmaps.cf": "mysql\tpostfix-mysql.so.1.0.1\tdict_mysql_open\n",
    "postfix-files": "$config_directory:d:root:-:755\n",
    "main.cf.proto": "# prototype\n",
    "master.cf.proto": "# prototype\n",
    "sasl/README": "SASL configuration\n",
}
RELAY = "relay-Secret-For-Import-91c2"
SHA = "$6$Zx8bq1Lm0Pn2Rt4w$niqF8dDjXyk4Q8/UGju6EojdQfCTtrWl9fFJjyEgDZnFGN9HVYRjqbDmWQp3JB2YH0Zd1UP6e82cbbeRt4SY00"


@dataclass
class GuideHost:
    """A hand-built live host (see the module docstring) and the agent's configuration for it."""

    base: Path
    db: MariaDB
    postfix: PostfixInstance
    outside: Path  # the alias table outside the config dir
    secrets: Path
    config: Path
    mysql_password: str

    def cli(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "RECONCILER_CONFIG": str(config or self.config)}
        return subprocess.run(
            [sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, env=env, check=False
        )

    def config_for(self, repo: Path) -> Path:
        """An agent configuration whose source is ``repo``."""
        path = self.base / f"config-{repo.name}.toml"
        path.write_text(self.config.read_text().replace('url = "none"', f'url = "{repo}"'))
        return path

    def sql(self, statements: str) -> None:
        res = subprocess.run(self.db.client_argv(), input=statements, text=True, capture_output=True, check=False)
        assert res.returncode == 0, res.stderr

    def live_fingerprint(self) -> dict[str, tuple[str, int]]:
        out = {}
        for path in sorted(self.postfix.config_dir.rglob("*")):
            if path.is_file():
                out[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode)
        for path in sorted(self.outside.parent.iterdir()):
            out[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode)
        return out


def _write(path: Path, text: str, mode: int = 0o644, group: str = "root") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    shutil.chown(path, "root", group)
    path.chmod(mode)


def read_lines(cfg: AgentConfig, client: str, users: LineTaker, aliases: LineTaker) -> Lines | None:
    """The fast path's read at once, through ``client``: a ``LineReader`` started, its lines taken, closed."""
    reader = LineReader(cfg, client)
    try:
        return reader.lines(users, aliases)
    finally:
        reader.close()


def agent_config(tmp_path: Path, mariadb: MariaDB, live: Path, outside: Path) -> tuple[Path, Path]:
    """The agent's configuration for a hand-built host (source "none", ``outside`` allowed): (config, secrets dir)."""
    secrets = tmp_path / "secrets"
    password = tmp_path / "mysql-password"
    password.write_text(mariadb.reconciler_password)
    password.chmod(0o600)
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[source]
url = "none"
[postfix]
config_dir = "{live}"
outside_paths = ["{outside}"]
health_timeout = 8
[mysql]
host = "127.0.0.1"
port = {mariadb.port}
password_file = "{password}"
database = "{mariadb.database}"
[secrets]
dir = "{secrets}"
[state]
dir = "{tmp_path / "state"}"
"""
    )
    return config, secrets


# The guide's rows, as an administrator inserts them with the mariadb client ($6$ hashes, o'brien).
GUIDE_ROWS = (
    "INSERT INTO virtual_domains (id, name) VALUES (1, 'example.org'), (2, 'example.com'), (3, 'example.net');\n"
    "INSERT INTO virtual_users (domain_id, email, password) VALUES (1, 'john@example.org', '$6$Zx8bq1Lm0Pn2Rt4w$niqF8dDjXyk4Q8/UGju6EojdQfCTtrWl9fFJjyEgDZnFGN9HVYRjqbDmWQp3JB2YH0Zd1UP6e82cbbeRt4SY00'), "
    "(1, 'jane@example.org', '$6$Zx8bq1Lm0Pn2Rt4w$niqF8dDjXyk4Q8/UGju6EojdQfCTtrWl9fFJjyEgDZnFGN9HVYRjqbDmWQp3JB2YH0Zd1UP6e82cbbeRt4SY00'), (2, 'o''brien@example.com', '{SHA512-CRYPT}$6$Zx8bq1Lm0Pn2Rt4w$niqF8dDjXyk4Q8/UGju6EojdQfCTtrWl9fFJjyEgDZnFGN9HVYRjqbDmWQp3JB2YH0Zd1UP6e82cbbeRt4SY00');\n"
    "INSERT INTO virtual_aliases (domain_id, source, destination) VALUES "
    "(1, 'jack@example.org', 'john@example.org'), (1, 'sales@example.org', 'john@example.org'), "
    "(1, 'sales@example.org', 'jane@example.org'), (1, '@example.org', 'john@example.org');\n"
)


@pytest.fixture
def guide_host(mariadb: MariaDB, postfix_instance: object, tmp_path: Path) -> Iterator[GuideHost]:
    """The hand-built host, running, rows in place, before any import."""
    reset_database(mariadb)
    instance: PostfixInstance = postfix_instance(start=False)  # type: ignore[operator]
    tree = tmp_path / "tree"
    shutil.copytree(EXAMPLE / "postfix", tree)
    sandboxize_postfix_tree(tree, instance, mariadb.port)
    live = instance.config_dir
    outside = instance.base / "sysetc" / "aliases"
    main = (tree / "main.cf").read_text()
    main = main.replace(
        "$config_directory/mysql-virtual-alias-maps.cf", "$config_directory/sql/mysql-virtual-alias-maps.cf"
    )
    main = main.replace("mysql:$config_directory/mysql-", "mysql:$config_directory/sql/mysql-")
    main = main.replace("virtual_alias_maps = mysql:", "virtual_alias_maps = proxy:mysql:")
    for param in ("alias_maps", "alias_database"):
        main = main.replace(f"{param} = hash:$config_directory/aliases", f"{param} = hash:{outside}")
    assert "proxy:mysql:$config_directory/sql/" in main and f"alias_maps = hash:{outside}" in main
    _write(live / "main.cf", main)
    _write(live / "master.cf", (tree / "master.cf").read_text())
    for path in sorted(tree.glob("mysql-*.cf")):
        text = path.read_text().replace("${secret:mysql_mailuser_password}", mariadb.mailuser_password)
        # One left world-readable, as an administrator following the guide would: import tightens it.
        _write(live / "sql" / path.name, text, 0o644 if "domains" in path.name else 0o640, "postfix")
    for name in ("canonical", "generic", "sender_access", "sender_canonical", "relay_password"):
        text = (tree / name).read_text().replace("${secret:relay_password}", RELAY)
        _write(
            live / f"{name}.in",
            text,
            0o640 if name == "relay_password" else 0o644,
            "postfix" if name == "relay_password" else "root",
        )
        cool_down(live / f"{name}.in")
        subprocess.run(["postmap", "-c", str(live), f"hash:{live}/{name}.in"], check=True)
        (live / f"{name}.in.db").rename(live / f"{name}.db")
    _write(live / "Makefile", MAKEFILE)
    _write(live / "postscreen_access.cidr", (tree / "postscreen_access.cidr").read_text())
    for rel, text in DEBIAN_LEFTOVERS.items():
        _write(live / rel, text)
    _write(outside, (tree / "aliases").read_text())
    subprocess.run(["postalias", "-c", str(live), f"hash:{outside}"], check=True)
    cool_down(live / "main.cf", live / "master.cf")
    config, secrets = agent_config(tmp_path, mariadb, live, outside)
    host = GuideHost(tmp_path, mariadb, instance, outside, secrets, config, mariadb.mailuser_password)
    assert host.cli("init-db").returncode == 0
    assert sha512_crypt("john's password", "Zx8bq1Lm0Pn2Rt4w") == SHA  # what the rows below hold
    host.sql(GUIDE_ROWS)
    instance.start()
    assert instance.rcpt_to("sender@example.com", "john@example.org")[0] == 250
    yield host


def _tree(repo: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(repo)): p.read_bytes()
        for p in sorted(repo.rglob("*"))
        if p.is_file() and ".git" not in p.parts
    }


def test_guide_host_imports_with_empty_diff(guide_host: GuideHost) -> None:
    """The hand-built guide host imports (exit 0, no secret anywhere), diff is empty, apply does nothing, re-import is identical, a new mailbox applies."""
    host = guide_host
    out = host.base / "imported"
    res = host.cli("import", "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    files = _tree(out)
    assert files["postfix/main.cf"] == (host.postfix.config_dir / "main.cf").read_bytes()
    assert files["postfix/master.cf"] == (host.postfix.config_dir / "master.cf").read_bytes()
    assert files["postfix/canonical"] == (host.postfix.config_dir / "canonical.in").read_bytes()
    assert f"rootfs{host.outside}" in files
    assert "postfix/sql/mysql-virtual-alias-maps.cf" in files  # proxy:mysql: and a subdirectory
    for name in (
        "dynamicmaps.cf",
        "postfix-files",
        "main.cf.proto",
        "sasl/README",
        "Makefile",
        "canonical.in",
        "canonical.db",
    ):
        assert f"postfix/{name}" not in files
    assert "NAME.in + Makefile layout" in res.stderr
    assert "not imported" in res.stderr and "dynamicmaps.cf" in res.stderr
    # Secrets: placeholders in the repo, values 0600 in [secrets].dir, never in the output.
    assert b"${secret:" in files["postfix/relay_password"]
    assert b"${secret:mysql_mailuser_password}" in files["postfix/sql/mysql-virtual-mailbox-maps.cf"]
    log = subprocess.run(["git", "-C", str(out), "log", "-p", "--all"], capture_output=True, check=True).stdout
    for secret in (RELAY, host.mysql_password):
        assert secret not in res.stdout + res.stderr
        assert all(secret.encode() not in data for data in files.values())
        assert secret.encode() not in log
    values = {p.name: p.read_text() for p in host.secrets.iterdir()}
    assert values["mysql_mailuser_password"] == host.mysql_password + "\n"
    assert RELAY + "\n" in values.values()
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in host.secrets.iterdir())
    assert (host.postfix.config_dir / "sql/mysql-virtual-mailbox-domains.cf").stat().st_mode & 0o777 == 0o640
    # Rows: one file per domain, the modeline, $6$ hashes as they are.
    org = yaml.safe_load(files["domains/example.org.yaml"])
    assert files["domains/example.org.yaml"].startswith(
        b"# yaml-language-server: $schema=../schemas/domain.schema.json\n"
    )
    assert [m["address"] for m in org["mailboxes"]] == ["jane@example.org", "john@example.org"]
    assert org["mailboxes"][0]["password"].startswith("$6$")
    assert {"source": "@example.org", "destination": "john@example.org"} in org["aliases"]
    assert yaml.safe_load(files["domains/example.net.yaml"]) == {
        "domain": "example.net",
        "mailboxes": [],
        "aliases": [],
    }
    assert b"What came from where" in files["README.md"] and b"mysql_mailuser_password" in files["README.md"]
    assert (
        subprocess.run(
            ["git", "-C", str(out), "rev-list", "--count", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "1"
    )
    # The adopted host is in sync with its repository.
    config = host.config_for(out)
    res = host.cli("validate", "--repo", str(out), config=config)
    assert res.returncode == 0, res.stdout + res.stderr
    res = host.cli("diff", config=config)
    assert res.returncode == 0, res.stdout + res.stderr
    before = host.live_fingerprint()
    res = host.cli("apply", config=config)
    assert res.returncode == 0 and "nothing to do" in res.stdout, res.stdout + res.stderr
    assert host.live_fingerprint() == before
    # An unchanged host imports to the very same tree.
    again = host.base / "again"
    res = host.cli("import", "--out", str(again))
    assert res.returncode == 0, res.stdout + res.stderr
    assert _tree(again) == files
    assert not [p for p in host.secrets.iterdir() if p.name not in values]  # the same secret names, reused
    # From here on the repo drives the host.
    path = out / "domains/example.com.yaml"
    path.write_text(
        path.read_text().replace(
            "mailboxes:\n", f'mailboxes:\n  - address: adopted@example.com\n    password: "{HASH}"\n'
        )
    )
    git = ["git", "-C", str(out), "-c", "user.name=T", "-c", "user.email=t@example.net"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "a first mailbox after adoption"], check=True)
    assert host.postfix.rcpt_to("sender@example.com", "adopted@example.com")[0] == 550
    res = host.cli("apply", config=config)
    assert res.returncode == 0, res.stdout + res.stderr
    assert host.postfix.rcpt_to("sender@example.com", "adopted@example.com")[0] == 250
    assert host.postfix.rcpt_to("sender@example.com", "john@example.org")[0] == 250


def test_unrepresentable_rows_write_nothing(guide_host: GuideHost) -> None:
    """Plaintext passwords, a user outside its domain and rows of a missing domain id: exit 1 naming each, nothing written."""
    host = guide_host
    host.sql(
        "INSERT INTO virtual_users (id, domain_id, email, password) VALUES "
        "(101, 1, 'plain@example.org', 'hunter2-plaintext'), (102, 1, 'elsewhere@example.com', '{BLF-CRYPT}x');\n"
        "SET FOREIGN_KEY_CHECKS = 0;\n"
        "INSERT INTO virtual_aliases (id, domain_id, source, destination) VALUES (103, 99, 'ghost@gone.example', 'john@example.org');\n"
        "SET FOREIGN_KEY_CHECKS = 1;\n"
    )
    before = host.live_fingerprint()
    out = host.base / "imported"
    res = host.cli("import", "--out", str(out))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "virtual_users id=101: plain@example.org: the password is not a hash" in res.stdout
    assert "hunter2-plaintext" not in res.stdout + res.stderr
    assert "virtual_users id=102: 'elsewhere@example.com': not in its domain example.org" in res.stdout
    assert (
        "virtual_aliases id=103: 'ghost@gone.example' -> 'john@example.org': domain_id 99 does not exist" in res.stdout
    )
    assert not out.exists()
    assert not host.secrets.exists()
    assert not [p for p in host.base.iterdir() if p.name.startswith(".imported")]
    assert host.live_fingerprint() == before  # no NAME.in copied, no mode tightened


def test_missing_table_source_is_a_problem(guide_host: GuideHost) -> None:
    """A table named by main.cf with neither source, NAME.in nor built file exits 1 naming it; DIR is not created."""
    host = guide_host
    (host.postfix.config_dir / "generic.in").unlink()
    (host.postfix.config_dir / "generic.db").unlink()
    out = host.base / "imported"
    res = host.cli("import", "--out", str(out))
    assert res.returncode == 1
    assert "postfix/generic: neither" in res.stdout, res.stdout
    assert not out.exists()


def test_built_table_only_is_recovered(guide_host: GuideHost) -> None:
    """A table with only its built file is recovered with postmap -s, noted, and the diff is still empty."""
    host = guide_host
    (host.postfix.config_dir / "sender_access.in").unlink()
    out = host.base / "imported"
    res = host.cli("import", "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "recovered with postmap -s" in res.stderr
    recovered = (out / "postfix/sender_access").read_text()
    dump = subprocess.run(
        ["postmap", "-c", str(host.postfix.config_dir), "-s", f"hash:{host.postfix.config_dir}/sender_access"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert sorted(recovered.splitlines()) == sorted(dump.splitlines()) and recovered.strip()
    assert host.cli("diff", config=host.config_for(out)).returncode == 0


def test_client_and_pymysql_readers_agree(guide_host: GuideHost) -> None:
    """The mariadb-client readers and the PyMySQL reader return the same rows, tabs, newlines and backslashes included."""
    from reconciler.adopt import bulk
    from reconciler.adopt.rows import read_tables_client, read_tables_pymysql
    from reconciler.models import load_config

    host = guide_host
    cfg = load_config(host.config)
    client = shutil.which("mariadb") or "mariadb"
    domains, users, aliases = read_tables_client(cfg, client)
    assert read_lines(cfg, client, bulk.users().take, bulk.aliases().take) is None  # o'brien is quoted: row by row
    got_users: list[str] = []
    got_aliases: list[str] = []
    lines = read_lines(
        cfg, client, lambda _c, lines: not got_users.extend(lines), lambda _c, lines: not got_aliases.extend(lines)
    )
    assert lines is not None
    assert lines.domains == domains
    assert sorted(got_users) == sorted(f"{d}\t{e}\t{p}" for _, d, e, p in users)
    assert sorted(got_aliases) == sorted(f"{d}\t{s}\t{t}" for _, d, s, t in aliases)
    host.sql(
        "INSERT INTO virtual_aliases (domain_id, source, destination) VALUES "
        "(3, 'odd@example.net', 'a\\tb\\\\c\\nd@example.org'), (3, 'NULL@example.net', 'NULL');\n"
    )
    via_client = read_tables_client(cfg, client)
    via_pymysql = read_tables_pymysql(cfg)
    assert via_client == via_pymysql
    assert ("a\tb\\c\nd@example.org") in {a[3] for a in via_client[2]}
    res = host.cli("import", "--out", str(host.base / "imported"))
    assert (
        res.returncode == 1 and "'a\\tb\\\\c\\nd@example.org': destination contains control character" in res.stdout
    ), res.stdout


def _rows(repo: Path) -> dict[str, tuple[set[tuple[str, str]], set[tuple[str, str]]]]:
    out = {}
    for path in sorted((repo / "domains").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        out[doc["domain"]] = (
            {(m["address"], m["password"]) for m in doc.get("mailboxes") or []},
            {(a["source"], a["destination"]) for a in doc.get("aliases") or []},
        )
    return out


def test_example_repo_round_trip(mailhost: MailHost) -> None:
    """example-repo plus 10k generated mailboxes, applied then imported: files byte-identical, domains equal as data, diff empty."""
    host = mailhost
    lines = ["domain: generated.example", "mailboxes:"]
    for i in range(10_000):
        lines += [f"  - address: user{i:05d}@generated.example", f'    password: "{HASH}"']
    lines.append("aliases:")
    lines += [
        f"  - source: alias{i:04d}@generated.example\n    destination: user{i:05d}@generated.example"
        for i in range(1000)
    ]
    (host.work / "domains/generated.example.yaml").write_text("\n".join(lines) + "\n")
    host.commit("10k generated mailboxes")
    assert host.cli("apply").returncode == 0
    out = host.base / "imported"
    res = host.cli("import", "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    assert RELAY_SECRET not in res.stdout + res.stderr
    original = {k: v for k, v in _tree(host.work).items() if k.startswith("postfix/")}
    imported = {k: v for k, v in _tree(out).items() if k.startswith("postfix/")}
    assert imported == original
    assert _rows(out) == _rows(host.work)
    config = host.base / "config-imported.toml"
    config.write_text(host.config.read_text().replace(f'url = "{host.work}"', f'url = "{out}"'))
    res = host.cli("diff", env={"RECONCILER_CONFIG": str(config)})
    assert res.returncode == 0, res.stdout + res.stderr


def test_domain_yaml_loads_back_exactly() -> None:
    """A generated domain file loads back to exactly its rows (quotes, backslashes, catch-alls, o'brien) and validates."""
    from reconciler.adopt.domains import domain_yaml
    from reconciler.desired.domains import parse_domain_file

    users = [("o'brien@example.org", '{PBKDF2}x"y\\z'), ("A.b+c@example.org", SHA), ("zed@example.org", HASH)]
    aliases = [("@example.org", "zed@example.org"), ("a=b@example.org", "o'brien@example.org")]
    text = domain_yaml("example.org", users, aliases)
    doc = yaml.safe_load(text)
    assert {(m["address"], m["password"]) for m in doc["mailboxes"]} == set(users)
    assert {(a["source"], a["destination"]) for a in doc["aliases"]} == set(aliases)
    assert [m["address"] for m in doc["mailboxes"]] == ["A.b+c@example.org", "o'brien@example.org", "zed@example.org"]
    parsed = parse_domain_file("domains/example.org.yaml", text.encode())
    assert parsed.problems == () and parsed.model is not None
    assert domain_yaml("example.org", list(reversed(users)), list(reversed(aliases))) == text  # stable order


# The fast path (reconciler.adopt.bulk) against the row-by-row path, on rows without a database.
BCRYPT = "$2y$05$" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0"
ARGON = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
FAST_DOMAINS = [("1", "a.example"), ("2", "b.example"), ("10", "x-1.example.org"), ("3", "empty.example")]
FAST_USERS = [
    ("1", "a@a.example", HASH),
    ("1", "a.b@a.example", SHA),
    ("1", "a0@a.example", "{SSHA512}abc/+=="),
    ("1", "a+b=c@a.example", BCRYPT),
    ("1", "ab_c-d@a.example", ARGON),
    ("1", "z@a.example", "{PLAIN-MD5}1a79a4d60de6718e8e5b326e338ae533"),
    ("1", "9@a.example", "{BLF-CRYPT}" + BCRYPT),
    ("1", "a.b.c@a.example", HASH),
    ("1", "l" * 64 + "@a.example", HASH),
    ("2", "b@b.example", SHA),
    ("2", "b-@b.example", SHA),
    ("10", "u@x-1.example.org", HASH),
    ("10", "u1@x-1.example.org", HASH),
]
FAST_ALIASES = [
    ("1", "@a.example", "z@a.example"),
    ("1", "a@a.example", "x@other.example"),
    ("1", "list@a.example", "b@b.example"),
    ("1", "list@a.example", "a@a.example"),
    ("1", "0@a.example", "u@mail.b.example"),
    ("10", "postmaster@x-1.example.org", "u@x-1.example.org"),
    ("2", "@b.example", "b@b.example"),
]


def _both_paths(domains: list[tuple[str, str]], users: list[tuple[str, str, str]], aliases: list[tuple[str, str, str]]):  # type: ignore[no-untyped-def]
    """(fast result or None, row-by-row result) for the same rows, given as the client prints them (raw)."""
    from reconciler.adopt import bulk
    from reconciler.adopt.domains import texts_from_rows

    users_text = "".join(f"{d}\t{e}\t{p}\n" for d, e, p in users)
    aliases_text = "".join(f"{d}\t{s}\t{t}\n" for d, s, t in aliases)
    user_lines, alias_lines = users_text.split("\n")[:-1], aliases_text.split("\n")[:-1]
    fast = None
    user_runs, alias_runs = bulk.users(), bulk.aliases()
    half = len(user_lines) // 2  # in two chunks, as the client's output comes
    if (
        user_runs.take("".join(f"{line}\n" for line in user_lines[:half]), user_lines[:half])
        and user_runs.take("".join(f"{line}\n" for line in user_lines[half:]), user_lines[half:])
        and alias_runs.take(aliases_text, alias_lines)
    ):
        lazy = bulk.domain_texts(domains, user_runs, alias_runs)
        try:  # each text is checked as it is made: one the fast path does not cover ends it
            fast = None if lazy is None else (dict(lazy[0].items()), lazy[1])
        except bulk.NotCovered:
            fast = None
    slow = texts_from_rows(
        domains,
        [(str(n), d, e, p) for n, (d, e, p) in enumerate(users, 1)],
        [(str(n), d, s, t) for n, (d, s, t) in enumerate(aliases, 1)],
    )
    return fast, slow


def test_fast_path_gives_the_row_by_row_texts() -> None:
    """Rows the fast path covers, in any order: byte for byte the texts and counts of the row-by-row path."""
    import random

    rnd = random.Random(13)
    for _ in range(20):
        users, aliases = FAST_USERS[:], FAST_ALIASES[:]
        rnd.shuffle(users)
        rnd.shuffle(aliases)
        fast, (texts, counts, problems) = _both_paths(FAST_DOMAINS, users, aliases)
        assert problems == [] and fast is not None
        assert fast == (texts, counts)
    assert fast[0]["empty.example"].endswith("domain: empty.example\nmailboxes: []\naliases: []\n")


@pytest.mark.parametrize(
    ("users", "aliases", "problem"),
    [
        ([("1", "Big@a.example", HASH)], [], False),  # upper case: casefold order is not byte order
        ([("1", "u@A.EXAMPLE", HASH)], [], True),
        ([("1", "q@a.example", '{PBKDF2}x"y\\z')], [], False),  # quoted as a JSON string
        ([("1", "a@a.example", SHA)], [], True),  # the same address twice: a domain file holds each once
        ([("1", "A@a.example", SHA)], [], True),  # the same, casefolded
        ([], [("1", "a@a.example", "x@other.example")], True),  # the same alias twice
        ([("1", "ü@a.example", HASH)], [], True),
        ([("1", "p@a.example", "secret")], [], True),  # plaintext
        ([("1", "p@a.example", "{PLAIN}secret")], [], True),
        ([("1", "p@a.example", "$6$short$x")], [], True),
        ([("1", "p@a.example", "{X}" + "y" * 253)], [], True),  # 256 characters
        ([("1", "l" * 65 + "@a.example", HASH)], [], True),
        ([("1", "p@b.example", HASH)], [], True),  # not in its domain
        ([("1", "p@sub.a.example", HASH)], [], True),
        ([("99", "p@a.example", HASH)], [], True),  # no such domain id
        ([("1", "a\tb@a.example", HASH)], [], True),
        ([("1", ".a@a.example", HASH)], [], True),
        ([("1", "p@a.example", "{X}a b")], [], True),  # a space in the hash
        ([("1", "p@a.example", "{X}a\x01b")], [], True),  # a control character
        ([("1", "p@a.example", "{X}a\tb")], [], True),  # a tab: four fields
        ([("1", "p@a.example", "{X}a\u00e9")], [], True),
        ([], [("1", "s@b.example", "z@a.example")], True),
        ([], [("1", "s@a.example", "NULL")], True),
        ([], [("1", "s@a.example", "@a.example")], True),
        ([], [("1", "s@a.example", "t@-x.example")], True),
        ([], [("1", "s@a.example", "t@x")], True),
        ([], [("1", "S@a.example", "t@b.example")], False),
        ([], [("1", "s@a.example", "T@b.example")], False),
        ([], [("4", "s@a.example", "t@b.example")], True),
    ],
)
def test_fast_path_leaves_the_rest_to_the_row_by_row_path(
    users: list[tuple[str, str, str]], aliases: list[tuple[str, str, str]], problem: bool
) -> None:
    """One row the fast path does not cover makes it give up; the row-by-row path then decides."""
    fast, (_texts, _counts, problems) = _both_paths(FAST_DOMAINS, FAST_USERS + users, FAST_ALIASES + aliases)
    assert fast is None
    assert bool(problems) == problem, problems


def test_fast_path_password_rule_is_the_models_with_its_body_checked_per_chunk() -> None:
    """The fast path embeds models.PASSWORD_OK_RE with only the {SCHEME} body rule replaced (by a chunk-wide check)."""
    from reconciler import models
    from reconciler.adopt import bulk

    assert bulk._ANY_HASH in models.PASSWORD_OK_RE.pattern
    assert bulk._ANY_HASH_HERE in bulk._PASSWORD and bulk._ANY_HASH not in bulk._PASSWORD


def test_fast_path_refuses_an_invalid_domain_name() -> None:
    fast, (_texts, _counts, problems) = _both_paths([*FAST_DOMAINS, ("5", "Bad.Example")], FAST_USERS, FAST_ALIASES)
    assert fast is None and problems


def test_fast_path_on_a_live_database(guide_host: GuideHost) -> None:
    """On the guide's rows (without o'brien, whom it leaves to the row-by-row path): the fast path is taken and gives the row-by-row texts."""
    from reconciler.adopt import bulk
    from reconciler.adopt.domains import collect_rows, start_reading, texts_from_rows
    from reconciler.adopt.rows import read_tables
    from reconciler.models import load_config

    host = guide_host
    host.sql("DELETE FROM virtual_users WHERE email = 'o''brien@example.com';\n")
    cfg = load_config(host.config)
    assert read_lines(cfg, shutil.which("mariadb") or "mariadb", bulk.users().take, bulk.aliases().take) is not None
    reader = start_reading(cfg)
    assert reader is not None
    try:
        texts, counts, problems = collect_rows(cfg, reader)
    finally:
        reader.close()
    assert problems == [] and counts[1] >= 2
    assert (dict(texts), counts, problems) == texts_from_rows(*read_tables(cfg))


def test_refused_login_exits_2_writing_nothing(guide_host: GuideHost) -> None:
    """A wrong [mysql] password: exit 2, one line saying the login was refused (never the password), nothing written."""
    host = guide_host
    wrong = "Not-The-Password-4c1d"
    password_file = host.base / "mysql-password"
    assert password_file.read_text() == host.db.reconciler_password
    password_file.write_text(wrong)
    out = host.base / "imported"
    res = host.cli("import", "--out", str(out))
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "Access denied" in lines[0] and "reconciler" in lines[0], lines
    assert wrong not in res.stdout + res.stderr and host.db.reconciler_password not in res.stdout + res.stderr
    assert not out.exists() and not [p for p in host.base.iterdir() if p.name.startswith(".imported")]


def _client_children() -> list[int]:
    """This process's children that are a ``mariadb`` client, reaped or not."""
    pids = []
    for task in Path("/proc/self/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    return [pid for pid in pids if Path(f"/proc/{pid}/comm").read_text().strip() == "mariadb"]


def test_a_reader_closed_unread_stops_its_client(
    guide_host: GuideHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import that fails before it takes the rows (the client was started first): close stops the client and removes its credentials.

    The client is kept waiting on a table lock meanwhile: a close that waited for it to finish
    instead of stopping it would not return.
    """
    import tempfile
    import threading

    from reconciler.adopt.domains import start_reading
    from reconciler.models import load_config

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    before = _client_children()
    conn = guide_host.db.root_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("LOCK TABLES mailserver.virtual_users WRITE")
        reader = start_reading(load_config(guide_host.config))
        assert reader is not None
        assert [p.name[:17] for p in tmp.iterdir()] == ["reconciler-import"]  # the defaults file's directory
        assert len(_client_children()) == len(before) + 1
        closing = threading.Thread(target=reader.close, daemon=True)
        closing.start()
        closing.join(timeout=20)
        assert not closing.is_alive(), "close waited for the client"
    finally:
        conn.close()  # the lock goes with the session
    assert list(tmp.iterdir()) == []
    assert _client_children() == before  # stopped and reaped
    reader.close()  # twice is harmless


def test_duplicates_without_unique_keys_are_named(guide_host: GuideHost) -> None:
    """Without the unique keys, a mailbox or an alias twice leaves the fast path late (while writing): both rows named, nothing written."""
    host = guide_host
    host.sql(
        "DELETE FROM virtual_users WHERE email = 'o''brien@example.com';\n"
        "ALTER TABLE virtual_users DROP INDEX uq_virtual_users_email;\n"
        "ALTER TABLE virtual_aliases DROP INDEX uq_virtual_aliases_pair;\n"
        "INSERT INTO virtual_users (domain_id, email, password) SELECT domain_id, email, password FROM virtual_users "
        "WHERE email = 'john@example.org';\n"
        "INSERT INTO virtual_aliases (domain_id, source, destination) SELECT domain_id, source, destination "
        "FROM virtual_aliases ORDER BY id LIMIT 1;\n"
    )
    out = host.base / "imported"
    res = host.cli("import", "--out", str(out))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "'john@example.org': the same mailbox as virtual_users id=" in res.stdout, res.stdout
    assert "the same alias as virtual_aliases id=" in res.stdout, res.stdout
    assert not out.exists() and not list(host.base.glob(".imported.import-*"))


def test_fast_path_counts_the_rows_a_raw_newline_cannot_add(guide_host: GuideHost) -> None:
    """A value with a newline prints as two lines that each look like a good row: the row counts send it row by row."""
    from reconciler.adopt import bulk
    from reconciler.models import load_config

    host = guide_host
    host.sql("DELETE FROM virtual_users WHERE email = 'o''brien@example.com';\n")
    cfg = load_config(host.config)
    client = shutil.which("mariadb") or "mariadb"
    assert read_lines(cfg, client, bulk.users().take, bulk.aliases().take) is not None
    host.sql(  # the password: {X}ab, a newline, then a line that looks like a good row
        "INSERT INTO virtual_users (domain_id, email, password) SELECT id, 'real@example.com', "
        "CONCAT('{X}ab', CHAR(10), '1', CHAR(9), 'forged@example.com', CHAR(9), '{SHA512-CRYPT}$6$x$', "
        "REPEAT('a', 86)) FROM virtual_domains WHERE name = 'example.com';\n"
    )
    assert read_lines(cfg, client, bulk.users().take, bulk.aliases().take) is None
    res = host.cli("import", "--out", str(host.base / "imported"))
    assert res.returncode == 1 and "real@example.com: the password is not a hash" in res.stdout, res.stdout
    assert "forged" not in res.stdout and not (host.base / "imported").exists()


def test_fast_path_leaves_nulls_to_the_row_by_row_path(guide_host: GuideHost) -> None:
    """Columns a foreign schema leaves nullable print as NULL: never a hash or an address, so those rows are named."""
    from reconciler.adopt import bulk
    from reconciler.models import load_config

    host = guide_host
    host.sql(
        "DELETE FROM virtual_users WHERE email = 'o''brien@example.com';\n"
        "ALTER TABLE virtual_users MODIFY password varchar(255) NULL;\n"
        "ALTER TABLE virtual_aliases MODIFY destination varchar(254) NULL;\n"
        "DROP TRIGGER reconciler_users_ai;\nDROP TRIGGER reconciler_aliases_ai;\n"  # a host we never set up has none
    )
    cfg = load_config(host.config)
    client = shutil.which("mariadb") or "mariadb"
    assert read_lines(cfg, client, bulk.users().take, bulk.aliases().take) is not None
    host.sql(
        "INSERT INTO virtual_users (id, domain_id, email, password) VALUES (201, 1, 'nopass@example.org', NULL);\n"
        "INSERT INTO virtual_aliases (id, domain_id, source, destination) VALUES (202, 1, 'nowhere@example.org', NULL);\n"
    )
    assert read_lines(cfg, client, bulk.users().take, bulk.aliases().take) is None
    res = host.cli("import", "--out", str(host.base / "imported"))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "virtual_users id=201: nopass@example.org: the password is not a hash" in res.stdout, res.stdout
    assert "virtual_aliases id=202: 'nowhere@example.org' -> 'NULL'" in res.stdout, res.stdout
    assert not (host.base / "imported").exists()


def test_sections_split_at_any_chunk_boundary() -> None:
    """The client's output cut into chunks anywhere (a mark ending one, the last line alone): the same sections."""
    import queue

    from reconciler.adopt import rows

    mark = "--reconciler-import-next-table--"
    lines = [
        "1\ta.example\n",
        f"{mark}\t1\n",
        "1\tu@a.example\t{X}h\n",
        f"{mark}\t1\n",
        "1\tv@a.example\tu@a.example\n",
        f"{mark}\t1\n",
        "0\n",  # no unique key on email
    ]
    for cut in range(len(lines) + 1):
        arrived: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        for part in ("".join(lines[:cut]), "".join(lines[cut:]), ""):
            if part or not arrived.empty():
                arrived.put(part.encode())
        taken: list[list[str]] = [[], []]
        sections = rows._sections(
            arrived, (lambda _c, got, t=taken: not t[0].extend(got), lambda _c, got, t=taken: not t[1].extend(got))
        )
        assert sections is not None, cut
        assert "".join(sections[0]) == "1\ta.example\n" and rows._count(sections[3]) == 0, (cut, sections)
        assert taken == [["1\tu@a.example\t{X}h"], ["1\tv@a.example\tu@a.example"]], cut
