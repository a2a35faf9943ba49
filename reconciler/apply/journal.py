"""The write-ahead journal of an apply: its phases, its file operations, writing and reading it.

Written by the ``Applier`` (``reconciler.apply.applier``) before anything live changes and at each
phase after; read by ``reconciler.apply.recover`` after a crash, which finishes or undoes the
apply by its phase (and, mid-swap, by whether the apply id reached the database).
``reconciler.apply.files`` carries out its operations (swap, undo, finish).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from reconciler.state import StateDir, atomic_write


class Phase(StrEnum):
    """How far an apply got, as its journal says (the ``phase`` of ``journal.json``)."""

    PREPARE = "prepare"  # in memory only: the first write is ``prepared``
    PREPARED = "prepared"  # every new file and table is beside its live one; nothing live changed
    SWAPPING = "swapping"  # rows written (not committed); files being renamed into place
    COMMITTED = "committed"  # past the commit point: recovery rolls forward


_PHASES = {phase.value: phase for phase in Phase}


@dataclass
class Op:
    """One rename-able item of the journal: a live path, its new temp and its backup."""

    live: str
    new: str | None  # None: the live file is deleted
    backup: str | None  # None: the live file did not exist
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"live": self.live, "new": self.new, "backup": self.backup}


@dataclass
class Journal:
    """The journal of one apply (persisted in the state dir as ``journal.json``)."""

    apply_id: str
    revision: str | None
    config_dir: str
    phase: Phase
    ops: list[Op] = field(default_factory=list)
    postfix_running: bool = False
    inventory: dict[str, Any] = field(default_factory=dict)  # the Inventory to write once committed

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "apply_id": self.apply_id,
                "revision": self.revision,
                "config_dir": self.config_dir,
                "phase": self.phase.value,
                "postfix_running": self.postfix_running,
                "inventory": self.inventory,
                "ops": [o.to_json() for o in self.ops],
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Journal:
        """The journal in ``data``; raises ValueError, KeyError, TypeError ... when it is torn."""
        d = json.loads(data)
        ops = [Op(o["live"], o["new"], o["backup"]) for o in d["ops"]]
        # A phase this version does not know is neither swapping nor committed: undone.
        phase = _PHASES.get(d["phase"], Phase.PREPARE) if isinstance(d["phase"], str) else Phase.PREPARE
        return cls(d["apply_id"], d["revision"], d["config_dir"], phase, ops, d["postfix_running"], d["inventory"])

    def write(self, state: StateDir, phase: Phase) -> None:
        """Enter ``phase``: the journal, fsynced into the state dir, says so."""
        self.phase = phase
        atomic_write(state.journal_path, self.to_json())
