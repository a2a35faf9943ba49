"""Writing an import out: the repository's files, its README and one git commit, and the few live writes.

Called by ``import_host`` (``reconciler.adopt``) once nothing stands in the way. ``write`` puts a
file into the staging directory; ``readme`` says what came from where; ``GitRepo`` makes the
directory a repository, staging each file as it is written, with one commit. ``write_live_source``
and ``set_mode`` are the import's only writes to the live host (a ``NAME.in``'s copy or a recovered
dump, the mode of a file holding a secret), each said in a note.
"""

from __future__ import annotations

import grp
import os
import socket
import subprocess
from pathlib import Path

from reconciler.adopt.domains import Counts
from reconciler.adopt.tables import Findings
from reconciler.desired.render import SECRET_FILE_GROUP, SECRET_FILE_MODE
from reconciler.errors import ReconcilerError
from reconciler.models import AgentConfig
from reconciler.vocab import SECRET_REF


def write(path: Path, data: bytes) -> None:
    """A file of the staged repository (its directories made as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


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


class GitRepo:
    """The staged directory as a git repository being filled (in-memory handle, during an import).

    ``git init`` at once; each file ``add``ed is staged by one ``git update-index --stdin`` that
    runs beside the import (git hashes a file on the other core while the next one is written);
    ``commit`` makes the one commit. The index and tree are those ``git add -A`` gives.
    """

    def __init__(self, repo: Path, branch: str) -> None:
        self.repo = repo
        host = socket.gethostname()
        self.host = host
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(repo),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "reconciler import",
            "GIT_AUTHOR_EMAIL": f"reconciler@{host}",
            "GIT_COMMITTER_NAME": "reconciler import",
            "GIT_COMMITTER_EMAIL": f"reconciler@{host}",
        }
        self._git("init", "-q", "-b", branch)
        # Loose objects stored without compression: adding a million mailboxes' files costs a third
        # of the time (measured: 2.3 s instead of 6.8 s for 118 MB); the first push or `git gc` packs them.
        self._stage = subprocess.Popen(
            ["git", "-C", str(repo), "-c", "core.looseCompression=0", "update-index", "--add", "-z", "--stdin"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self.env,
        )

    def write(self, rel: str, data: bytes) -> None:
        """Write the file ``rel`` of the repository and stage it."""
        write(self.repo / rel, data)
        self.add(rel)

    def add(self, rel: str) -> None:
        """Stage the file ``rel``, already written."""
        if self._stage.stdin is not None:
            self._stage.stdin.write(rel.encode() + b"\0")

    def commit(self, message: str) -> str:
        """Wait for the staging, commit everything staged; the commit's id."""
        _, err = self._stage.communicate()
        if self._stage.returncode != 0:
            raise ReconcilerError(f"git update-index in {self.repo}: {err.decode('utf-8', 'replace').strip()}")
        self._git("commit", "-q", "-m", message)
        return self._git("rev-parse", "HEAD")

    def close(self) -> None:
        """Stop the staging if it still runs (an import that failed half-way)."""
        if self._stage.returncode is None:
            self._stage.kill()
            self._stage.communicate()

    def _git(self, *args: str) -> str:
        res = subprocess.run(
            ["git", "-C", str(self.repo), *args], capture_output=True, text=True, env=self.env, check=False
        )
        if res.returncode != 0:
            raise ReconcilerError(f"git {args[0]} in {self.repo}: {res.stderr.strip()}")
        return res.stdout.strip()
