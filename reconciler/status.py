"""The status document of the agent (SPEC section 5): what ``GET /status`` and ``reconciler status`` show.

Low layer, pydantic models only (imports nothing of the pipeline). The agent builds a ``Status``
after every change of state and persists it with its attempt history in the state dir; the API
serves it; the CLI reads it back from either. ``schemas/status.schema.json`` is generated from
``Status``. Nothing here ever holds a secret's value: errors are scrubbed before they get here.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class AgentState(StrEnum):
    """Where the host stands relative to the branch head."""

    SYNCED = "synced"  # the live state is the branch head
    OUT_OF_SYNC = "out_of_sync"  # changes pending: dry run, or drift not reverted (self_heal = false)
    APPLYING = "applying"  # a reconcile is writing live state right now
    FAILED = "failed"  # the branch head was rejected or rolled back; waits for the branch to move
    DEGRADED = "degraded"  # a temporary error (database down, fetch failed) or a host fault (a secret
    # missing, see missing_secrets): retried with backoff, or when the host changes
    WAITING = "waiting"  # a fleet host holding the head until the hosts of lower waves have it (waiting_for)


class AttemptResult(StrEnum):
    """How one reconcile attempt ended."""

    APPLIED = "applied"  # live state changed to the revision
    NO_CHANGE = "no_change"  # the revision needed no change
    PLANNED = "planned"  # dry run: changes found, none applied
    REJECTED = "rejected"  # the revision failed a check before anything live changed
    FAILED = "failed"  # a step of the apply failed; everything was rolled back
    ERROR = "error"  # temporary or the host's fault: retried (backoff, or when the host changes)


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Attempt(_Doc):
    """One reconcile attempt (persisted in the state dir's history)."""

    revision: str | None = Field(description="the commit the attempt was for")
    result: AttemptResult
    error: str | None = Field(default=None, description="why it failed; secrets are masked")
    started_at: datetime
    finished_at: datetime
    duration: float = Field(description="seconds")
    failed_step: str | None = Field(default=None, description="the apply step that failed (prepare ... commit)")
    subject: str | None = Field(default=None, description="first line of the commit message")
    author: str | None = Field(default=None, description="commit author, 'Name <email>'")
    trigger: str = Field(default="", description="what started it: start, ref, poll, webhook, sync, drift, retry")
    changes: int = Field(default=0, description="number of changes planned (applied unless dry run or failed)")
    run_id: str = Field(default="", description="the id bound to every log line of this attempt")


class DriftItem(_Doc):
    """One live difference from the applied revision that the agent has not reverted."""

    kind: str = Field(description="file, table, row or service")
    action: str = Field(description="what an apply would do: create, update, delete, rebuild, reload, restart")
    target: str = Field(description="file name, table name, or table/key")


class HeadCommit(_Doc):
    """Subject, author and time of the branch head, read as soon as the head moves."""

    subject: str | None = Field(default=None, description="first line of the commit message")
    author: str | None = Field(default=None, description="commit author, 'Name <email>'")
    time: datetime | None = Field(default=None, description="the commit's author time")


class Status(_Doc):
    """The agent's status document (SPEC section 5)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="Postfix reconciler agent status",
        json_schema_extra={"$id": "https://postfix-reconciler.invalid/schemas/status.schema.json"},
    )

    state: AgentState
    head_revision: str | None = Field(default=None, description="the branch head as last read")
    head_commit: HeadCommit | None = Field(default=None, description="subject, author and time of head_revision")
    applied_revision: str | None = Field(default=None, description="the revision the live state was last synced to")
    last_attempt: Attempt | None = None
    drift: list[DriftItem] = Field(default_factory=list, description="pending changes of a synced revision")
    history: list[Attempt] = Field(default_factory=list, description="recent attempts, newest first")
    dry_run: bool = False
    self_heal: bool = True
    source: str = Field(default="", description="the source URL, without credentials")
    branch: str = ""
    pending_changes: int = Field(default=0, description="changes in the pending plan (GET /diff)")
    next_retry_at: datetime | None = Field(default=None, description="when a degraded agent tries again")
    missing_secrets: list[str] = Field(
        default_factory=list,
        description="secrets of [secrets].dir the head waits for (missing or unsafe); it applies once they are fixed",
    )
    updated_at: datetime | None = None
    host: str = Field(default="", description="this host's name in the fleet ([host].name)")
    waiting_for: list[str] = Field(
        default_factory=list, description="state waiting: the lower-wave hosts this host waits for"
    )
    waiting_reason: str | None = Field(default=None, description="state waiting: why, in words")


class FleetHost(_Doc):
    """One host of the fleet as its ``reconciler_hosts`` row says (an element of ``GET /fleet``)."""

    name: str
    wave: int
    applied_revision: str | None = Field(description="the revision the host's files are at")
    state: str = Field(description="the host's agent state as it last reported it")
    last_seen: datetime = Field(description="when the host last reported (UTC)")
    error: str | None = Field(default=None, description="the host's last error, if any")
    head_revision: str | None = Field(default=None, description="the branch head as the host last read it")
    failed_revision: str | None = Field(default=None, description="the revision that failed on this host")
    waiting_for: list[str] = Field(default_factory=list, description="state waiting: the hosts it waits for")
    stale: bool = Field(default=False, description="not seen for [fleet].host_timeout: it no longer holds later waves")


class Fleet(_Doc):
    """``GET /fleet`` and ``reconciler status --fleet --format json``: every host of the fleet."""

    hosts: list[FleetHost] = Field(default_factory=list)
