"""Command line: ``reconciler validate|init-db|...`` (also ``python -m reconciler``).

Top layer: parses arguments, loads the configuration, calls the pipeline stages and maps outcomes
to the exit codes of SPEC section 4 (0 success, 1 invalid/changes/failed, 2 could not run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog
from pydantic import ValidationError

from reconciler import __version__
from reconciler import logging as rlog
from reconciler.errors import ReconcilerError
from reconciler.models import AgentConfig, load_config
from reconciler.status import AgentState, Fleet, Status

EXIT_OK, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
DEFAULT_CONFIG = "/etc/reconciler/config.toml"
log = structlog.get_logger("reconciler.cli")


class ConfigError(ReconcilerError):
    """The agent configuration is missing or invalid."""


def config_path(arg: str | None) -> Path:
    """``--config``, else ``$RECONCILER_CONFIG``, else /etc/reconciler/config.toml."""
    return Path(arg or os.environ.get("RECONCILER_CONFIG") or DEFAULT_CONFIG)


def read_config(arg: str | None) -> AgentConfig:
    """Load the agent configuration, turning every failure into a ``ConfigError`` naming the key."""
    path = config_path(arg)
    try:
        return load_config(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: " + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"])
            for e in exc.errors(include_url=False)
        )
        raise ConfigError(f"{path}: {details}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _is_bare(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and not (path / ".git").exists()


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a revision or folder; print each problem as ``path[:line]: message`` (or as JSON, or GitHub commands)."""
    from reconciler.render import problems_github, problems_json
    from reconciler.source import open_snapshot
    from reconciler.validate import DEFAULT_LIVE_CONFIG_DIR, DEFAULT_OUTSIDE_PATHS, validate_snapshot

    live_dir, outside = DEFAULT_LIVE_CONFIG_DIR, DEFAULT_OUTSIDE_PATHS
    if args.config or os.environ.get("RECONCILER_CONFIG") or Path(DEFAULT_CONFIG).exists():
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


def cmd_diff(args: argparse.Namespace) -> int:
    """Dry run: print what ``apply`` would change; exit 0 in sync, 1 changes pending."""
    from reconciler.engine import diff
    from reconciler.errors import InvalidRevision
    from reconciler.render import plan_json, plan_text

    cfg = read_config(args.config)
    try:
        planned = diff(cfg, args.rev)
    except InvalidRevision as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"reconciler: revision is invalid: {len(exc.problems)} problem(s)", file=sys.stderr)
        return EXIT_ERROR
    if args.format == "json":
        sys.stdout.write(plan_json(planned.plan))
    else:
        sys.stdout.write(plan_text(planned.plan, colour=sys.stdout.isatty()))
    return EXIT_OK if planned.plan.empty else EXIT_FAIL


def cmd_apply(args: argparse.Namespace) -> int:
    """One transactional reconcile; exit 0 applied or nothing to do, 1 rejected or rolled back, 2 could not run.

    Which of 1 and 2 is decided by ``reconciler.outcome``: the revision's fault exits 1, the
    host's (a missing secret) or a temporary one (database, lock, disk space) exits 2.
    """
    import pymysql.err

    from reconciler.apply import ApplyFailed, Faults
    from reconciler.engine import apply
    from reconciler.errors import Fault, InvalidRevision
    from reconciler.outcome import classify

    cfg = read_config(args.config)
    try:
        planned, result = apply(cfg, args.rev, retry_failed=args.rev is not None, faults=Faults.from_env(os.environ))
    except InvalidRevision as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"reconciler: revision rejected: {len(exc.problems)} problem(s); nothing changed", file=sys.stderr)
        return EXIT_FAIL
    except (ReconcilerError, pymysql.err.MySQLError, OSError) as exc:
        outcome = classify(exc)
        if isinstance(exc, ApplyFailed):
            state = "rolled back" if exc.rolled_back else "ROLLBACK INCOMPLETE, check the host"
            message = f"apply failed at step {exc.step.value}: {exc.detail}; {state}"
        else:
            message = outcome.error
        if outcome.fault is Fault.HOST:
            message += "; the host must fix this (the revision is not marked failed)"
        elif outcome.fault is Fault.TEMPORARY:
            message += "; temporary, try again later"
        print(f"reconciler: {message}", file=sys.stderr)
        return outcome.exit_code
    rev = (planned.snapshot.revision or "")[:12]
    if not result.changed:
        print(f"revision {rev}: in sync, nothing to do")
    else:
        print(
            f"revision {rev}: applied {result.files} file(s), {result.tables} table(s), {result.rows} row(s); "
            f"postfix {result.service} ({result.duration:.2f} s)"
        )
        for warning in result.warnings:
            print(f"postfix check: warning: {warning}", file=sys.stderr)
    return EXIT_OK


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


