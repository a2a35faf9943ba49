"""``reconciler status`` (and ``--fleet``): the running agent's status from its API, else as recorded.

Called through ``reconciler.cli.main``; the text is rendered by ``reconciler.cli.render``. Exit 0
when synced (every host synced at the head, for the fleet), 1 otherwise, 2 when there is no status.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import structlog

from reconciler.cli.config import EXIT_ERROR, EXIT_FAIL, EXIT_OK, read_config
from reconciler.cli.render import fleet_text, status_text
from reconciler.errors import ReconcilerError
from reconciler.models import AgentConfig
from reconciler.status import AgentState, Fleet, Status

log = structlog.get_logger("reconciler.cli")


def _agent_url(listen: str) -> str:
    from reconciler.api.server import parse_listen

    host, port = parse_listen(listen)
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard listener is reached on loopback
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"  # noqa: S104
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _agent_status(cfg: AgentConfig) -> Status | None:
    """The running agent's status from its API, None when no agent answers."""
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
        sys.stdout.write(fleet_text(fleet, head))
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
        sys.stdout.write(status_text(status, origin))
    return EXIT_OK if status.state is AgentState.SYNCED else EXIT_FAIL
