"""The apply stage's vocabulary: its steps, its failure and its result.

Bottom of the ``reconciler.apply`` package: every other module of it names a ``Step`` and raises
``ApplyFailed``; the engine returns ``ApplyResult``; the CLI, the agent and ``reconciler.outcome``
read ``ApplyFailed.step`` (the status JSON's ``failed_step``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from reconciler.errors import ReconcilerError


class Step(StrEnum):
    """The steps of an apply, in order: what errors, the failed-revision record and the status name."""

    PREPARE = "prepare"
    BUILD = "build"
    JOURNAL = "journal"
    ROWS = "rows"
    SWAP = "swap"
    CHECK = "check"
    SERVICE = "service"
    HEALTH = "health"
    COMMIT = "commit"
    FINISH = "finish"


class ApplyFailed(ReconcilerError):
    """A step failed; everything was rolled back (``rolled_back``) or could not be (see message).

    ``cause`` is what broke the step; ``reconciler.outcome`` decides from it whose fault it was.
    """

    def __init__(
        self, step: Step, message: str, *, rolled_back: bool = True, cause: BaseException | None = None
    ) -> None:
        super().__init__(f"{step.value}: {message}")
        self.step = step
        self.detail = message
        self.rolled_back = rolled_back
        self.cause = cause


@dataclass(frozen=True)
class ApplyResult:
    """What an apply did (in-memory result)."""

    changed: bool
    files: int = 0
    tables: int = 0
    rows: int = 0
    service: str = "none"
    warnings: tuple[str, ...] = ()
    duration: float = 0.0