def cmd_run(args: argparse.Namespace) -> int:
    """The long-running agent: watch, reconcile, serve the API; exit 0 after SIGTERM or SIGINT."""
    import signal

    from reconciler.agent.loop import Agent
    from reconciler.api.app import create_app, wrap
    from reconciler.api.auth import read_credential
    from reconciler.api.server import ApiServer, bind
    from reconciler.apply import Faults

    cfg = read_config(args.config)
    token = read_credential(cfg.api.token_file, "[api].token_file")
    webhook_secret = read_credential(cfg.api.webhook_secret_file, "[api].webhook_secret_file")
    sock = bind(cfg.api.listen, has_token=token is not None)
    agent = Agent(cfg, dry_run=args.dry_run, faults=Faults.from_env(os.environ))
    app = create_app(agent, token=token, webhook_secret=webhook_secret, branch=cfg.source.branch)
    server = ApiServer(wrap(app), sock)

    def on_signal(signum: int, _frame: object) -> None:
        # Only a flag (no logging: the handler may interrupt a write to stderr): an apply in
        # progress runs to its end (or rolls back), then the loop returns.
        agent.stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    log.info("api.listening", listen=cfg.api.listen, token=token is not None, webhook_secret=webhook_secret is not None)
    try:
        agent.run()
    finally:
        server.stop()
    return EXIT_OK


def _agent_url(listen: str) -> str:
    from reconciler.api.server import parse_listen

    host, port = parse_listen(listen)
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard listener is reached on loopback
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"  # noqa: S104
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _status_text(status: Status, origin: str) -> str:
    def short(rev: str | None) -> str:
        return (rev or "none")[:12]

    lines = [f"state: {status.state.value}" + (" (dry run)" if status.dry_run else "") + f"  [{origin}]"]
    lines.append(f"source: {status.source} ({status.branch})")
    lines.append(f"head: {short(status.head_revision)}   applied: {short(status.applied_revision)}")
    hc = status.head_commit
    if hc is not None and hc.subject is not None:
        when = f", {hc.time.isoformat(timespec='seconds')}" if hc.time else ""
        lines.append(f"head commit: {hc.subject} ({hc.author or 'unknown author'}{when})")
    if status.pending_changes:
        lines.append(f"pending changes: {status.pending_changes}")
    if status.waiting_for:
        lines.append(f"waiting for: {', '.join(status.waiting_for)} ({status.waiting_reason or ''})")
    if status.next_retry_at:
        lines.append(f"next retry: {status.next_retry_at.isoformat(timespec='seconds')}")
    if status.drift:
        lines.append(f"drift ({len(status.drift)}):")
        lines.extend(f"  {d.kind} {d.action} {d.target}" for d in status.drift)
    a = status.last_attempt
    if a is not None:
        step = f" at step {a.failed_step}" if a.failed_step else ""
        lines.append(
            f"last attempt: {a.result.value}{step} {short(a.revision)} {a.subject or ''} "
            f"({a.finished_at.isoformat(timespec='seconds')}, {a.duration:.2f} s)"
        )
        if a.error:
            lines.append(f"  error: {a.error}")
    if status.history:
        lines.append("history:")
        for h in status.history[:10]:
            lines.append(
                f"  {h.finished_at.isoformat(timespec='seconds')} {h.result.value:<9} {short(h.revision)} "
                f"{h.trigger:<11} {h.subject or ''}"
            )
    return "\n".join(lines) + "\n"


