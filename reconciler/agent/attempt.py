"""What one attempt is about (``Run``, which builds its ``Attempt`` record) and the plan's figures it records.

Used by the reconcile attempt (``reconcile``) and the state it updates (``book``): the run id and
trigger name, the drift items and change count of a plan (the service action is a consequence, not
drift), and the empty plan shown when in sync.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reconciler.agent.triggers import Reason
from reconciler.plan import Kind, Plan
from reconciler.status import Attempt, AttemptResult, DriftItem


def now() -> datetime:
    return datetime.now(UTC)


def drift_items(plan: Plan) -> list[DriftItem]:
    """The changes of a plan as drift items (the service action is a consequence, not drift)."""
    return [
        DriftItem(kind=c.kind.value, action=c.action.value, target=c.target)
        for c in plan.changes
        if c.kind is not Kind.SERVICE
    ]


def count_changes(plan: Plan) -> int:
    return sum(1 for c in plan.changes if c.kind is not Kind.SERVICE)


def empty_plan_json(revision: str | None) -> str:
    return json.dumps({"revision": revision, "changes": []}, indent=2) + "\n"


def trigger_name(reasons: Iterable[Reason]) -> str:
    order = list(Reason)
    return ",".join(sorted((r.value for r in reasons), key=lambda v: order.index(Reason(v))))


@dataclass(frozen=True)
class Run:
    """What one attempt is about (in-memory): builds its ``Attempt`` record."""

    run_id: str
    trigger: str
    started: float  # monotonic
    started_at: datetime
    revision: str | None = None
    subject: str | None = None
    author: str | None = None

    def seconds(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def attempt(self, result: AttemptResult, **fields: Any) -> Attempt:
        return Attempt(
            revision=self.revision,
            subject=self.subject,
            author=self.author,
            trigger=self.trigger,
            run_id=self.run_id,
            started_at=self.started_at,
            finished_at=now(),
            duration=self.seconds(),
            result=result,
            **fields,
        )
