"""Notifications of ``[notify]`` (SPEC 3): a webhook event per attempt, and the commit status on the forge.

Called by the agent loop at two points only: ``apply_started`` when an apply of a revision begins
(the commit's status goes ``pending``) and ``attempt_finished`` with every attempt it records (a
webhook event for ``applied``, ``rejected``, ``failed`` and ``error``; the commit's status
``success``, or each forge's word for failure or error). Both only put a message on a bounded
queue and return: a background thread builds and sends the requests, with retries and backoff,
so a slow or dead receiver never delays or fails an apply. Webhook events and commit statuses have
a queue and a thread each, so one dead receiver does not hold up the other. A full queue drops the
new message (``reconciler_notifications_total{result="dropped"}``).

The token and the webhook secret are read from their files by the sending thread, on each send,
and every text field is scrubbed with the agent's ``Redactor`` before it leaves the host.

What is sent (events, statuses, each forge's request) is built by ``messages``.
"""

from __future__ import annotations

import contextlib
import json
import queue
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from reconciler import __version__
from reconciler.agent.messages import (
    WEBHOOK_RESULTS,
    Channel,
    CommitState,
    Forge,
    Request,
    commit_state,
    commit_status_request,
    describe,
    read_secret_file,
    sign,
    status_page_url,
    webhook_event,
)
from reconciler.agent.metrics import NotifyResult
from reconciler.models import AgentConfig
from reconciler.status import Attempt

log = structlog.get_logger("reconciler.agent.notify")

QUEUE_SIZE = 256
TRIES = 6  # per message: the first and five retries, 15 to 31 s of backoff in all with the defaults
BACKOFF_BASE = 1.0
BACKOFF_MAX = 30.0
TIMEOUT = 5.0  # seconds per request


@dataclass(frozen=True)
class _Message:
    """What the agent thread queues (in-memory): built into a ``Request`` by the sending thread."""

    kind: Channel
    revision: str | None
    event: dict[str, Any] = field(default_factory=dict)
    state: CommitState | None = None
    description: str = ""


