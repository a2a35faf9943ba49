"""`reconciler run` against a real private Postfix and MariaDB: pushes go live, drift is reverted.

Each end-to-end test starts the agent as a subprocess (``python -m reconciler run``) on a fresh
mail host, with ``[api] listen`` on a free loopback port and a 1 s row check, and talks to it over
HTTP and SMTP as an operator would. The unit tests at the end need no services.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pygit2
import pytest
from mailhost import RELAY_SECRET, MailHost

from harness.common import free_port
from reconciler.agent.redact import MASK, Redactor
from reconciler.agent.schedule import BACKOFF_MAX, backoff
from reconciler.agent.triggers import Reason, Triggers
from reconciler.agent.watchers import RefWatcher
from reconciler.api.auth import bearer_ok, webhook_ok
from reconciler.api.server import ListenError, bind, is_loopback, parse_listen
from reconciler.models import AgentConfig, load_config
from reconciler.source_remote import Mirror, is_remote, public_url

TOKEN = "api-Token-0123456789"
HOOK_SECRET = "hook-Secret-abcdef"


class RunningAgent:
    """A ``reconciler run`` subprocess and an HTTP client for its API."""

    def __init__(self, host: MailHost, *args: str, env: dict[str, str] | None = None) -> None:
        self.host = host
        self.url = f"http://127.0.0.1:{host.api_port}"  # type: ignore[attr-defined]
        self.proc = host.popen("run", *args, env=env)
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_for(lambda: self._health() is not None, 20, "the agent's API to answer", self)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def _health(self) -> int | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited {self.proc.returncode}:\n{''.join(self.stderr)}")
        try:
            return self.get("/healthz")[0]
        except OSError:
            return None

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        # S310: plain http to the agent's loopback port, by construction.
        req = urllib.request.Request(self.url + path, data=body if method == "POST" else None, method=method)  # noqa: S310
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path)

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        assert code == 200, body
        return json.loads(body)  # type: ignore[no-any-return]

    def wait_state(self, state: str, timeout: float = 15, revision: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = {}

        def ok() -> bool:
            result.update(self.status())
            return result["state"] == state and (revision is None or result["head_revision"] == revision)

        wait_for(ok, timeout, f"state {state}" + (f" at {revision[:12]}" if revision else ""), self)
        return result

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._reader.join(timeout=5)
        return code

    def log(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, agent: RunningAgent | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    detail = ""
    if agent is not None:
        with_status = ""
        try:
            with_status = json.dumps(agent.status(), indent=1)[:3000]
        except Exception as exc:  # the API may be down
            with_status = repr(exc)
        detail = f"\nstatus: {with_status}\nlog tail:\n{''.join(agent.stderr[-30:])}"
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{detail}")


class NotifySocket:
    """A stand-in for systemd's notify socket: collects the agent's sd_notify datagrams as they come.

    It reads continuously, as systemd does: a datagram socket queues only net.unix.max_dgram_qlen
    (often 10) unread messages.
    """

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="notify-", dir="/tmp")
        self.path = os.path.join(self.dir, "s")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self._messages: list[str] = []
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closing.is_set():
            try:
                self._messages.extend(self.sock.recv(4096).decode().split("\n"))
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> list[str]:
        time.sleep(0.3)  # the last datagrams in flight
        self._closing.set()
        self._reader.join(timeout=5)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return list(self._messages)


def configure(host: MailHost, **sections: dict[str, Any]) -> None:
    """Append ``[api]`` (free port), ``[policy]`` (1 s row check) and any other sections to the config."""
    host.api_port = free_port()  # type: ignore[attr-defined]
    api = {"listen": f"127.0.0.1:{host.api_port}", **sections.pop("api", {})}  # type: ignore[attr-defined]
    policy = {"drift_check_interval": 1, **sections.pop("policy", {})}
    text = host.config.read_text()
    for name, values in (("api", api), ("policy", policy), *sections.items()):
        text += f"\n[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
    host.config.write_text(text)


@pytest.fixture
def agent_host(mailhost: MailHost) -> Iterator[MailHost]:
    """A mail host whose config has an [api] section and a 1 s row check; agents are stopped afterwards."""
    configure(mailhost)
    yield mailhost


def wait_rcpt(host: MailHost, address: str, code: int, timeout: float = 5) -> None:
    """Wait until RCPT TO ``address`` gets ``code`` (example.net is hosted without a catch-all: 550 before)."""
    wait_for(lambda: host.rcpt(address) == code, timeout, f"RCPT TO {address} -> {code}")


def rogue_row(host: MailHost) -> None:
    conn = host.db.root_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM mailserver.virtual_domains WHERE name = 'example.org'")
            (domain_id,) = cur.fetchone()
            cur.execute(
                "INSERT INTO mailserver.virtual_users (domain_id, email, password) VALUES (%s, %s, %s)",
                (domain_id, "rogue@example.org", "{PLAIN}x"),
            )
        conn.commit()
    finally:
        conn.close()


def rows_for(host: MailHost, email: str) -> int:
    return sum(1 for row in host.rows_fingerprint()["virtual_users"] if row[0] == email)


# -- end to end -----------------------------------------------------------------------------------


def test_push_goes_live_and_drift_is_reverted(agent_host: MailHost) -> None:
    """A commit goes live by itself, a hand-edited file and a rogue row are reverted, SIGTERM exits 0."""
    host = agent_host
    agent = RunningAgent(host)
    try:
        first = agent.wait_state("synced", 20, host.git("rev-parse", "HEAD"))
        assert first["applied_revision"] == first["head_revision"]
        assert first["history"][0]["result"] == "applied"
        assert first["history"][0]["subject"] == "initial revision"
        assert host.rcpt("john@example.org") == 250

        assert host.rcpt("pushed@example.net") == 550
        host.add_mailbox("pushed@example.net")
        rev = host.commit("add pushed")
        wait_rcpt(host, "pushed@example.net", 250)
        status = agent.wait_state("synced", 5, rev)
        assert status["last_attempt"]["revision"] == rev
        assert status["last_attempt"]["author"] == "Test <test@example.net>"

        canonical = host.postfix.config_dir / "canonical"
        good = canonical.read_bytes()
        with canonical.open("a") as fh:
            fh.write("hand-edit hand-edit@example.net\n")
        wait_for(lambda: canonical.read_bytes() == good, 5, "the hand edit to be reverted", agent)

        rogue_row(host)
        wait_for(lambda: rows_for(host, "rogue@example.org") == 0, 5, "the rogue row to be deleted", agent)
        status = agent.wait_state("synced", 5)
        assert any(a["trigger"].startswith("drift") for a in status["history"])

        res = host.cli("status")
        assert res.returncode == 0, res.stderr
        assert "state: synced" in res.stdout
        metrics = agent.get("/metrics")[1].decode()
        assert 'reconciler_reconciles_total{result="applied"}' in metrics
        assert f'reconciler_applied_revision_info{{revision="{rev}"}} 1.0' in metrics
    finally:
        code = agent.stop()
    assert code == 0
    events = [e for e in agent.log() if e.get("event") == "reconcile.done"]
    assert events and all(e.get("run_id") and e.get("revision") for e in events)
    # Stopped: `reconciler status` falls back to what the agent recorded.
    res = host.cli("status", "--format", "json")
    assert res.returncode == 0
    assert json.loads(res.stdout)["state"] == "synced"
    for path in host.state.rglob("*"):
        if path.is_file():
            assert RELAY_SECRET.encode() not in path.read_bytes(), path
    assert RELAY_SECRET not in "".join(agent.stderr)


def test_bad_push_fails_until_a_good_push(agent_host: MailHost) -> None:
    """A revision Postfix refuses leaves status failed with the error and is not retried; the next good push applies."""
    host = agent_host
    agent = RunningAgent(host)
    try:
        agent.wait_state("synced", 20)
        host.edit("postfix/main.cf", lambda t: t + "smtp_sender_restrictions = x\n")
        bad = host.commit("a typo in main.cf")
        status = agent.wait_state("failed", 10, bad)
        assert status["last_attempt"]["result"] in ("rejected", "failed")
        assert "smtp_sender_restrictions" in status["last_attempt"]["error"]
        assert status["applied_revision"] != bad
        attempts = len(status["history"])
        assert agent.request("POST", "/sync")[0] == 202
        time.sleep(1.5)  # a sync and a drift check later, the failed head is still not retried
        status = agent.status()
        assert status["state"] == "failed" and len(status["history"]) == attempts
        assert agent.get("/diff")[0] == 409
        assert host.cli("status").returncode == 1

        host.edit("postfix/main.cf", lambda t: t.replace("smtp_sender_restrictions = x\n", ""))
        host.add_mailbox("after@example.net")
        good = host.commit("fix the typo, add a mailbox")
        agent.wait_state("synced", 10, good)
        assert host.rcpt("after@example.net") == 250
    finally:
        assert agent.stop() == 0


def test_database_outage_degrades_then_recovers(agent_host: MailHost) -> None:
    """With MariaDB down the agent is degraded and retries with backoff; once it is back, synced by itself."""
    host = agent_host
    agent = RunningAgent(host)
    try:
        agent.wait_state("synced", 20)
        host.db.stop()
        try:
            status = agent.wait_state("degraded", 10)
            assert status["last_attempt"]["result"] == "error"
            assert status["next_retry_at"]
            assert agent.get("/healthz")[0] == 200
        finally:
            host.db.start()
        agent.wait_state("synced", 20)
        host.add_mailbox("back@example.net")
        host.commit("after the outage")
        wait_rcpt(host, "back@example.net", 250)
    finally:
        assert agent.stop() == 0


def test_sigterm_during_apply_finishes_it(agent_host: MailHost) -> None:
    """SIGTERM while an apply (with a reload) runs lets it finish, then the agent exits 0 with the new revision live."""
    host = agent_host
    agent = RunningAgent(host)
    try:
        agent.wait_state("synced", 20)
        host.edit(
            "postfix/main.cf",
            lambda t: t.replace("smtpd_banner = $myhostname ESMTP", "smtpd_banner = $myhostname ESMTP t"),
        )
        host.add_mailbox("during@example.net")
        rev = host.commit("a change that needs a reload")
        agent.wait_state("applying", 10, rev)
    finally:
        code = agent.stop()
    assert code == 0
    assert not (host.state / "journal.json").exists()
    res = host.cli("diff")
    assert res.returncode == 0, res.stdout + res.stderr  # the new revision is live, whole
    assert host.rcpt("during@example.net") == 250
    assert any(e.get("event") == "agent.stopping" for e in agent.log())


def test_bare_repo_push_and_drift_reported_without_self_heal(mailhost: MailHost, tmp_path: Path) -> None:
    """From a bare repo, a git push goes live; with self_heal = false drift is only reported, until POST /sync."""
    host = mailhost
    bare = tmp_path / "mail-config.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    host.git("push", "-q", str(bare), "main")
    text = host.config.read_text().replace(f'url = "{host.work}"', f'url = "file://{bare}"')
    host.config.write_text(text)
    configure(host, policy={"self_heal": False})
    agent = RunningAgent(host)
    try:
        agent.wait_state("synced", 20)
        host.add_mailbox("bare@example.net")
        host.commit("via a bare repo")
        host.git("push", "-q", str(bare), "main")
        wait_rcpt(host, "bare@example.net", 250)

        canonical = host.postfix.config_dir / "canonical"
        good = canonical.read_bytes()
        with canonical.open("a") as fh:
            fh.write("hand-edit hand-edit@example.net\n")
        rogue_row(host)
        agent.wait_state("out_of_sync", 5)
        wait_for(lambda: len(agent.status()["drift"]) >= 2, 5, "both drift items", agent)
        targets = {d["target"] for d in agent.status()["drift"]}
        assert "canonical" in targets and "virtual_users/rogue@example.org" in targets
        assert canonical.read_bytes() != good
        diff = json.loads(agent.get("/diff")[1])
        assert {c["target"] for c in diff["changes"]} >= targets
        assert host.cli("status").returncode == 1

        assert agent.request("POST", "/sync")[0] == 202
        agent.wait_state("synced", 10)
        assert canonical.read_bytes() == good
        assert rows_for(host, "rogue@example.org") == 0
    finally:
        assert agent.stop() == 0


def _git_daemon(base: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            f"--base-path={base}",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(base),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def listening() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
        return False

    wait_for(listening, 10, "git daemon")
    return proc


def test_remote_source_fetched_on_webhook_and_degraded_while_unreachable(mailhost: MailHost, tmp_path: Path) -> None:
    """A git:// remote is mirrored and fetched on POST /hooks/git; while it is unreachable the agent is degraded."""
    host = mailhost
    served = tmp_path / "served"
    bare = served / "mail-config.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    host.git("push", "-q", str(bare), "main")
    port = free_port()
    text = host.config.read_text().replace(f'url = "{host.work}"', f'url = "git://127.0.0.1:{port}/mail-config.git"')
    host.config.write_text(text.replace('branch = "main"', 'branch = "main"\npoll_interval = 3600'))
    configure(host)
    daemon = _git_daemon(served, port)
    agent = RunningAgent(host)
    try:
        agent.wait_state("synced", 20)
        assert (host.state / "mirror.git" / "HEAD").exists()
        host.add_mailbox("remote@example.net")
        rev = host.commit("via the remote")
        host.git("push", "-q", str(bare), "main")
        time.sleep(0.3)
        assert agent.status()["head_revision"] != rev  # no fetch before the hook (poll_interval is an hour)
        assert agent.request("POST", "/hooks/git", b"{}")[0] == 202
        agent.wait_state("synced", 10, rev)
        wait_rcpt(host, "remote@example.net", 250)

        daemon.terminate()
        daemon.wait(timeout=10)
        assert agent.request("POST", "/hooks/git", b"{}")[0] == 202
        status = agent.wait_state("degraded", 10)
        assert "fetch of git://127.0.0.1" in status["last_attempt"]["error"]
        daemon = _git_daemon(served, port)
        agent.wait_state("synced", 15)
    finally:
        daemon.terminate()
        assert agent.stop() == 0


