"""A fleet for end-to-end tests: private Postfix instances, one agent each, one bare repository, Galera.

``make_fleet`` copies example-repo into a work tree and sandboxizes its ``postfix/`` folder once per
Postfix instance, each pointing its MySQL lookups at "its" Galera node. The first host's tree
becomes the shared ``postfix/``; what differs on the others (directories, ports, certificates,
their node's port) becomes their ``hosts/<name>.yaml`` ``main_cf`` and their
``hosts/<name>/postfix/`` files, exactly as an administrator would write a real fleet. Every agent
follows the one bare repository the work tree pushes to, and lists every Galera node in
``[mysql].host``, its own first.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailhost import HASH, RELAY_SECRET

from harness.common import free_port
from harness.galera import GaleraCluster
from harness.postfix import PostfixInstance
from harness.repo import sandboxize_postfix_tree
from reconciler.cfparse import parse_main_cf

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example-repo"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll until ``predicate`` returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def reset_cluster_database(cluster: GaleraCluster) -> None:
    """Drop and recreate ``mailserver`` (replicated to every node)."""
    conn = cluster.root_connect(cluster.live_nodes()[0])
    try:
        with conn.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS mailserver")
            cur.execute("CREATE DATABASE mailserver CHARACTER SET utf8mb4")
    finally:
        conn.close()


@dataclass
class FleetHost:
    """One mail host of the fleet: its Postfix instance, its agent's config and its agent process."""

    name: str
    postfix: PostfixInstance
    base: Path
    config: Path
    api_port: int
    proc: subprocess.Popen[str] | None = None
    log_lines: list[str] = field(default_factory=list)

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, "RECONCILER_CONFIG": str(self.config), **(extra or {})}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, env=self.env(), check=False
        )

    def start_agent(self, env: Mapping[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "run"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(env),
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        wait_for(self._answers, 30, f"{self.name}'s agent API")

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.log_lines.append(line)

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name}'s agent exited {self.proc.returncode}:\n{''.join(self.log_lines)}")
        try:
            self.get("/healthz")
        except OSError:
            return False
        return True

    def stop_agent(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def get(self, path: str) -> Any:
        # S310: plain http to the agent's loopback port, by construction.
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}{path}", timeout=10) as resp:
            return json.loads(resp.read())

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/status")
        return result

    def events(self, name: str) -> list[dict[str, Any]]:
        """The agent's JSON log lines whose event is ``name``."""
        out = []
        for line in list(self.log_lines):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("event") == name:
                out.append(doc)
        return out

    def rcpt(self, address: str) -> int:
        code, _ = self.postfix.rcpt_to("sender@example.com", address)
        return code

    def param(self, name: str) -> str:
        return self.postfix.postconf("-h", name).strip()


@dataclass
class Fleet:
    """Hosts, the work tree they are configured from, and the bare repository they follow."""

    hosts: dict[str, FleetHost]
    work: Path
    bare: Path
    cluster: GaleraCluster

    def git(self, *args: str) -> str:
        cmd = ["git", "-C", str(self.work), "-c", "user.name=Test", "-c", "user.email=test@example.net", *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()

    def push(self, message: str) -> str:
        """Commit the work tree and push it to the bare repository; returns the new head."""
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        self.git("push", "-q", str(self.bare), "main")
        return self.git("rev-parse", "HEAD")

    def host_file(self, name: str) -> Path:
        return self.work / "hosts" / f"{name}.yaml"

    def add_mailbox(self, address: str) -> None:
        path = self.work / "domains" / f"{address.rpartition('@')[2]}.yaml"
        text = path.read_text(encoding="utf-8")
        path.write_text(
            text.replace("mailboxes:\n", f'mailboxes:\n  - address: "{address}"\n    password: "{HASH}"\n', 1),
            encoding="utf-8",
        )

    def set_main_cf(self, name: str, param: str, value: str) -> None:
        """Set ``param`` in a host file's ``main_cf`` (appended: the host files are written flat)."""
        path = self.host_file(name)
        path.write_text(path.read_text(encoding="utf-8") + f"  {param}: {json.dumps(value)}\n", encoding="utf-8")

    def wait_synced(self, head: str, names: list[str] | None = None, timeout: float = 60) -> None:
        for name in names or list(self.hosts):
            host = self.hosts[name]
            wait_for(
                lambda h=host: h.status()["state"] == "synced" and h.status()["applied_revision"] == head,  # type: ignore[misc]
                timeout,
                f"{name} synced at {head[:12]} (status {host.status()})",
            )

    def stop(self) -> None:
        for host in self.hosts.values():
            host.stop_agent()


def _secret(path: Path, value: str) -> None:
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(0o600)


def make_fleet(
    base: Path,
    cluster: GaleraCluster,
    instances: list[PostfixInstance],
    waves: Mapping[str, int],
    *,
    host_timeout: int = 600,
) -> Fleet:
    """Repository, secrets and agent configurations for one host per instance (named as ``waves``)."""
    names = list(waves)
    trees: dict[str, Path] = {}
    lookup: set[str] = set()
    other: set[str] = set()
    for i, (name, instance) in enumerate(zip(names, instances, strict=True)):
        tree = base / f"tree-{name}" / "postfix"
        shutil.copytree(EXAMPLE / "postfix", tree)
        result = sandboxize_postfix_tree(tree, instance, cluster.nodes[i % len(cluster.nodes)].port)
        lookup.update(result.lookup_secrets)
        other.update(result.other_secrets)
        trees[name] = tree
    work = base / "work"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("postfix"))
    shutil.copytree(trees[names[0]], work / "postfix")
    (work / "hosts").mkdir()
    shared = trees[names[0]]
    shared_main = parse_main_cf((shared / "main.cf").read_text(encoding="utf-8"))
    for name in names:
        tree = trees[name]
        main = parse_main_cf((tree / "main.cf").read_text(encoding="utf-8"))
        overrides = {k: v for k, v in main.items() if shared_main.get(k) != v}
        assert set(shared_main) <= set(main), f"{name} lacks main.cf parameters of the shared tree"
        lines = [f"host: {name}", f"wave: {waves[name]}", "main_cf:"]
        lines += [f"  {k}: {json.dumps(v)}" for k, v in sorted(overrides.items())]
        (work / "hosts" / f"{name}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
        for path in sorted(tree.iterdir()):
            if path.name != "main.cf" and path.read_bytes() != (shared / path.name).read_bytes():
                target = work / "hosts" / name / "postfix" / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
    db = cluster.nodes[0]
    bare = base / "mail-config.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    fleet = Fleet({}, work, bare, cluster)
    fleet.git("init", "-q", "-b", "main")
    fleet.push("initial revision")
    for i, (name, instance) in enumerate(zip(names, instances, strict=True)):
        home = base / name
        home.mkdir()
        secrets = home / "secrets"
        secrets.mkdir(mode=0o700)
        for secret in lookup:
            _secret(secrets / secret, db.mailuser_password)
        for secret in other:
            _secret(secrets / secret, RELAY_SECRET)
        _secret(home / "mysql-password", db.reconciler_password)
        order = [cluster.nodes[(i + k) % len(cluster.nodes)].port for k in range(len(cluster.nodes))]
        servers = ", ".join(f'"127.0.0.1:{p}"' for p in order)
        api_port = free_port()
        config = home / "config.toml"
        config.write_text(
            f"""
[source]
url = "{bare}"
branch = "main"
[postfix]
config_dir = "{instance.config_dir}"
health_timeout = 8
[host]
name = "{name}"
[fleet]
host_timeout = {host_timeout}
poll_interval = 0.3
[mysql]
host = [{servers}]
user = "reconciler"
password_file = "{home / "mysql-password"}"
database = "{db.database}"
[secrets]
dir = "{secrets}"
[state]
dir = "{home / "state"}"
[policy]
drift_check_interval = 1
[api]
listen = "127.0.0.1:{api_port}"
""",
            encoding="utf-8",
        )
        fleet.hosts[name] = FleetHost(name, instance, home, config, api_port)
    return fleet


def new_base() -> Path:
    """A fresh world-searchable directory for a fleet's files (Postfix instances live elsewhere)."""
    return Path(tempfile.mkdtemp(prefix="reconciler-fleet-"))
