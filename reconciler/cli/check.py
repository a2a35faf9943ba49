"""``reconciler validate`` and ``reconciler pre-receive``: judging a revision before it is applied.

Called through ``reconciler.cli.main`` (the parser's ``func``); validate prints each problem as
``path[:line]: message`` (or JSON, or GitHub workflow commands), pre-receive refuses a push whose
branch head is invalid.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import structlog

from reconciler.cli.config import EXIT_ERROR, EXIT_FAIL, EXIT_OK, config_given, read_config
from reconciler.errors import ReconcilerError

log = structlog.get_logger("reconciler.cli")


def _is_bare(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and not (path / ".git").exists()


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a revision or folder; print each problem as ``path[:line]: message`` (or as JSON, or GitHub commands)."""
    from reconciler.render import problems_github, problems_json
    from reconciler.source import open_snapshot
    from reconciler.validate import DEFAULT_LIVE_CONFIG_DIR, DEFAULT_OUTSIDE_PATHS, validate_snapshot

    live_dir, outside = DEFAULT_LIVE_CONFIG_DIR, DEFAULT_OUTSIDE_PATHS
    if config_given(args.config):
        cfg = read_config(args.config)
        live_dir, outside = cfg.postfix.config_dir, cfg.postfix.outside_paths
    repo = Path(args.repo)
    bare = _is_bare(repo)
    rev = args.rev if args.rev or not bare else "HEAD"
    snapshot = open_snapshot(repo, rev)
    validated = validate_snapshot(snapshot, live_dir, outside_paths=outside, every_host=True)
    problems = validated.problems
    for note in validated.notes:
        print(f"note: {note}", file=sys.stderr)
    what = snapshot.revision or str(repo)
    if args.format == "json":
        sys.stdout.write(problems_json(what, snapshot.revision, problems))
    elif args.format == "github":
        sys.stdout.write(problems_github(problems, "" if bare else _checkout_prefix(repo)))
    else:
        for problem in problems:
            print(problem)
    if problems:
        print(f"{what}: {len(problems)} problem(s)", file=sys.stderr)
        return EXIT_FAIL
    print(f"{what}: valid", file=sys.stderr)
    return EXIT_OK


def _checkout_prefix(repo: Path) -> str:
    """The folder of ``repo`` relative to the working directory (the CI checkout), "" if it is not inside."""
    try:
        rel = repo.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return ""
    return "" if rel == Path() else rel.as_posix()


def cmd_pre_receive(args: argparse.Namespace) -> int:
    """git's pre-receive hook: exit 0 accepts the push, 1 refuses it, 2 could not judge (git refuses too)."""
    from reconciler.prereceive import check_push, parse_updates

    cfg = read_config(args.config)
    repo = Path(os.environ.get("GIT_DIR") or ".").resolve()
    try:
        verdicts = check_push(cfg, repo, parse_updates(sys.stdin))
    except ReconcilerError:
        raise  # exit 2 through main(), with its message
    except Exception as exc:  # fail closed: whatever went wrong, the push is not accepted
        log.exception("prereceive.crashed")
        print(f"reconciler: pre-receive could not check the push: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    refused = 0
    for verdict in verdicts:
        if not verdict.checked:
            continue
        rev = verdict.update.new[:12]
        for problem in verdict.problems:
            print(problem, file=sys.stderr)
        if verdict.problems:
            refused += 1
            print(
                f"reconciler: {verdict.update.ref} {rev} refused: {len(verdict.problems)} problem(s)", file=sys.stderr
            )
        else:
            print(f"reconciler: {verdict.update.ref} {rev}: valid", file=sys.stderr)
    return EXIT_FAIL if refused else EXIT_OK
