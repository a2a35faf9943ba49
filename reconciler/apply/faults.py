"""Test hooks of the apply: faults injected at named steps, and the bulk-write threshold.

Read once from the environment by the entry points (``reconciler apply`` and ``reconciler run``,
in ``reconciler.cli``: ``Faults.from_env(os.environ)``) and handed down through ``engine.apply``
to the ``Applier``, whose step loop calls ``Faults.at`` (the one fault hook). The default,
``NO_FAULTS``, injects nothing. Tests and ``bench/faults`` set the variables in the environment
of the process they start:

- ``RECONCILER_TEST_FAIL_AT=STEP[:N]``: the step fails (an exception: the apply rolls back);
- ``RECONCILER_TEST_KILL_AT=STEP[:N]``: the process kills itself there (SIGKILL, as a power loss);
- ``RECONCILER_TEST_DELAY_AT=STEP:SECONDS``: a pause before that step (fleet races);
- ``RECONCILER_TEST_PAUSE_AT=STEP`` with ``RECONCILER_TEST_PAUSE_FILE=PATH``: the apply waits
  there (once per marker file, which it creates) until the file reads "go";
- ``RECONCILER_TEST_BULK_ROWS=N``: row changes from which the bulk path is taken (default 20000).

``STEP:N`` names the N-th point of a step with several (``swap:N`` before the N-th rename,
``commit:1`` right after the commit point).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from reconciler.apply.steps import Step

FAIL_ENV = "RECONCILER_TEST_FAIL_AT"
CRASH_ENV = "RECONCILER_TEST_KILL_AT"
DELAY_ENV = "RECONCILER_TEST_DELAY_AT"
PAUSE_ENV = "RECONCILER_TEST_PAUSE_AT"
PAUSE_FILE_ENV = "RECONCILER_TEST_PAUSE_FILE"
BULK_ENV = "RECONCILER_TEST_BULK_ROWS"
# Row changes from which writing the touched domains' digests once beats per-row trigger upserts
# (tests lower it to run the bulk path on small plans).
BULK_ROWS = 20000


class InjectedFault(Exception):
    """Raised by the fault hook at ``RECONCILER_TEST_FAIL_AT``."""


@dataclass(frozen=True)
class Faults:
    """The test hooks of one process's applies (in-memory, read once at the entry point)."""

    fail_at: str = ""
    kill_at: str = ""
    delay_at: str = ""  # "STEP:SECONDS"
    pause_at: str = ""
    pause_file: str = ""
    bulk_rows: int = BULK_ROWS

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Faults:
        """The hooks the environment asks for (none when no ``RECONCILER_TEST_*`` is set)."""
        return cls(
            fail_at=environ.get(FAIL_ENV, ""),
            kill_at=environ.get(CRASH_ENV, ""),
            delay_at=environ.get(DELAY_ENV, ""),
            pause_at=environ.get(PAUSE_ENV, ""),
            pause_file=environ.get(PAUSE_FILE_ENV, ""),
            bulk_rows=int(environ.get(BULK_ENV, str(BULK_ROWS))),
        )

    def at(self, step: Step, index: int = 0) -> None:
        """The fault hook: delay, fail (exception), crash (SIGKILL) or pause at ``step`` (its ``index``-th point)."""
        names = (step.value, f"{step.value}:{index}")
        if self.delay_at and index == 0 and self.delay_at.rpartition(":")[0] == step.value:
            time.sleep(float(self.delay_at.rpartition(":")[2]))
        if self.fail_at and self.fail_at in names:
            raise InjectedFault(f"injected fault at {self.fail_at}")
        if self.kill_at and self.kill_at in names:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.pause_at and self.pause_file and self.pause_at in names:
            _pause(Path(self.pause_file))


NO_FAULTS = Faults()


def _pause(marker: Path) -> None:
    """Wait at a step while a fault campaign kills something; once per marker file."""
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # paused before: later applies run through
    os.write(fd, f"paused {os.getpid()}\n".encode())
    os.close(fd)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not marker.read_text().startswith("go"):
        time.sleep(0.02)
