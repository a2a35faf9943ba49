"""The local sandbox's command line, ``python -m harness up|down|status``, that deploy/sandbox.sh runs.

``up`` starts (or restarts) a private MariaDB and Postfix instance under ``--dir``, and with
``--repo`` publishes a sandboxed copy of that desired-state repository to a bare git repository
there, with its secrets and an agent configuration (config.toml). ``down`` stops both services;
``status`` says whether they run. Callers: deploy/sandbox.sh and tests/test_sandbox.py.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from harness.common import SandboxError, find_tool, free_port, run, write_private
from harness.mariadb import AGENT_USER, MariaDB, start_mariadb
from harness.postfix import PostfixInstance, create_postfix_instance
from harness.repo import SandboxedTree, sandboxize_postfix_tree


def _git(repo: Path, *args: str) -> str:
    env_args = ["-c", "user.name=reconciler sandbox", "-c", "user.email=sandbox@sandbox.test"]
    return run([find_tool("git"), "-C", str(repo), *env_args, *args]).stdout


def _publish_repo(source: Path, sandbox: Path, instance: PostfixInstance, db: MariaDB) -> tuple[Path, SandboxedTree]:
    """Copy ``source`` (a desired-state repo), sandboxize it, and push it to a bare repo in ``sandbox``."""
    work = sandbox / "work"
    bare = sandbox / "mail-config.git"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(source, work, ignore=shutil.ignore_patterns(".git", "*.db", "*.lmdb", "*.cdb"))
    result = (
        sandboxize_postfix_tree(work / "postfix", instance, db.port)
        if (work / "postfix").is_dir()
        else (SandboxedTree({}, (), (), ("no postfix/ folder in the repository",)))
    )
    if not bare.exists():
        run([find_tool("git"), "init", "--quiet", "--bare", "--initial-branch=main", str(bare)])
    run([find_tool("git"), "init", "--quiet", "--initial-branch=main", str(work)])
    _git(work, "add", "-A")
    _git(work, "commit", "--quiet", "--allow-empty", "-m", f"Sandbox copy of {source}")
    _git(work, "push", "--quiet", "--force", str(bare), "main")
    return bare, result


def _write_secrets(secrets_dir: Path, result: SandboxedTree, db: MariaDB) -> None:
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in result.lookup_secrets:
        write_private(secrets_dir / name, db.mailuser_password + "\n")
    for name in result.other_secrets:
        if not (secrets_dir / name).exists():
            write_private(secrets_dir / name, f"sandbox-{secrets.token_hex(8)}\n")


def _write_agent_config(sandbox: Path, bare: Path, instance: PostfixInstance, db: MariaDB) -> Path:
    password_file = sandbox / "mysql-password"
    write_private(password_file, db.reconciler_password + "\n")
    config = sandbox / "config.toml"
    config.write_text(
        "# Agent configuration for the local sandbox, written by python -m harness up.\n"
        "[source]\n"
        f'url = "{bare}"\n'
        'branch = "main"\n'
        "poll_interval = 5\n"
        "\n[postfix]\n"
        f'config_dir = "{instance.config_dir}"\n'
        "\n[mysql]\n"
        'host = "127.0.0.1"\n'
        f"port = {db.port}\n"
        f'user = "{AGENT_USER}"\n'
        f'password_file = "{password_file}"\n'
        f'database = "{db.database}"\n'
        "\n[secrets]\n"
        f'dir = "{sandbox / "secrets"}"\n'
        "\n[state]\n"
        f'dir = "{sandbox / "state"}"\n'
        "\n[api]\n"
        f'listen = "127.0.0.1:{free_port()}"\n',
        encoding="utf-8",
    )
    return config


def _cmd_up(sandbox: Path, repo: Path | None) -> dict[str, Any]:
    sandbox.mkdir(parents=True, exist_ok=True)
    sandbox = sandbox.resolve()
    t0 = time.monotonic()
    mysql_base = sandbox / "mariadb"
    if (mysql_base / "mariadb.json").exists():
        db = MariaDB.load(mysql_base)
        db.start()
    else:
        db = start_mariadb(mysql_base)
    t_db = time.monotonic() - t0
    postfix_base = sandbox / "postfix"
    if (postfix_base / "postfix.json").exists():
        instance = PostfixInstance.load(postfix_base)
    else:
        instance = create_postfix_instance(postfix_base)
    t1 = time.monotonic()
    instance.start()
    t_pf = time.monotonic() - t1
    summary: dict[str, Any] = {
        "mariadb": {
            "pid": db.pid(),
            "port": db.port,
            "socket": str(db.socket),
            "client": " ".join(db.client_argv(AGENT_USER)),
            "startup_seconds": round(t_db, 2),
        },
        "postfix": {
            "config_dir": str(instance.config_dir),
            "smtp": f"127.0.0.1:{instance.smtp_port}",
            "maillog": str(instance.maillog),
            "running": instance.is_running(),
            "startup_seconds": round(t_pf, 2),
        },
    }
    if repo is not None:
        bare, result = _publish_repo(repo, sandbox, instance, db)
        _write_secrets(sandbox / "secrets", result, db)
        config = _write_agent_config(sandbox, bare, instance, db)
        summary["git"] = {"bare_repo": str(bare), "branch": "main", "head": _git(bare, "rev-parse", "main").strip()}
        summary["agent_config"] = str(config)
        summary["sandboxed"] = {"ports": dict(result.ports), "notes": list(result.notes)}
    return summary


def _cmd_down(sandbox: Path) -> dict[str, Any]:
    stopped: dict[str, Any] = {}
    if (sandbox / "postfix" / "postfix.json").exists():
        PostfixInstance.load(sandbox / "postfix").stop()
        stopped["postfix"] = "stopped"
    if (sandbox / "mariadb" / "mariadb.json").exists():
        MariaDB.load(sandbox / "mariadb").stop()
        stopped["mariadb"] = "stopped"
    return stopped


def _cmd_status(sandbox: Path) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if (sandbox / "postfix" / "postfix.json").exists():
        pf = PostfixInstance.load(sandbox / "postfix")
        status["postfix"] = {"running": pf.is_running(), "smtp": f"127.0.0.1:{pf.smtp_port}"}
    if (sandbox / "mariadb" / "mariadb.json").exists():
        db = MariaDB.load(sandbox / "mariadb")
        status["mariadb"] = {"running": db.is_running() and db.answers(), "port": db.port}
    return status


def _render_text(data: Mapping[str, Any], indent: str = "") -> str:
    lines: list[str] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            lines.append(f"{indent}{key}:")
            lines.append(_render_text(value, indent + "  "))
        elif isinstance(value, list):
            lines.append(f"{indent}{key}:")
            lines.extend(f"{indent}  - {item}" for item in value)
        else:
            lines.append(f"{indent}{key}: {value}")
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m harness up|down|status [--dir DIR] [--repo PATH] [--json]``."""
    parser = argparse.ArgumentParser(
        prog="python -m harness", description="Private MariaDB and Postfix for the local sandbox."
    )
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--dir", type=Path, default=Path("/tmp/reconciler-sandbox"), help="sandbox directory")
    parser.add_argument("--repo", type=Path, help="desired-state repository to publish (up only)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        if args.command == "up":
            out = _cmd_up(args.dir, args.repo)
        elif args.command == "down":
            out = _cmd_down(args.dir)
        else:
            out = _cmd_status(args.dir)
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2) if args.json else _render_text(out))
    return 0