class _Retry(Exception):
    pass


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: urllib would resend the token header to wherever they point."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class Notifier:
    """The queue and the sending thread (see the module docstring); inert when ``[notify]`` is empty."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        redact: Callable[[str | None], str | None],
        count: Callable[[NotifyResult], None],
        host: str | None = None,
        queue_size: int = QUEUE_SIZE,
        tries: int = TRIES,
        backoff_base: float = BACKOFF_BASE,
        timeout: float = TIMEOUT,
    ) -> None:
        self.cfg = cfg.notify
        self.host = host or cfg.host.resolved()  # [host].name, else the short hostname
        self.context = f"reconciler/{self.host}"
        self.target_url = status_page_url(cfg)
        self.forge = Forge(self.cfg.commit_status) if self.cfg.commit_status else None
        self.enabled = bool(self.cfg.webhook_url) or self.forge is not None
        self._redact = redact
        self._count = count
        # One queue and thread per kind: a dead webhook consumer does not hold up commit statuses
        # (nor the other way round), and each kind stays in order (pending before success).
        self._queues: dict[Channel, queue.Queue[_Message | None]] = {
            kind: queue.Queue(maxsize=queue_size) for kind in Channel
        }
        self._tries = max(1, tries)
        self._backoff_base = backoff_base
        self._timeout = timeout
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_state: OrderedDict[str, CommitState] = OrderedDict()  # sha -> last status queued

    # -- called by the agent loop (cheap, never blocks) ------------------------------------------

    def apply_started(self, revision: str | None, *, drift: bool = False) -> None:
        """An apply of ``revision`` begins: its commit goes ``pending`` (not for a drift revert)."""
        if self.forge is not None and revision and not drift:
            self._status(revision, CommitState.PENDING, "applying")

    def attempt_finished(self, attempt: Attempt) -> None:
        """An attempt was recorded: the webhook event, and the commit status of its revision."""
        if self.cfg.webhook_url and attempt.result in WEBHOOK_RESULTS:
            self._put(_Message(Channel.WEBHOOK, attempt.revision, event=webhook_event(self.host, attempt)))
        state = commit_state(attempt)
        if self.forge is not None and attempt.revision and state is not None:
            self._status(attempt.revision, state, describe(attempt))

    def _status(self, sha: str, state: CommitState, description: str) -> None:
        # A drift revert or a repeated check of a revision already marked success says nothing new.
        if state is CommitState.SUCCESS and self._last_state.get(sha) is CommitState.SUCCESS:
            return
        self._last_state[sha] = state
        self._last_state.move_to_end(sha)
        while len(self._last_state) > 64:
            self._last_state.popitem(last=False)
        self._put(_Message(Channel.STATUS, sha, state=state, description=description))

    def _put(self, message: _Message) -> None:
        try:
            self._queues[message.kind].put_nowait(message)
        except queue.Full:
            self._count(NotifyResult.DROPPED)
            log.warning(
                "notify.dropped", kind=message.kind.value, revision=(message.revision or "")[:12], reason="queue full"
            )

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the sending threads (daemons: they never hold the process up)."""
        if not self.enabled or self._threads:
            return
        for kind, q in self._queues.items():
            thread = threading.Thread(target=self._run, args=(q,), name=f"notify-{kind.value}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pending(self) -> int:
        return sum(q.unfinished_tasks for q in self._queues.values())

    def close(self, timeout: float = 3.0) -> None:
        """Send what is queued for up to ``timeout`` seconds, then stop; what is left is dropped."""
        if not self._threads:
            return
        self.wait_idle(timeout)
        self._stopping.set()
        for q in self._queues.values():
            with contextlib.suppress(queue.Full):
                q.put_nowait(None)
        for thread in self._threads:
            thread.join(0.5)
        self._threads = []

    def wait_idle(self, timeout: float) -> bool:
        """Whether everything queued was handled within ``timeout`` seconds (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while self._pending():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    # -- the sending threads ---------------------------------------------------------------------

    def _run(self, q: queue.Queue[_Message | None]) -> None:
        while True:
            message = q.get()
            try:
                if message is None:
                    return
                if self._stopping.is_set():
                    self._count(NotifyResult.DROPPED)
                    continue
                self._deliver(message)
            except Exception:  # a bug here must not end notifications for the agent's lifetime
                log.exception("notify.unexpected_error")
            finally:
                q.task_done()

    def _deliver(self, message: _Message) -> None:
        where = {"kind": message.kind.value, "revision": (message.revision or "")[:12]}
        try:
            request = self._build(message)
        except OSError as exc:
            self._count(NotifyResult.FAILED)
            log.warning("notify.failed", **where, error=self._redact(f"{type(exc).__name__}: {exc}"))
            return
        for attempt in range(1, self._tries + 1):
            try:
                status = self._send(request)
            except _Retry as exc:
                if attempt == self._tries or self._stopping.is_set():
                    self._count(NotifyResult.FAILED)
                    log.warning("notify.failed", **where, tries=attempt, error=self._redact(str(exc)))
                    return
                self._count(NotifyResult.RETRIED)
                delay = min(BACKOFF_MAX, self._backoff_base * 2 ** (attempt - 1))
                delay = random.uniform(delay / 2, delay)  # noqa: S311 - jitter, not cryptography
                log.info("notify.retry", **where, tries=attempt, retry_in=round(delay, 2), error=self._redact(str(exc)))
                if self._stopping.wait(delay):
                    self._count(NotifyResult.DROPPED)
                    return
                continue
            if 200 <= status < 300:
                self._count(NotifyResult.SENT)
                log.info("notify.sent", **where, what=request.what, http_status=status)
            else:
                self._count(NotifyResult.FAILED)
                log.warning("notify.refused", **where, what=request.what, http_status=status)
            return

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._redact(value)
        if isinstance(value, dict):
            return {k: self._scrub(v) for k, v in value.items()}
        return value

    def _build(self, message: _Message) -> Request:
        """The request for a message: scrubbed, signed or authenticated from the files read now."""
        if message.kind is Channel.WEBHOOK:
            body = json.dumps(self._scrub(message.event), ensure_ascii=False).encode()
            headers = {"Content-Type": "application/json", "User-Agent": f"postfix-reconciler/{__version__}"}
            if self.cfg.webhook_secret_file:
                headers["X-Signature"] = sign(read_secret_file(self.cfg.webhook_secret_file), body)
            return Request(f"webhook {message.event.get('result')}", self.cfg.webhook_url, headers, body)
        assert self.forge is not None and message.state is not None and message.revision  # noqa: S101 - by construction
        token = read_secret_file(self.cfg.token_file).decode("utf-8", "replace")
        request = commit_status_request(
            self.forge,
            self.cfg.api_url,
            self.cfg.repository,
            token,
            message.revision,
            message.state,
            self.context,
            self._redact(message.description) or "",
            self.target_url,
        )
        request.headers["User-Agent"] = f"postfix-reconciler/{__version__}"
        return request

    def _send(self, request: Request) -> int:
        """POST the request; the HTTP status (a redirect is a refusal), or ``_Retry`` for what is worth another try."""
        req = urllib.request.Request(request.url, data=request.body, method="POST", headers=request.headers)  # noqa: S310 - http(s) only (config check)
        try:
            with _OPENER.open(req, timeout=self._timeout) as resp:
                resp.read(64 * 1024)
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code == 429:
                raise _Retry(f"HTTP {exc.code}") from None
            return int(exc.code)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Retry(f"{type(exc).__name__}: {reason}") from None