def _agent_status(cfg: AgentConfig) -> Status | None:
    """The running agent's status from its API, None when no agent answers."""
    import json
    import urllib.error
    import urllib.request

    from reconciler.api.server import ListenError

    try:
        url = _agent_url(cfg.api.listen) + "/status"
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - http to the configured listen address
            return Status.model_validate(json.loads(resp.read()))
    except (urllib.error.URLError, OSError, ValueError, ListenError) as exc:
        log.debug("status.agent_unreachable", error=str(exc))
    return None


def _fleet_head(cfg: AgentConfig, fleet: Fleet) -> str | None:
    """The branch head the fleet should be at: the agent's, else the local repository's, else the hosts' own."""
    status = _agent_status(cfg)
    if status is not None and status.head_revision:
        return status.head_revision
    from reconciler.engine import open_revision

    try:
        return open_revision(cfg, None).revision
    except ReconcilerError:
        heads = [h.head_revision for h in fleet.hosts if h.head_revision]
        return max(set(heads), key=heads.count) if heads else None


def _fleet_text(fleet: Fleet, head: str | None) -> str:
    def short(rev: str | None) -> str:
        return (rev or "none")[:12]

    lines = [f"fleet: {len(fleet.hosts)} host(s), head {short(head)}"]
    lines.append(f"  {'host':<16} {'wave':>4}  {'applied':<12}  {'state':<12} {'last seen':<20} error")
    for h in fleet.hosts:
        seen = h.last_seen.strftime("%Y-%m-%dT%H:%M:%SZ")
        state = h.state + (" (stale)" if h.stale else "")
        error = h.error or ""
        if h.waiting_for and not error:
            error = "waiting for " + ", ".join(h.waiting_for)
        lines.append(f"  {h.name:<16} {h.wave:>4}  {short(h.applied_revision):<12}  {state:<12} {seen:<20} {error}")
    return "\n".join(lines) + "\n"


def cmd_fleet(cfg: AgentConfig, fmt: str) -> int:
    """``status --fleet``: every host of the fleet; exit 0 when all are synced at the head."""
    from reconciler.fleet import read_fleet

    fleet = read_fleet(cfg)
    head = _fleet_head(cfg, fleet)
    if fmt == "json":
        doc = fleet.model_dump(mode="json")
        doc["head_revision"] = head
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(_fleet_text(fleet, head))
    synced = bool(fleet.hosts) and all(
        h.state == AgentState.SYNCED.value and h.applied_revision == head and not h.stale for h in fleet.hosts
    )
    return EXIT_OK if synced else EXIT_FAIL


def cmd_status(args: argparse.Namespace) -> int:
    """The running agent's status, else the last one recorded; exit 0 synced, 1 anything else."""
    from reconciler.agent.history import read_status

    cfg = read_config(args.config)
    if args.fleet:
        return cmd_fleet(cfg, args.format)
    origin = "agent"
    status = _agent_status(cfg)
    if status is None:
        status = read_status(Path(cfg.state.dir))
        origin = f"recorded in {cfg.state.dir}; no agent answers at {cfg.api.listen}"
    if status is None:
        print(
            f"reconciler: no agent answers at {cfg.api.listen} and no status is recorded in {cfg.state.dir}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    if args.format == "json":
        sys.stdout.write(status.model_dump_json(indent=2) + "\n")
    else:
        sys.stdout.write(_status_text(status, origin))
    return EXIT_OK if status.state is AgentState.SYNCED else EXIT_FAIL


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
