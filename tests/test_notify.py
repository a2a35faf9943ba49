"""[notify]: webhook events and commit statuses, received by a local HTTP server on 127.0.0.1.

The receiver stands in for the forge's API and for the webhook consumer (no forge can exist
here). The end-to-end tests run ``reconciler run`` on a real private Postfix and MariaDB and check
that the requests have each forge's documented shape, that the HMAC verifies, that a rolled-back
apply reports failure with its step, and that a receiver that is down delays no apply. The unit
tests drive the ``Notifier`` directly.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mailhost import RELAY_SECRET, MailHost
from test_agent import RunningAgent, configure, wait_for

from harness.common import free_port
from reconciler.agent.metrics import NotifyResult
from reconciler.agent.notify import Channel, CommitState, Forge, Notifier, commit_status_request
from reconciler.agent.redact import MASK, Redactor
from reconciler.models import AgentConfig
from reconciler.status import Attempt, AttemptResult

FORGE_TOKEN = "forge-Token-5d1e0c9a"
EVENT_SECRET = "event-Secret-77aa01"
EVENT_KEYS = {
    "host", "revision", "subject", "author", "trigger", "result", "failed_step", "error", "changes",
    "started_at", "finished_at",
}  # fmt: skip
HOST = "mx-notify"  # [host].name: the context is reconciler/<host>


@dataclass(frozen=True)
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A threaded HTTP server on 127.0.0.1 recording every request; answers 201, or in turn the codes
    ``answers`` lists for the first path prefix that the request's path starts with.

    With ``hold`` set, every request waits for ``release()`` before it is answered (a receiver that
    accepts connections and then hangs).
    """

    def __init__(self, answers: dict[str, list[int]] | None = None, *, hold: bool = False) -> None:
        self.requests: list[Received] = []
        self.answers = {prefix: list(codes) for prefix, codes in (answers or {}).items()}
        self.released = threading.Event()
        if not hold:
            self.released.set()
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer.lock:
                    outer.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    codes = next((c for p, c in outer.answers.items() if self.path.startswith(p)), [])
                    code = codes.pop(0) if codes else 201
                outer.released.wait(60)
                self.send_response(code)
                if 300 <= code < 400:
                    self.send_header("Location", f"{outer.url}/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST  # a followed redirect would come back as a GET: recorded too

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def got(self, path_pattern: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if re.fullmatch(path_pattern, r.path)]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver answering 201 to everything."""
    r = Receiver()
    yield r
    r.close()


def _secret_file(path: Path, value: str) -> str:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


def _notify(host: MailHost, tmp_path: Path, receiver_url: str, forge: str, **extra: str) -> dict[str, str]:
    return {
        "webhook_url": f"{receiver_url}/events",
        "webhook_secret_file": _secret_file(tmp_path / "event-secret", EVENT_SECRET),
        "commit_status": forge,
        "api_url": f"{receiver_url}/api/v1",
        "repository": "ops/mail-config",
        "token_file": _secret_file(tmp_path / "forge-token", FORGE_TOKEN),
        **extra,
    }


def _name(host: MailHost) -> None:
    """Give the host its [host].name, the <host> of the context reconciler/<host>."""
    host.config.write_text(host.config.read_text() + f'\n[host]\nname = "{HOST}"\n')


def _no_secret_in(requests: list[Received], host: MailHost) -> None:
    secrets = [RELAY_SECRET, FORGE_TOKEN, EVENT_SECRET, host.db.reconciler_password]
    for r in requests:
        for secret in secrets:
            assert secret.encode() not in r.body, (r.path, secret)


def _verify_event(r: Received) -> dict[str, Any]:
    expected = "sha256=" + hmac.new(EVENT_SECRET.encode(), r.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(r.headers["x-signature"], expected)
    event = r.json()
    assert set(event) == EVENT_KEYS
    return event  # type: ignore[no-any-return]


def test_github_statuses_and_signed_webhook_for_an_apply(
    mailhost: MailHost, tmp_path: Path, receiver: Receiver
) -> None:
    """An apply sets the GitHub status pending then success with an HMAC-signed 'applied' event; a rejected push, failure."""
    host = mailhost
    configure(host, notify=_notify(host, tmp_path, receiver.url, "github", status_url="https://status.example.net/mx"))
    _name(host)
    sha = host.git("rev-parse", "HEAD")
    agent = RunningAgent(host)
    try:
        agent.wait_state("synced", revision=sha)
        statuses = f"/api/v1/repos/ops/mail-config/statuses/{sha}"
        wait_for(
            lambda: len(receiver.got(statuses)) == 2 and len(receiver.got("/events")) == 1, 10, "3 requests", agent
        )
        pending, success = receiver.got(statuses)
        for r in (pending, success):
            assert r.headers["authorization"] == f"Bearer {FORGE_TOKEN}"
            assert r.headers["accept"] == "application/vnd.github+json"
            assert r.headers["content-type"] == "application/json"
            body = r.json()
            assert set(body) == {"state", "context", "description", "target_url"}
            assert body["context"] == f"reconciler/{HOST}"
            assert body["target_url"] == "https://status.example.net/mx"
            assert len(body["description"]) <= 140
        assert pending.json()["state"] == "pending" and success.json()["state"] == "success"
        assert success.json()["description"].startswith("applied ")
        event = _verify_event(receiver.got("/events")[0])
        assert event["result"] == "applied" and event["revision"] == sha and event["host"] == HOST
        assert event["subject"] == "initial revision" and event["trigger"] == "start" and event["changes"] > 0
        assert event["error"] is None and event["failed_step"] is None
        _, metrics = agent.get("/metrics")
        assert b'reconciler_notifications_total{result="sent"} 3.0' in metrics
        # A rejected revision: no pending (nothing was applied), failure with the validation error.
        host.edit("postfix/main.cf", lambda t: t + "smtpd_tls_security_levle = may\n")
        bad = host.commit("typo")
        agent.wait_state("failed", revision=bad)
        bad_statuses = f"/api/v1/repos/ops/mail-config/statuses/{bad}"
        wait_for(
            lambda: len(receiver.got(bad_statuses)) == 1 and len(receiver.got("/events")) == 2, 10, "2 more", agent
        )
        (failure,) = receiver.got(bad_statuses)
        assert failure.json()["state"] == "failure"
        assert failure.json()["description"].startswith(
            "rejected at validate: 1 problem(s) in revision: postfix/main.cf:"
        )
        event = _verify_event(receiver.got("/events")[1])
        assert event["result"] == "rejected" and event["revision"] == bad and event["failed_step"] == "validate"
        assert "smtpd_tls_security_levle" in event["error"] and event["trigger"] == "ref"
        _no_secret_in(receiver.requests, host)
    finally:
        agent.stop()


def test_rolled_back_apply_reports_failure_with_its_step(
    mailhost: MailHost, tmp_path: Path, receiver: Receiver
) -> None:
    """A rolled-back apply sets GitLab's status 'failed' naming the step, and the event carries failed_step."""
    host = mailhost
    configure(host, notify=_notify(host, tmp_path, receiver.url, "gitlab"))  # no [host].name: the short hostname
    sha = host.git("rev-parse", "HEAD")
    agent = RunningAgent(host, env={"RECONCILER_TEST_FAIL_AT": "check"})
    try:
        agent.wait_state("failed", revision=sha)
        statuses = f"/api/v1/projects/ops%2Fmail-config/statuses/{sha}"
        wait_for(
            lambda: len(receiver.got(statuses)) == 2 and len(receiver.got("/events")) == 1, 10, "3 requests", agent
        )
        pending, failed = receiver.got(statuses)
        for r in (pending, failed):
            assert r.headers["private-token"] == FORGE_TOKEN
            assert "authorization" not in r.headers
            assert set(r.json()) == {"state", "name", "description", "target_url"}
            assert r.json()["name"] == f"reconciler/{socket.gethostname().split('.')[0].lower()}"
            assert r.json()["target_url"] == f"http://127.0.0.1:{host.api_port}/"  # type: ignore[attr-defined]
        assert pending.json()["state"] == "pending" and failed.json()["state"] == "failed"
        assert failed.json()["description"].startswith("failed at check, rolled back: ")
        event = _verify_event(receiver.got("/events")[0])
        assert event["result"] == "failed" and event["failed_step"] == "check" and "injected fault" in event["error"]
        _no_secret_in(receiver.requests, host)
    finally:
        agent.stop()


def test_receiver_down_delays_no_apply(mailhost: MailHost, tmp_path: Path) -> None:
    """With the forge hanging and the webhook port closed the apply completes; statuses follow on release."""
    host = mailhost
    hanging = Receiver(hold=True)
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        notify = _notify(host, tmp_path, hanging.url, "gitea")
        notify["webhook_url"] = f"{dead}/events"
        configure(host, notify=notify)
        _name(host)
        sha = host.git("rev-parse", "HEAD")
        agent = RunningAgent(host)
        try:
            status = agent.wait_state("synced", revision=sha)
            assert status["last_attempt"]["result"] == "applied"
            assert host.rcpt("john@example.org") == 250
            # The apply finished while the forge still holds the first request unanswered.
            assert hanging.requests and not hanging.released.is_set()
            hanging.release()
            statuses = f"/api/v1/repos/ops/mail-config/statuses/{sha}"
            wait_for(lambda: hanging.got(statuses)[-1].json()["state"] == "success", 15, "the success status", agent)
            # The held request may have timed out on the agent's side and been sent again.
            pending, success = hanging.got(statuses)[0], hanging.got(statuses)[-1]
            assert pending.headers["authorization"] == f"token {FORGE_TOKEN}"
            assert [pending.json()["state"], success.json()["state"]] == ["pending", "success"]
            assert set(success.json()) == {"state", "context", "description", "target_url"}
            assert success.json()["context"] == f"reconciler/{HOST}"

            def retried() -> bool:
                return b'reconciler_notifications_total{result="retried"} 0.0' not in agent.get("/metrics")[1]

            wait_for(retried, 10, "a retry of the webhook to the closed port", agent)
        finally:
            agent.stop()
    finally:
        hanging.close()


# -- units ---------------------------------------------------------------------------------------


def _attempt(result: AttemptResult, **fields: Any) -> Attempt:
    now = datetime.now(UTC)
    base: dict[str, Any] = {
        "revision": "c0ffee" * 6 + "abcd", "started_at": now, "finished_at": now, "duration": 0.5,
        "subject": "change", "author": "A <a@example.net>", "trigger": "ref", "changes": 2,
    }  # fmt: skip
    return Attempt(result=result, **{**base, **fields})


@pytest.mark.parametrize(
    ("forge", "path", "auth", "words"),
    [
        (
            Forge.GITHUB,
            "/repos/o/r/statuses/abc",
            ("Authorization", "Bearer T"),
            ["pending", "success", "failure", "error"],
        ),
        (
            Forge.GITLAB,
            "/projects/o%2Fr/statuses/abc",
            ("PRIVATE-TOKEN", "T"),
            ["pending", "success", "failed", "failed"],
        ),
        (
            Forge.GITEA,
            "/repos/o/r/statuses/abc",
            ("Authorization", "token T"),
            ["pending", "success", "failure", "error"],
        ),
    ],
)
def test_commit_status_request_shapes(forge: Forge, path: str, auth: tuple[str, str], words: list[str]) -> None:
    """Each forge gets its documented path, auth header, field names and state words."""
    states = [CommitState.PENDING, CommitState.SUCCESS, CommitState.FAILURE, CommitState.ERROR]
    for state, word in zip(states, words, strict=True):
        r = commit_status_request(
            forge, "https://api.x/v4/", "o/r", "T", "abc", state, "reconciler/mx1", "d" * 200, "u"
        )
        assert r.url == "https://api.x/v4" + path
        assert r.headers[auth[0]] == auth[1]
        body = json.loads(r.body)
        assert body["state"] == word and len(body["description"]) == 140
        assert body["name" if forge is Forge.GITLAB else "context"] == "reconciler/mx1"


def _notifier(tmp_path: Path, url: str, **kw: Any) -> tuple[Notifier, dict[NotifyResult, int], AgentConfig]:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    _secret_file(secrets / "relay", RELAY_SECRET)
    cfg = AgentConfig.model_validate(
        {
            "secrets": {"dir": str(secrets)},
            "mysql": {"password_file": str(tmp_path / "none")},
            "notify": {
                "webhook_url": f"{url}/events",
                "webhook_secret_file": _secret_file(tmp_path / "event-secret", EVENT_SECRET),
                "commit_status": "github",
                "api_url": url,
                "repository": "o/r",
                "token_file": _secret_file(tmp_path / "token", FORGE_TOKEN),
            },
        }
    )
    counts: dict[NotifyResult, int] = dict.fromkeys(NotifyResult, 0)

    def count(result: NotifyResult) -> None:
        counts[result] += 1

    return Notifier(cfg, redact=Redactor(cfg), count=count, host="mx1", **kw), counts, cfg


def test_retries_with_backoff_until_the_receiver_answers(tmp_path: Path) -> None:
    """503 and 429 are retried with backoff until a 2xx; a 401 or a redirect is given up at once."""
    r = Receiver({"/events": [503, 429], "/repos/": [401, 302]})
    try:
        notifier, counts, _ = _notifier(tmp_path, r.url, backoff_base=0.01)
        notifier.start()
        notifier.attempt_finished(_attempt(AttemptResult.REJECTED, error="bad", failed_step="validate"))
        assert notifier.wait_idle(10)
        assert counts[NotifyResult.RETRIED] == 2 and counts[NotifyResult.SENT] == 1
        assert counts[NotifyResult.FAILED] == 1  # the commit status got the 401
        assert len(r.got("/events")) == 3 and len(r.got("/repos/o/r/statuses/" + "c0ffee" * 6 + "abcd")) == 1
        notifier.apply_started("b" * 40)  # answered with a redirect, which is not followed (the token stays here)
        assert notifier.wait_idle(10)
        assert counts[NotifyResult.FAILED] == 2 and not r.got("/elsewhere")
        notifier.close()
    finally:
        r.close()


def test_full_queue_drops_without_blocking(tmp_path: Path) -> None:
    """A full queue drops new notifications (counted) instead of blocking the agent."""
    notifier, counts, _ = _notifier(tmp_path, "http://127.0.0.1:9", queue_size=2)
    for _ in range(3):
        notifier.attempt_finished(_attempt(AttemptResult.FAILED, error="x", failed_step="check"))
    assert counts[NotifyResult.DROPPED] == 2  # 3 events and 3 statuses into two queues of 2


def test_secrets_are_scrubbed_from_every_field(tmp_path: Path, receiver: Receiver) -> None:
    """A secret's value in the error, subject or author never leaves the host: the fields carry the mask."""
    notifier, _, _ = _notifier(tmp_path, receiver.url)
    notifier.start()
    leaky = f"relay password {RELAY_SECRET} refused"
    notifier.attempt_finished(
        _attempt(AttemptResult.FAILED, error=leaky, failed_step="service", subject=leaky, author=leaky)
    )
    assert notifier.wait_idle(10)
    notifier.close()
    assert len(receiver.requests) == 2
    for r in receiver.requests:
        assert RELAY_SECRET.encode() not in r.body and MASK.encode() in r.body
    event = receiver.got("/events")[0].json()
    assert event["error"] == event["subject"] == event["author"] == f"relay password {MASK} refused"


def test_drift_revert_and_repeated_success_set_no_new_status(tmp_path: Path) -> None:
    """A drift revert sends its event but no pending, and a revision already marked success is not marked again."""
    notifier, _, _ = _notifier(tmp_path, "http://127.0.0.1:9", queue_size=100)
    notifier.apply_started("a" * 40)
    notifier.attempt_finished(_attempt(AttemptResult.APPLIED, revision="a" * 40))
    assert (notifier._queues[Channel.STATUS].qsize(), notifier._queues[Channel.WEBHOOK].qsize()) == (2, 1)
    notifier.apply_started("a" * 40, drift=True)
    notifier.attempt_finished(_attempt(AttemptResult.APPLIED, revision="a" * 40, trigger="drift_file"))
    assert (notifier._queues[Channel.STATUS].qsize(), notifier._queues[Channel.WEBHOOK].qsize()) == (2, 2)


def test_commit_status_needs_api_url_repository_and_token(tmp_path: Path) -> None:
    """commit_status without its keys, or a non-http webhook_url, is a configuration error naming them."""
    with pytest.raises(ValueError, match="needs api_url, repository, token_file"):
        AgentConfig.model_validate({"notify": {"commit_status": "gitea"}})
    with pytest.raises(ValueError, match="webhook_url must be an http"):
        AgentConfig.model_validate({"notify": {"webhook_url": "file:///etc/passwd"}})
    with pytest.raises(ValueError, match="commit_status"):
        AgentConfig.model_validate({"notify": {"commit_status": "bitbucket"}})
