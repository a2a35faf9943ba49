"""Command line: ``reconciler validate|init-db|...`` (also ``python -m reconciler``); ``main`` and its parser.

Top layer: parses arguments, loads the configuration (``config``), calls the pipeline stages and
maps outcomes to the exit codes of SPEC section 4 (0 success, 1 invalid/changes/failed, 2 could not
run). The commands live by what they do: ``check`` (validate, pre-receive), ``reconcile`` (diff,
apply), ``run`` (the agent), ``status`` (status, its text in ``render``), ``host`` (init-db, import,
passwd). Called by the ``reconciler`` console script and ``reconciler.__main__``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from reconciler import __version__
from reconciler import logging as rlog
from reconciler.cli.check import cmd_pre_receive, cmd_validate
from reconciler.cli.config import DEFAULT_CONFIG, EXIT_ERROR, EXIT_FAIL, EXIT_OK, ConfigError, read_config
from reconciler.cli.host import cmd_import, cmd_init_db, cmd_passwd
from reconciler.cli.reconcile import cmd_apply, cmd_diff
from reconciler.cli.run import cmd_run
from reconciler.cli.status import cmd_status
from reconciler.errors import ReconcilerError

__all__ = ["EXIT_ERROR", "EXIT_FAIL", "EXIT_OK", "ConfigError", "build_parser", "main", "read_config"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="reconciler", description="GitOps agent for Postfix mail servers")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", help=f"agent configuration (default $RECONCILER_CONFIG or {DEFAULT_CONFIG})")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a revision with the schemas and Postfix's own tools")
    p.add_argument("--repo", default=".", help="repository, work tree or plain folder (default: .)")
    p.add_argument("--rev", help="git revision to read from the object database (default: the files as they are)")
    p.add_argument(
        "--format",
        choices=["text", "json", "github"],
        default="text",
        help="text: path[:line]: message; json: one document; github: workflow commands (annotations on a PR)",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("diff", help="dry run: show what apply would change")
    p.add_argument("--rev", help="revision (default: the configured branch head)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("apply", help="reconcile to a revision, transactionally")
    p.add_argument("--rev", help="revision (default: the configured branch head); an explicit revision is retried")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("run", help="the long-running agent: watch, reconcile, serve the API")
    p.add_argument("--dry-run", action="store_true", help="plan and report (out_of_sync, /diff) but never apply")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="the agent's status (from its API, else as last recorded)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--fleet", action="store_true", help="every host of the fleet, from the database")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("pre-receive", help="git pre-receive hook: refuse a push whose branch head is invalid")
    p.set_defaults(func=cmd_pre_receive)

    p = sub.add_parser("init-db", help="create or upgrade the MySQL tables")
    p.set_defaults(func=cmd_init_db)

    p = sub.add_parser("import", help="adoption: write a desired-state repository describing the live host")
    p.add_argument("--out", required=True, help="the new repository's directory (must not exist, or be empty)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("passwd", help="hash a password for a domain file (read from the terminal or stdin)")
    p.add_argument("--scheme", choices=["BLF-CRYPT", "SHA512-CRYPT", "ARGON2ID"], default="BLF-CRYPT")
    p.set_defaults(func=cmd_passwd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    rlog.configure(args.log_level)
    try:
        code: int = args.func(args)
    except ReconcilerError as exc:
        print(f"reconciler: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # a database or filesystem error: a clear line, exit 2, never a traceback
        import pymysql.err

        if not isinstance(exc, pymysql.err.MySQLError | OSError):
            raise
        from reconciler.outcome import classify

        print(f"reconciler: {classify(exc).error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR
    return code
