"""Adoption of a live host: ``reconciler import --out DIR`` writes the desired-state repository of it.

Called by the CLI only (top layer beside the engine), which imports ``import_host`` and
``CannotImport`` from here. The stages, each a module of this package:

- ``tables``: main.cf, master.cf and every table they use, found with Postfix's own tools
  (``postconf -c DIR -n -x``, ``-P -x``), in subdirectories, ``proxy:``-wrapped, and outside the
  config dir when ``[postfix].outside_paths`` allows it (under ``rootfs/``);
- ``secrets``: a lookup config's ``password``/``bind_pw`` and the values of SASL password maps become
  ``${secret:NAME}``; their values go to ``[secrets].dir`` (0600), never into DIR or the output. A
  value already held by a file of ``[secrets].dir`` keeps that file's name;
- ``rows`` and ``domains``: the three mail tables, read in one snapshot, checked row by row and
  written as ``domains/<domain>.yaml``;
- ``repo`` and ``gitstore``: a README saying what came from where; the files, written as a git
  repository with one commit.

What cannot be represented (plaintext passwords, rows of no domain, addresses outside their domain,
files the repo checks refuse) is collected as problems and nothing at all is written. The only
writes to the live host are on the way to an empty first diff: a ``NAME.in`` of the guide's
Makefile layout is copied to ``NAME`` (the table's source from now on, dated as the ``.in``), and a
file holding a secret gets the mode the agent keeps such files in (0640, group postfix); each is
said in a note.
"""

from __future__ import annotations

import gc
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog

from reconciler.adopt import repo
from reconciler.adopt.bulk import NotCovered
from reconciler.adopt.domains import Counts, collect_rows, domain_schema, start_reading
from reconciler.adopt.gitstore import NewRepository
from reconciler.adopt.rows import LineReader, require_tables
from reconciler.adopt.secrets import Secrets
from reconciler.adopt.tables import Findings, collect_files
from reconciler.desired.render import SECRET_FILE_GROUP, SECRET_FILE_MODE
from reconciler.errors import PermanentError, Problem, ReconcilerError
from reconciler.models import AgentConfig

log = structlog.get_logger("reconciler.adopt")


class CannotImport(PermanentError):
    """The live state cannot be represented as a repository; nothing was written."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(f"{len(problems)} reason(s) the live state cannot be imported")
        self.problems = sorted(set(problems), key=lambda p: (p.path, p.line or 0, p.message))


@dataclass
class ImportResult:
    """What an import wrote (in-memory result): counts and the notes to print."""

    out: Path
    files: list[str]
    domains: int
    mailboxes: int
    aliases: int
    secrets: list[str]
    notes: list[str]
    commit: str


def import_host(cfg: AgentConfig, out: Path) -> ImportResult:
    """Import the live host into ``out`` (a new directory); raises ``CannotImport`` naming every reason."""
    out = out.absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReconcilerError(f"{out}: already exists and is not empty; import writes a new repository")
    if not out.parent.is_dir():
        raise ReconcilerError(f"{out.parent}: no such directory")
    # The client starts reading the rows now: the server and the client send them while the files
    # are collected and checked (the import reads what they sent once it gets there).
    reader = start_reading(cfg)
    # No cycle collection while the rows are held: a million lines in lists are traversed at every
    # full collection, for nothing (the import makes no cycles); about 0.1 s at 1M mailboxes.
    collecting = gc.isenabled()
    gc.disable()
    try:
        require_tables(cfg)
        secrets = Secrets.load(Path(cfg.secrets.dir))
        found = collect_files(Path(cfg.postfix.config_dir), cfg.postfix.outside_paths, secrets)
        try:
            commit, counts = _write(cfg, out, found, secrets, reader)
        except NotCovered as exc:  # a domain's rows the fast path does not cover: all again, row by row
            log.debug("import.fast_path_left", domain=str(exc))
            commit, counts = _write(cfg, out, found, secrets, None)
    finally:
        if collecting:
            gc.enable()
        if reader is not None:
            reader.close()
    log.info("import.done", out=str(out), files=len(found.files), domains=counts[0])
    return ImportResult(
        out,
        sorted(found.files),
        counts[0],
        counts[1],
        counts[2],
        sorted(secrets.new),
        found.notes + found.actions,
        commit,
    )


def _maker(texts: Mapping[str, str], name: str) -> Callable[[], bytes]:
    """What makes domain ``name``'s file: its text is made and checked when it is read (``bulk.Lazy``)."""
    return lambda: texts[name].encode()


def _write(
    cfg: AgentConfig, out: Path, found: Findings, secrets: Secrets, reader: LineReader | None
) -> tuple[str, Counts]:
    """Read the rows (from ``reader``, else row by row), write the repository beside ``out``, then the
    secrets and the live writes, then rename it.

    Nothing stays behind when it raises (``CannotImport``, ``NotCovered``, anything): the staged
    directory is removed and nothing live has been written yet.
    """
    # Imported here, not above: the client (``start_reading``) is sending the rows meanwhile.
    from reconciler.source import open_snapshot
    from reconciler.validate import validate_snapshot

    config_dir = Path(cfg.postfix.config_dir)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))
    try:
        git = NewRepository(tmp, cfg.source.branch)
        try:
            for f in found.files.values():
                git.write(f.repo_path, f.data)
            # The staged files are checked as a revision would be (Postfix's tools, mostly waiting on
            # them) while the rows are read: the two take no time from each other.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-validate") as pool:
                checked = pool.submit(
                    validate_snapshot, open_snapshot(tmp), str(config_dir), None, cfg.postfix.outside_paths
                )
                domains, counts, row_problems = collect_rows(cfg, reader)
                validated = checked.result()
            read = time.perf_counter()
            if found.problems or row_problems:
                raise CannotImport(found.problems + row_problems)  # the checks' findings would repeat them
            if validated.problems:
                raise CannotImport(
                    [
                        Problem(p.path, p.line, f"{p.message} (as found live; fix it there first)")
                        for p in validated.problems
                    ]
                )
            git.write_made([(f"domains/{name}.yaml", _maker(domains, name)) for name in domains])
            git.write("schemas/domain.schema.json", domain_schema().encode())
            git.write("README.md", repo.readme(cfg, found, counts).encode())
            commit = git.commit(f"Import of {socket.gethostname()} ({config_dir} and the mail database)")
        finally:
            git.close()
        # Where the time went (bench/importbench.py prints these beside its totals).
        log.info("import.written", rows_s=round(read - started, 2), write_s=round(time.perf_counter() - read, 2))
        secrets.write()
        for target, data, stamp_ns in found.copies:
            repo.write_live_source(target, data, stamp_ns, target in found.tighten)
        for path in found.tighten:
            if path.exists():
                repo.set_mode(path, SECRET_FILE_GROUP, SECRET_FILE_MODE)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return commit, counts
