"""The host lock: one apply at a time per host, an flock on the state dir's lock file.

Called by ``engine.session`` around every command that reads or writes live state (recovery,
plan and apply run under it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import structlog

from reconciler.errors import TemporaryError
from reconciler.state import StateDir

log = structlog.get_logger("reconciler.apply")

LOCK_TIMEOUT_ENV = "RECONCILER_LOCK_TIMEOUT"  # seconds a command waits for the host lock (default 600)


@contextlib.contextmanager
def host_lock(state: StateDir, timeout: float | None = None) -> Iterator[None]:
    """One apply at a time per host: an exclusive flock on the state dir's lock file.

    A second command waits for the first (``[state]`` lock, up to ``timeout`` seconds, default
    ``RECONCILER_LOCK_TIMEOUT`` or 600), saying once who holds it; then it gives up with a
    ``TemporaryError`` (``reconciler apply`` exits 2). The holder's pid and command are written
    into the lock file for that message.
    """
    if timeout is None:
        timeout = float(os.environ.get(LOCK_TIMEOUT_ENV, "600"))
    state.ensure()
    fd = os.open(state.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
    try:
        warned = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _lock_holder(state.lock_path)
                if time.monotonic() > deadline:
                    raise TemporaryError(
                        f"another reconcile holds the host lock {state.lock_path} ({holder}); "
                        f"gave up after {timeout:.0f} s"
                    ) from None
                if not warned:
                    log.warning("lock.waiting", lock=str(state.lock_path), holder=holder, timeout=timeout)
                    warned = True
                time.sleep(0.05)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} {' '.join(sys.argv[1:])[:200]}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _lock_holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "unknown process"
