"""Writing an import out: the repository's README, and the import's few writes to the live host.

Called by ``import_host`` (``reconciler.adopt``) once nothing stands in the way. ``readme`` says
what came from where (the repository itself is written by ``reconciler.adopt.gitstore``);
``write_live_source`` and ``set_mode`` are the import's only writes to the live host (a
``NAME.in``'s copy or a recovered dump, the mode of a file holding a secret), each said in a note.
"""

from __future__ import annotations

import grp
import os
import socket
from pathlib import Path

from reconciler.adopt.domains import Counts
from reconciler.adopt.tables import Findings
from reconciler.desired.render import SECRET_FILE_GROUP, SECRET_FILE_MODE
from reconciler.models import AgentConfig
from reconciler.vocab import SECRET_REF


def write_live_source(target: Path, data: bytes, stamp_ns: int, holds_secret: bool) -> None:
    """Write a table's live source (a NAME.in's copy, a recovered dump), dated no later than its table."""
    tmp = target.with_name(f".{target.name}.reconciler-import")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if holds_secret:
        set_mode(tmp, SECRET_FILE_GROUP, SECRET_FILE_MODE)
    else:
        set_mode(tmp, "root", 0o644)
    os.utime(tmp, ns=(stamp_ns, stamp_ns))  # exact: a source one ns newer than its table is stale
    os.replace(tmp, target)


def set_mode(path: Path, group: str, mode: int) -> None:
    """Group and mode as the applier sets them (owner root when running as root)."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        gid = 0
    root = os.geteuid() == 0
    os.chown(path, 0 if root else -1, gid if root else -1)
    os.chmod(path, mode)


def readme(cfg: AgentConfig, found: Findings, counts: Counts) -> str:
    """The repository's README.md: what came from where, the secret names it uses, every note."""
    lines = [
        f"# Mail configuration of {socket.gethostname()}",
        "",
        "Imported by `reconciler import` from the live host; `reconciler diff` against this repository",
        "shows no change. From here on, change the mail setup by committing here (see docs/adopting.md).",
        "",
        "## What came from where",
        "",
        "| repository | live |",
        "| --- | --- |",
    ]
    for f in sorted(found.files.values(), key=lambda f: f.repo_path):
        origin = f"{f.origin}" if f.origin == f.live else f"{f.origin} (managed as {f.live})"
        lines.append(f"| `{f.repo_path}` | `{origin}` |")
    lines.append(
        f"| `domains/*.yaml` | MySQL `{cfg.mysql.database}`: {counts[0]} domain(s), {counts[1]} mailbox(es), "
        f"{counts[2]} alias row(s) |"
    )
    names = sorted({m for f in found.files.values() for m in SECRET_REF.findall(f.data.decode("utf-8", "replace"))})
    if names:
        lines += ["", f"## Secrets (values in `{cfg.secrets.dir}` on the host, never in this repository)", ""]
        lines += [f"- `{n}`" for n in names]
    if found.notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in found.notes]
    return "\n".join(lines) + "\n"
