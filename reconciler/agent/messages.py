"""What the notifier sends: webhook events, commit statuses, and each forge's request for one.

Used by ``notify.Notifier`` (the queues and sending threads of ``[notify]``), which builds a
request from the files read at send time. Nothing here sends or queues; only ``read_secret_file``
touches the filesystem.

Forges (each one's documented REST API for commit statuses):

- GitHub: ``POST {api}/repos/{owner}/{repo}/statuses/{sha}``, ``Authorization: Bearer <token>``,
  JSON ``state`` (pending, success, failure, error), ``context``, ``description``, ``target_url``;
- GitLab: ``POST {api}/projects/{id}/statuses/{sha}`` (the id or the URL-encoded path),
  ``PRIVATE-TOKEN: <token>``, JSON ``state`` (pending, success, failed), ``name``, ``description``,
  ``target_url``;
- Gitea: ``POST {api}/repos/{owner}/{repo}/statuses/{sha}``, ``Authorization: token <token>``,
  JSON ``state`` (pending, success, failure, error), ``context``, ``description``, ``target_url``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.parse
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from reconciler.models import AgentConfig
from reconciler.status import Attempt, AttemptResult

DESCRIPTION_MAX = 140  # GitHub's limit for a status description; the others accept it too
WEBHOOK_RESULTS = frozenset({AttemptResult.APPLIED, AttemptResult.REJECTED, AttemptResult.FAILED, AttemptResult.ERROR})


class Forge(StrEnum):
    """The forges whose commit status API is supported."""

    GITHUB = "github"
    GITLAB = "gitlab"
    GITEA = "gitea"


class Channel(StrEnum):
    """Where a notification goes; each has its own queue and sending thread."""

    WEBHOOK = "webhook"
    STATUS = "status"


class CommitState(StrEnum):
    """A commit status in the reconciler's words; each forge has its own (``FORGE_STATES``)."""

    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"  # rejected, or failed and rolled back
    ERROR = "error"  # a temporary error; the agent retries


FORGE_STATES: dict[Forge, dict[CommitState, str]] = {
    Forge.GITHUB: {s: s.value for s in CommitState},
    Forge.GITEA: {s: s.value for s in CommitState},
    # GitLab has no "error": a temporary error shows as failed until a retry succeeds.
    Forge.GITLAB: {
        CommitState.PENDING: "pending",
        CommitState.SUCCESS: "success",
        CommitState.FAILURE: "failed",
        CommitState.ERROR: "failed",
    },
}


def status_page_url(cfg: AgentConfig) -> str:
    """``[notify].status_url``, else the API's own address (``http://[api].listen/``)."""
    return cfg.notify.status_url or f"http://{cfg.api.listen}/"


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Signature`` header value: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def read_secret_file(path: str) -> bytes:
    """A token or secret from its file, without the trailing newline (raises ``OSError``)."""
    return Path(path).read_bytes().rstrip(b"\r\n")


def webhook_event(host: str, attempt: Attempt) -> dict[str, Any]:
    """The JSON event of SPEC 3 for one attempt."""
    return {
        "host": host,
        "revision": attempt.revision,
        "subject": attempt.subject,
        "author": attempt.author,
        "trigger": attempt.trigger,
        "result": attempt.result.value,
        "failed_step": attempt.failed_step,
        "error": attempt.error,
        "changes": attempt.changes,
        "started_at": attempt.started_at.isoformat(),
        "finished_at": attempt.finished_at.isoformat(),
    }


def commit_state(attempt: Attempt) -> CommitState | None:
    """The commit status an attempt ends with; None when it says nothing about its revision."""
    if attempt.result in (AttemptResult.APPLIED, AttemptResult.NO_CHANGE):
        return CommitState.SUCCESS
    if attempt.result in (AttemptResult.REJECTED, AttemptResult.FAILED):
        return CommitState.FAILURE
    if attempt.result is AttemptResult.ERROR:
        return CommitState.ERROR
    return None  # planned: a dry run applies nothing


def describe(attempt: Attempt) -> str:
    """A commit status description: what happened, and for a failure the step and the error."""
    if attempt.result is AttemptResult.APPLIED:
        text = f"applied {attempt.changes} change(s) in {attempt.duration:.1f} s"
    elif attempt.result is AttemptResult.NO_CHANGE:
        text = "in sync: nothing to change"
    elif attempt.result is AttemptResult.REJECTED:
        text = f"rejected at {attempt.failed_step or 'validate'}: {attempt.error or ''}"
    elif attempt.result is AttemptResult.FAILED:
        text = f"failed at {attempt.failed_step or 'apply'}, rolled back: {attempt.error or ''}"
    else:
        text = f"error, retrying: {attempt.error or ''}"
    return text


def _clip(text: str, limit: int = DESCRIPTION_MAX) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Request:
    """One HTTP request to send (in-memory); ``what`` names it in logs, never its content."""

    what: str
    url: str
    headers: dict[str, str]
    body: bytes


def commit_status_request(
    forge: Forge,
    api_url: str,
    repository: str,
    token: str,
    sha: str,
    state: CommitState,
    context: str,
    description: str,
    target_url: str,
) -> Request:
    """The request that sets ``context``'s status of commit ``sha`` on ``forge`` (see the module docstring)."""
    base = api_url.rstrip("/")
    word = FORGE_STATES[forge][state]
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    body: dict[str, str] = {"state": word, "description": _clip(description), "target_url": target_url}
    if forge is Forge.GITLAB:
        url = f"{base}/projects/{urllib.parse.quote(repository, safe='')}/statuses/{sha}"
        headers["PRIVATE-TOKEN"] = token
        body["name"] = context
    else:
        url = f"{base}/repos/{urllib.parse.quote(repository, safe='/')}/statuses/{sha}"
        body["context"] = context
        if forge is Forge.GITHUB:
            headers["Authorization"] = f"Bearer {token}"
            headers["Accept"] = "application/vnd.github+json"
            headers["X-GitHub-Api-Version"] = "2022-11-28"
        else:
            headers["Authorization"] = f"token {token}"
    return Request(f"{forge.value} status {word}", url, headers, json.dumps(body).encode())
