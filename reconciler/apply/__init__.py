"""The apply stage: executes a Plan transactionally across files, built tables and MySQL rows.

Called by ``engine`` (``Applier``, ``host_lock``, ``recover``, ``repair_digests``), and for its
failure by the CLI, the agent and ``reconciler.outcome`` (``ApplyFailed``). Its modules, from
the top:
  applier   the Applier: the table of steps run by one loop, its rollback;
  recover   crash recovery from the journal (or without a readable one);
  rows      the row transaction, its typed row writer, settling a race lost to another host;
  files     new files and built tables beside the live ones, backups, swap, undo;
  service   ``postfix check``, reload or restart, bringing Postfix back after a rollback;
  journal   the write-ahead journal and its phases;
  lock      the host lock;
  faults    the test hooks (faults injected at named steps, the bulk threshold);
  steps     the steps, ``ApplyFailed`` and ``ApplyResult``.
"""

from reconciler.apply.applier import Applier
from reconciler.apply.faults import BULK_ROWS, NO_FAULTS, Faults, InjectedFault
from reconciler.apply.journal import Phase
from reconciler.apply.lock import host_lock
from reconciler.apply.recover import recover
from reconciler.apply.rows import conflict, lost, repair_digests
from reconciler.apply.steps import ApplyFailed, ApplyResult, Step

__all__ = [
    "BULK_ROWS",
    "NO_FAULTS",
    "Applier",
    "ApplyFailed",
    "ApplyResult",
    "Faults",
    "InjectedFault",
    "Phase",
    "Step",
    "conflict",
    "host_lock",
    "lost",
    "recover",
    "repair_digests",
]
