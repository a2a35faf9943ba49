"""Secrets extraction for an import: lookup-config passwords and SASL map values become ``${secret:NAME}``.

Called by ``reconciler.adopt.tables`` while it reads each table source, and by ``import_host``
(``reconciler.adopt``), which loads ``[secrets].dir`` first and writes the new values there last.
A value already held by a file of ``[secrets].dir`` keeps that file's name; a new one gets a name
from the file and key it came from. Values stay in memory until ``Secrets.write`` (mode 0600).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.vocab import SECRET_NAME, SECRET_REF_BYTES

# Characters a wanted name may not keep (a name from a file and key, made a valid SECRET_NAME).
_NOT_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_CONFIG_LINE = re.compile(rb"^(?P<head>\s*(?P<key>[A-Za-z_]+)\s*=\s*)(?P<value>.*?)(?P<tail>\s*)$")
_MAP_LINE = re.compile(rb"^(?P<head>\S+\s+)(?P<value>\S.*?)(?P<tail>\s*)$")


@dataclass
class Secrets:
    """Secret names by value (in-memory, during an import): those already in [secrets].dir, then new ones."""

    directory: Path
    by_value: dict[bytes, str] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)
    new: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path) -> Secrets:
        out = cls(directory)
        if not directory.is_dir():
            return out
        for path in sorted(directory.iterdir()):
            out.taken.add(path.name)
            try:
                if not path.is_file() or path.stat().st_mode & 0o077:
                    continue
                value = path.read_bytes()
            except OSError:
                continue
            value = value[:-1] if value.endswith(b"\n") else value
            if value and b"\n" not in value:
                out.by_value.setdefault(value, path.name)
        return out

    def name_for(self, value: bytes, wanted: str) -> str:
        if value in self.by_value:
            return self.by_value[value]
        base = _NOT_NAME_CHARS.sub("_", wanted).strip("_.-")[:100] or "secret"
        name, n = base, 1
        while name in self.taken:
            n += 1
            name = f"{base}_{n}"
        if not SECRET_NAME.match(name):  # cannot happen: alphanumeric first, at most 100 + "_N" characters
            raise ValueError(f"no valid secret name from {wanted!r}")
        self.taken.add(name)
        self.by_value[value] = name
        self.new[name] = value
        return name

    def write(self) -> None:
        if not self.new:
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, value in sorted(self.new.items()):
            path = self.directory / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, value + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)


def placeholder(name: str) -> bytes:
    """The ``${secret:NAME}`` reference to a secret, as it goes into a file."""
    return f"${{secret:{name}}}".encode()


def secret_config(data: bytes, key: str, typ: str, live: Path, secrets: Secrets) -> tuple[bytes, bool]:
    """A lookup config with its ``password``/``bind_pw`` value replaced by a secret placeholder."""
    if not key:
        return data, False
    user = b""
    for line in data.split(b"\n"):
        m = _CONFIG_LINE.match(line)
        if m and m["key"] in (b"user", b"bind_dn"):
            user = m["value"]
    out: list[bytes] = []
    holds = False
    for line in data.split(b"\n"):
        m = _CONFIG_LINE.match(line)
        if m and m["key"] == key.encode() and m["value"] and not SECRET_REF_BYTES.search(m["value"]):
            who = user.decode("utf-8", "replace").split(",")[0].split("=")[-1] or live.stem
            name = secrets.name_for(m["value"], f"{typ}_{who}_{key}")
            line = m["head"] + placeholder(name) + m["tail"]
            holds = True
        out.append(line)
    return b"\n".join(out), holds


def secret_map(data: bytes, live: Path, secrets: Secrets) -> tuple[bytes, bool]:
    """A SASL password map with each ``user:password`` value's password replaced by a secret."""
    out: list[bytes] = []
    holds = False
    for line in data.split(b"\n"):
        m = _MAP_LINE.match(line)
        if m and not line.lstrip().startswith(b"#") and not SECRET_REF_BYTES.search(line):
            value = m["value"]
            user, colon, password = value.partition(b":")
            secret = password if colon else value
            if secret:
                key = m["head"].strip().decode("utf-8", "replace")
                name = secrets.name_for(secret, f"{live.name}_{key}")
                value = user + b":" + placeholder(name) if colon else placeholder(name)
                line = m["head"] + value + m["tail"]
                holds = True
        out.append(line)
    return b"\n".join(out), holds