def test_dry_run_never_applies_and_api_refuses_bad_credentials(mailhost: MailHost) -> None:
    """A dry run plans and reports out_of_sync with the diff but writes nothing; bad tokens and signatures get 401."""
    host = mailhost
    (host.base / "token").write_text(TOKEN + "\n")
    (host.base / "hook").write_text(HOOK_SECRET + "\n")
    configure(host, api={"token_file": str(host.base / "token"), "webhook_secret_file": str(host.base / "hook")})
    before = host.fingerprint()
    notify = NotifySocket()
    agent = RunningAgent(host, "--dry-run", env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
    try:
        wait_for(lambda: agent.status()["pending_changes"] > 0, 20, "a pending plan", agent)
        status = agent.status()
        assert status["state"] == "out_of_sync" and status["dry_run"]
        diff = json.loads(agent.get("/diff")[1])
        assert diff["revision"] == status["head_revision"]
        assert any(c["target"] == "main.cf" for c in diff["changes"])
        assert RELAY_SECRET not in json.dumps(diff)

        assert agent.request("POST", "/sync")[0] == 401
        assert agent.request("POST", "/sync", headers={"Authorization": "Bearer wrong-token"})[0] == 401
        assert agent.request("POST", "/sync", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 202
        body = b'{"ref": "refs/heads/main"}'
        good = "sha256=" + hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        bad = "sha256=" + hmac.new(b"not-the-secret", body, hashlib.sha256).hexdigest()
        assert agent.request("POST", "/hooks/git", body)[0] == 401
        assert agent.request("POST", "/hooks/git", body, {"X-Hub-Signature-256": bad})[0] == 401
        assert agent.request("POST", "/hooks/git", body, {"X-Hub-Signature-256": good})[0] == 202
        assert agent.request("POST", "/hooks/git", body, {"X-Gitlab-Token": "nope-nope"})[0] == 401
        assert agent.request("POST", "/hooks/git", body, {"X-Gitlab-Token": HOOK_SECRET})[0] == 202
        # The agent answers 413 from the declared length and closes without reading the body, so
        # the client sends only the headers (sending the body races with the close: EPIPE).
        conn = http.client.HTTPConnection(agent.url.removeprefix("http://"), timeout=10)
        conn.putrequest("POST", "/hooks/git")
        conn.putheader("Content-Length", str(1024 * 1024 + 1))
        conn.putheader("X-Gitlab-Token", HOOK_SECRET)
        conn.endheaders()
        assert conn.getresponse().status == 413
        conn.close()
        code, doc = agent.get("/openapi.json")
        assert code == 200 and "/hooks/git" in json.loads(doc)["paths"]

        host.add_mailbox("dry@example.net")
        rev = host.commit("still a dry run")
        agent.wait_state("out_of_sync", 5, rev)
        time.sleep(1.2)  # a row check later, still nothing applied
        assert host.fingerprint() == before
        everything = json.dumps(agent.status()) + "".join(agent.stderr)
        assert TOKEN not in everything and HOOK_SECRET not in everything
    finally:
        assert agent.stop(signal.SIGINT) == 0
    assert not (host.state / "history.json").exists()
    messages = notify.close()
    assert "READY=1" in messages and "WATCHDOG=1" in messages and "STOPPING=1" in messages
    assert any(m.startswith("STATUS=out_of_sync") for m in messages)


def test_non_loopback_listen_without_token_is_refused(mailhost: MailHost) -> None:
    """`reconciler run` refuses to listen on a non-loopback address without a token file (exit 2)."""
    configure(mailhost, api={"listen": "0.0.0.0:9"})
    res = mailhost.cli("run")
    assert res.returncode == 2
    assert "non-loopback" in res.stderr


# -- units ------------------------------------------------------------------------------------------


def test_triggers_coalesce_and_debounce() -> None:
    """Many requests of a reason while the loop is busy come out as one; a debounced one waits for quiet."""
    t = Triggers()
    for _ in range(100):
        t.request(Reason.REF)
    t.request(Reason.SYNC)
    assert t.wait(0) == {Reason.REF, Reason.SYNC}
    assert t.wait(0) == set()
    t.request(Reason.DRIFT_FILE, debounce=0.2)
    assert t.wait(0.05) == set()
    assert t.wait(1) == {Reason.DRIFT_FILE}
    t.schedule(Reason.DRIFT_TIMER, 30)
    started = time.monotonic()
    threading.Timer(0.1, t.stop).start()
    assert t.wait() == set() and time.monotonic() - started < 5


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    """Retry delays double per failure within [ceiling/2, ceiling] and never exceed the cap."""
    rng = random.Random(4)
    for failures in range(1, 12):
        ceiling = min(BACKOFF_MAX, 2 ** (failures - 1))
        delays = [backoff(failures, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert statistics.pstdev(delays) > 0


def test_webhook_and_token_checks() -> None:
    """GitHub HMAC and GitLab token checks accept exactly the right credential."""
    body = b'{"ref":"refs/heads/main"}'
    sig = "sha256=" + hmac.new(b"s3cret-key", body, hashlib.sha256).hexdigest()
    assert webhook_ok(body, "s3cret-key", github_signature=sig, gitlab_token=None)
    assert not webhook_ok(body + b" ", "s3cret-key", github_signature=sig, gitlab_token=None)
    assert not webhook_ok(body, "s3cret-key", github_signature="sha1=abc", gitlab_token=None)
    assert webhook_ok(body, "s3cret-key", github_signature=None, gitlab_token="s3cret-key")
    assert not webhook_ok(body, "s3cret-key", github_signature=None, gitlab_token=None)
    assert bearer_ok("Bearer tok-12345678", "tok-12345678")
    assert not bearer_ok("Basic tok-12345678", "tok-12345678")
    assert not bearer_ok(None, "tok-12345678")


def test_listen_policy() -> None:
    """Listen addresses parse, loopback is recognised, and a public address needs a token."""
    assert parse_listen("127.0.0.1:9480") == ("127.0.0.1", 9480)
    assert parse_listen("[::1]:9480") == ("::1", 9480)
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("mail.example.org")  # noqa: S104
    with pytest.raises(ListenError):
        parse_listen("9480")
    with pytest.raises(ListenError, match="non-loopback"):
        bind("0.0.0.0:9", has_token=False)
    bind("127.0.0.1:0", has_token=False).close()


def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-C", str(repo), "-c", "user.name=T", "-c", "user.email=t@example.net", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def test_ref_watcher_sees_loose_and_packed_refs(tmp_path: Path) -> None:
    """The watcher fires for a commit (loose ref), for git pack-refs, and not for other branches."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    _git(repo, "commit", "-q", "--allow-empty", "-m", "one")
    fired = threading.Event()
    watcher = RefWatcher(repo, "main", fired.set)
    watcher.start()
    try:
        _git(repo, "branch", "other")
        time.sleep(0.3)
        assert not fired.is_set()
        _git(repo, "commit", "-q", "--allow-empty", "-m", "two")
        assert fired.wait(2)
        fired.clear()
        _git(repo, "pack-refs", "--all")
        assert fired.wait(2)
    finally:
        watcher.stop()


def test_mirror_fetches_a_remote_branch(tmp_path: Path) -> None:
    """A remote source is fetched into a bare mirror; credentials in the URL never reach its config."""
    origin = tmp_path / "origin"
    subprocess.run(["git", "init", "-q", "-b", "main", str(origin)], check=True)
    _git(origin, "commit", "-q", "--allow-empty", "-m", "one")
    mirror = Mirror(tmp_path / "state" / "mirror.git", str(origin), "main")
    assert mirror.fetch() == _git(origin, "rev-parse", "HEAD")
    _git(origin, "commit", "-q", "--allow-empty", "-m", "two")
    assert mirror.fetch() == _git(origin, "rev-parse", "HEAD")
    assert pygit2.Repository(str(mirror.path)).is_bare
    assert is_remote("https://git.example.net/x.git") and is_remote("git@host:x.git")
    assert not is_remote("/srv/git/x.git") and not is_remote("file:///srv/git/x.git")
    assert public_url("https://user:pw@git.example.net/x.git") == "https://git.example.net/x.git"
    with pytest.raises(Exception, match="fetch of"):
        Mirror(tmp_path / "m2.git", str(tmp_path / "missing"), "main").fetch()


def test_example_config_is_valid() -> None:
    """deploy/config.example.toml is a valid agent configuration with the documented defaults."""
    cfg = load_config(Path(__file__).resolve().parent.parent / "deploy" / "config.example.toml")
    assert cfg == AgentConfig()


def test_redactor_masks_every_secret(tmp_path: Path) -> None:
    """Values of the secrets dir, the MySQL password and the API credentials are masked in error texts."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "relay").write_text("relay-value-1\n")
    (tmp_path / "pw").write_text("db-password-2\n")
    (tmp_path / "tok").write_text("api-token-3\n")
    cfg = AgentConfig.model_validate(
        {
            "secrets": {"dir": str(secrets)},
            "mysql": {"password_file": str(tmp_path / "pw")},
            "api": {"token_file": str(tmp_path / "tok")},
        }
    )
    text = Redactor(cfg)("a relay-value-1 b db-password-2 c api-token-3")
    assert text == f"a {MASK} b {MASK} c {MASK}"


@pytest.mark.skipif(not os.environ.get("RECONCILER_MEASURE"), reason="measurement, run with RECONCILER_MEASURE=1")
def test_measure_push_to_live_latency_and_idle_cpu(agent_host: MailHost) -> None:
    """Push-to-live latency over 10 pushes and the agent's idle CPU over 30 s (printed; run with -s)."""
    host = agent_host
    text = host.config.read_text().replace("drift_check_interval = 1", "drift_check_interval = 60")
    host.config.write_text(text)
    agent = RunningAgent(host)
    try:
        agent.wait_state("synced", 20)
        latencies = []
        for i in range(10):
            host.add_mailbox(f"lat{i}@example.net")
            host.commit(f"latency {i}")
            t0 = time.monotonic()
            while host.rcpt(f"lat{i}@example.net") != 250:
                assert time.monotonic() - t0 < 10
                time.sleep(0.01)
            latencies.append(time.monotonic() - t0)
            agent.wait_state("synced", 5)
            time.sleep(0.3)
        time.sleep(2)
        stat = Path(f"/proc/{agent.proc.pid}/stat")
        tick = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick

        c0, t0 = cpu(), time.monotonic()
        time.sleep(30)
        idle = (cpu() - c0) / (time.monotonic() - t0)
        print(
            f"\npush-to-live: median {statistics.median(latencies) * 1000:.0f} ms, "
            f"max {max(latencies) * 1000:.0f} ms, all {[round(x * 1000) for x in latencies]}; "
            f"idle CPU {idle * 100:.3f} % over 30 s",
            file=sys.stderr,
        )
    finally:
        agent.stop()


def _password_of(host: MailHost, email: str) -> str:
    return next(row[1] for row in host.rows_fingerprint()["virtual_users"] if row[0] == email)


def test_full_row_scan_every_full_scan_interval(mailhost: MailHost) -> None:
    """Row checks trust the trigger-kept digests between full scans; a full scan catches a write that bypassed them.

    An UPDATE with the triggers idled keeps every count and stored digest: the 1 s row checks do
    not see it until the next full scan (here: the next agent's first check), which reverts it.
    """
    host = mailhost
    configure(host, policy={"full_scan_interval": 3600})
    agent = RunningAgent(host)
    try:
        agent.wait_state("synced", 20, host.git("rev-parse", "HEAD"))
        wait_for(
            lambda: any(e.get("event") == "drift.full_scan" for e in agent.log()), 10, "the first full scan", agent
        )
        good = _password_of(host, "john@example.org")
        conn = host.db.root_connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SET @reconciler_digest_off = 1")
                cur.execute(
                    "UPDATE mailserver.virtual_users SET password = %s WHERE email = %s",
                    ("{BLF-CRYPT}$2y$05$bypassedbypassedbypassedbypassedbypassedbypassedbyp", "john@example.org"),
                )
            conn.commit()
        finally:
            conn.close()
        time.sleep(3.5)  # three row checks on the stored digests
        assert _password_of(host, "john@example.org") != good
        assert sum(e.get("event") == "drift.full_scan" for e in agent.log()) == 1
    finally:
        assert agent.stop() == 0
    agent = RunningAgent(host)
    try:
        wait_for(lambda: _password_of(host, "john@example.org") == good, 10, "the bypassing write reverted", agent)
    finally:
        assert agent.stop() == 0
