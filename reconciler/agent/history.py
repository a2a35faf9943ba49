"""Persisted agent records in the state dir: the attempt history and the last status document.

Written by the agent loop (atomically, through ``state.atomic_write``), read back at start-up and by
``reconciler status`` when no agent answers. ``history.json`` holds the last ``HISTORY_SIZE``
attempts, newest first; ``status.json`` the last ``Status``. Both are scrubbed of secrets before
they get here, and neither ever holds a secret's value.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import structlog
from pydantic import TypeAdapter, ValidationError

from reconciler.state import atomic_write
from reconciler.status import Attempt, Status

HISTORY_SIZE = 50
HISTORY_FILE = "history.json"
STATUS_FILE = "status.json"

log = structlog.get_logger("reconciler.agent.history")
_ATTEMPTS = TypeAdapter(list[Attempt])


class Records:
    """Accessors for ``history.json`` and ``status.json`` in the state dir."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self._last_status: bytes | None = None

    def history(self) -> list[Attempt]:
        """The recorded attempts, newest first ([] when none or unreadable)."""
        try:
            return _ATTEMPTS.validate_json((self.dir / HISTORY_FILE).read_bytes())[:HISTORY_SIZE]
        except FileNotFoundError:
            return []
        except ValidationError as exc:  # torn by a power loss: set aside (one warning), rewritten by the next attempt
            path = self.dir / HISTORY_FILE
            log.warning("history.unreadable", path=str(path), error=str(exc).splitlines()[0])
            _set_aside(path)
            return []

    def add(self, attempt: Attempt, history: list[Attempt]) -> list[Attempt]:
        """Record ``attempt`` in front of ``history``; returns the new history."""
        new = [attempt, *history][:HISTORY_SIZE]
        self._write(HISTORY_FILE, _ATTEMPTS.dump_json(new, indent=1))
        return new

    def write_status(self, status: Status) -> None:
        """Persist ``status`` unless it is the same as the last one written (ignoring its timestamp)."""
        key = status.model_copy(update={"updated_at": None}).model_dump_json().encode()
        if key == self._last_status:
            return
        self._write(STATUS_FILE, status.model_dump_json(indent=1).encode())
        self._last_status = key

    def _write(self, name: str, data: bytes) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(self.dir / name, data + b"\n", mode=0o600)


def read_status(state_dir: Path) -> Status | None:
    """The last status the agent recorded in ``state_dir``; None when there is none."""
    try:
        data = (state_dir / STATUS_FILE).read_bytes()
    except FileNotFoundError:
        return None
    try:
        return Status.model_validate(json.loads(data))
    except (ValueError, ValidationError) as exc:  # torn by a power loss: set aside, rewritten by the agent
        log.warning("status.unreadable", path=str(state_dir / STATUS_FILE), error=str(exc).splitlines()[0])
        _set_aside(state_dir / STATUS_FILE)
        return None


def _set_aside(path: Path) -> None:
    """Keep an unreadable record as ``NAME.corrupt`` (for a look), so that it warns once."""
    with contextlib.suppress(OSError):
        os.replace(path, path.with_name(f"{path.name}.corrupt"))
