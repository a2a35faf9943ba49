"""Reading ``${secret:NAME}`` values from ``[secrets].dir``.

Low layer used when rendering the desired files (``diff``, ``apply``). A missing secret, or a secret
file that others may read or change, is refused naming it (never its value): a ``HostError``, the
host's to fix, after which the agent retries the same revision.
Values are registered with the log redactor as they are read.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from pathlib import Path

from reconciler.errors import HostError
from reconciler.logging import register_secret


class SecretError(HostError):
    """A secret the revision needs is missing or unsafe."""


def load_secrets(secrets_dir: str, names: Iterable[str]) -> dict[str, bytes]:
    """Values of the named secrets (one trailing newline dropped)."""
    out: dict[str, bytes] = {}
    missing: list[str] = []
    for name in sorted(set(names)):
        path = Path(secrets_dir) / name
        try:
            st = path.stat()
        except FileNotFoundError:
            missing.append(name)
            continue
        if not stat.S_ISREG(st.st_mode):
            raise SecretError(f"secret {name}: {path} is not a regular file", [name])
        if st.st_mode & 0o027:
            raise SecretError(
                f"secret {name}: {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                "it must not be group-writable or accessible by others (chmod 600)",
                [name],
            )
        value = path.read_bytes()
        if value.endswith(b"\n"):
            value = value[:-1]
        if b"\n" in value or b"\0" in value:
            raise SecretError(f"secret {name}: {path} holds more than one line or a NUL byte", [name])
        register_secret(value.decode("utf-8", "replace"))
        out[name] = value
    if missing:
        raise SecretError(f"secret(s) not found in {secrets_dir}: {', '.join(missing)}", missing)
    return out
