"""A complete private mail host for end-to-end tests: Postfix + MariaDB + desired-state git repo.

``MailHost`` copies example-repo into a git work tree, sandboxizes its postfix/ folder for a private
Postfix instance (loopback ports, private dirs, the session MariaDB), writes the secrets and an
agent configuration, and offers what tests need: commit a change, run the CLI, send RCPT TO,
fingerprint every managed byte and row.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.mariadb import MariaDB
from harness.postfix import PostfixInstance
from harness.repo import sandboxize_postfix_tree

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example-repo"
RELAY_SECRET = "relay-Secret-Value-7f3a9c"
HASH = "{BLF-CRYPT}$2y$05$QDUtJYxKHTfAOm0Znz5SiOxDjfx2AUkk8vLhZFSc3FUxFU1AfxQ0W"


def reset_database(db: MariaDB) -> None:
    """Drop and recreate the mail database so that each test starts from an empty host."""
    assert db.database == "mailserver"
    conn = db.root_connect()
    try:
        with conn.cursor() as cur:
            # Grants are by name and survive: both users keep their privileges on mailserver.*.
            cur.execute("DROP DATABASE IF EXISTS mailserver")
            cur.execute("CREATE DATABASE mailserver CHARACTER SET utf8mb4")
        conn.commit()
    finally:
        conn.close()


@dataclass
class MailHost:
    """One private mail host under ``base`` (see module docstring)."""

    base: Path
    db: MariaDB
    postfix: PostfixInstance
    work: Path
    config: Path
    secrets: Path
    state: Path

    @classmethod
    def create(cls, base: Path, db: MariaDB, postfix: PostfixInstance) -> MailHost:
        reset_database(db)
        work = base / "work"
        shutil.copytree(EXAMPLE, work)
        tree = sandboxize_postfix_tree(work / "postfix", postfix, db.port)
        secrets = base / "secrets"
        secrets.mkdir(mode=0o700)
        for name in tree.lookup_secrets:
            _secret(secrets / name, db.mailuser_password)
        for name in tree.other_secrets:
            _secret(secrets / name, RELAY_SECRET)
        password = base / "mysql-password"
        _secret(password, db.reconciler_password)
        state = base / "state"
        config = base / "config.toml"
        config.write_text(
            f"""
[source]
url = "{work}"
branch = "main"
[postfix]
config_dir = "{postfix.config_dir}"
health_timeout = 8
[mysql]
host = "127.0.0.1"
port = {db.port}
user = "reconciler"
password_file = "{password}"
database = "{db.database}"
[secrets]
dir = "{secrets}"
[state]
dir = "{state}"
""",
            encoding="utf-8",
        )
        host = cls(base, db, postfix, work, config, secrets, state)
        host.git("init", "-q", "-b", "main")
        host.commit("initial revision")
        return host

    # -- repository ---------------------------------------------------------------------------

    def git(self, *args: str) -> str:
        cmd = ["git", "-C", str(self.work), "-c", "user.name=Test", "-c", "user.email=test@example.net", *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")

    def edit(self, rel: str, change: Callable[[str], str]) -> None:
        path = self.work / rel
        path.write_text(change(path.read_text(encoding="utf-8")), encoding="utf-8")

    def add_mailbox(self, address: str) -> None:
        domain = address.rpartition("@")[2]
        path = self.work / "domains" / f"{domain}.yaml"
        if not path.exists():
            path.write_text(f"domain: {domain}\nmailboxes:\n", encoding="utf-8")
        self.edit(
            f"domains/{domain}.yaml",
            lambda t: t.replace("mailboxes:\n", f'mailboxes:\n  - address: "{address}"\n    password: "{HASH}"\n', 1),
        )

    # -- commands -----------------------------------------------------------------------------

    def cli(
        self, *args: str, env: dict[str, str] | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "RECONCILER_CONFIG": str(self.config), **(env or {})}
        res = subprocess.run(
            [sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, env=full_env, check=False
        )
        if check and res.returncode != 0:
            raise AssertionError(f"reconciler {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
        return res

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        full_env = {**os.environ, "RECONCILER_CONFIG": str(self.config), **(env or {})}
        return subprocess.Popen(
            [sys.executable, "-m", "reconciler", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )

    def rcpt(self, address: str) -> int:
        code, _ = self.postfix.rcpt_to("sender@example.com", address)
        return code

    # -- fingerprints -------------------------------------------------------------------------

    def files_fingerprint(self) -> dict[str, tuple[str, int, int, int]]:
        out = {}
        for path in sorted(self.postfix.config_dir.iterdir()):
            st = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            out[path.name] = (digest, st.st_mode, st.st_uid, st.st_gid)
        return out

    def rows_fingerprint(self) -> dict[str, list[tuple[str, ...]]]:
        conn = self.db.root_connect()
        try:
            with conn.cursor() as cur:
                out: dict[str, list[tuple[str, ...]]] = {}
                for table, cols in (
                    ("virtual_domains", "name"),
                    ("virtual_users", "email, password"),
                    ("virtual_aliases", "source, destination"),
                ):
                    cur.execute(
                        "SELECT table_name FROM information_schema.tables WHERE table_schema=%s AND table_name=%s",
                        (self.db.database, table),
                    )
                    if cur.fetchone() is None:
                        out[table] = []
                        continue
                    cur.execute(f"SELECT {cols} FROM mailserver.{table} ORDER BY {cols}")  # noqa: S608 - fixed names
                    out[table] = [tuple(r) for r in cur.fetchall()]
                return out
        finally:
            conn.close()

    def fingerprint(self) -> tuple[object, object]:
        """Every managed byte and row; exact bytes, so a rollback must restore the very same files."""
        return self.files_fingerprint(), self.rows_fingerprint()

    def content_fingerprint(self) -> tuple[object, object]:
        """Like ``fingerprint`` but built tables by their content (``postmap -s``), not their bytes.

        Berkeley DB files built twice from the same source differ in bytes; what Postfix reads
        from them does not. Used where a table is legitimately rebuilt (old -> new -> old).
        """
        files: dict[str, object] = dict(self.files_fingerprint())
        for name in list(files):
            if name.endswith(".db"):
                source = self.postfix.config_dir / name.removesuffix(".db")
                dump = subprocess.run(
                    ["postmap", "-c", str(self.postfix.config_dir), "-s", f"hash:{source}"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                files[name] = (sorted(dump.splitlines()), *files[name][1:])  # type: ignore[misc]
        return files, self.rows_fingerprint()


def _secret(path: Path, value: str) -> None:
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(0o600)
