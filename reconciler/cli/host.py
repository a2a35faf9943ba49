"""``reconciler init-db``, ``import`` and ``passwd``: setting a host up (tables, adoption, password hashes).

Called through ``reconciler.cli.main``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import structlog

from reconciler.cli.config import EXIT_ERROR, EXIT_FAIL, EXIT_OK, read_config

log = structlog.get_logger("reconciler.cli")


def cmd_init_db(args: argparse.Namespace) -> int:
    """Create or upgrade the tables of SPEC section 2."""
    from reconciler.db import connect, init_db

    cfg = read_config(args.config)
    conn = connect(cfg.mysql)
    try:
        init_db(conn)
    finally:
        conn.close()
    log.info("init_db.done", database=cfg.mysql.database)
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    """Adoption: write a desired-state repository describing the live host; exit 1 if it cannot be represented."""
    from reconciler.adopt import CannotImport, import_host

    cfg = read_config(args.config)
    try:
        result = import_host(cfg, Path(args.out))
    except CannotImport as exc:
        for problem in exc.problems:
            print(problem)
        print(
            f"reconciler: the live state cannot be represented ({len(exc.problems)} reason(s)); "
            f"nothing was written, {args.out} was not created",
            file=sys.stderr,
        )
        return EXIT_FAIL
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"imported into {result.out} (commit {result.commit[:12]}): {len(result.files)} file(s), "
        f"{result.domains} domain(s), {result.mailboxes} mailbox(es), {result.aliases} alias row(s)"
    )
    if result.secrets:
        print(f"new secrets in {cfg.secrets.dir} (mode 0600): {', '.join(result.secrets)}")
    return EXIT_OK


def cmd_passwd(args: argparse.Namespace) -> int:
    """Read a password (terminal twice without echo, else one stdin line) and print its hash."""
    from reconciler.passwd import PasswordError, hash_password, read_password

    try:
        password = read_password()
        print(hash_password(password, args.scheme))
    except PasswordError as exc:
        print(f"reconciler: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK
