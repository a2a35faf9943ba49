"""Postfix during an apply: ``postfix check``, reload or restart, and bringing it back after a rollback.

Called by the ``Applier``'s check, service and health steps and its rollback, and by crash
recovery (``reconciler.apply.recover``), which restarts a Postfix killed mid-restart.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import structlog

from reconciler.apply.steps import ApplyFailed, Step
from reconciler.errors import TemporaryError
from reconciler.plan import Action
from reconciler.postfix import ToolResult, postfix_cmd, run_tool
from reconciler.verify import check_health

log = structlog.get_logger("reconciler.apply")


def postfix_check(config_dir: Path) -> list[str]:
    """The check step: ``postfix check`` on the swapped-in configuration; its warnings (errors fail the step)."""
    res = postfix_cmd(config_dir, "check", timeout=120)
    diags = res.diagnostics
    fatal = [d.text for d in diags if d.level in ("fatal", "panic", "error")]
    if res.returncode != 0 or fatal:
        raise ApplyFailed(Step.CHECK, "; ".join(fatal or [f"postfix check exited {res.returncode}"]))
    return [d.text for d in diags if d.level == "warning"]


def take_change(config_dir: Path, action: Action) -> None:
    """The service step: reload or restart Postfix as the plan says."""
    res = restart_postfix(config_dir) if action is Action.RESTART else postfix_cmd(config_dir, "reload", timeout=60)
    if res.returncode != 0:
        detail = "; ".join(d.text for d in res.diagnostics) or f"exit {res.returncode}"
        cause: BaseException | None = None
        if postfix_cmd(config_dir, "status", timeout=30).returncode != 0:
            # The master died under us (killed, OOM): not the revision's fault, worth a retry.
            cause = TemporaryError("the Postfix master is not running")
            detail += " (the Postfix master is not running)"
        raise ApplyFailed(Step.SERVICE, f"postfix {action.value}: {detail}", cause=cause)


def confirm_health(config_dir: Path, timeout: float) -> None:
    """The health step: the master alive and every inet listener greeting 220."""
    result = check_health(config_dir, timeout)
    if not result.ok:
        raise ApplyFailed(Step.HEALTH, result.detail)


def restart_postfix(config_dir: Path) -> ToolResult:
    """Stop and start Postfix; under systemd, the system instance through systemctl.

    A ``postfix start`` run by the agent's service would put the new master into the agent's
    cgroup and sandbox (ProtectSystem, PrivateTmp); ``systemctl restart postfix`` keeps it in its own.
    """
    systemctl = shutil.which("systemctl")
    if os.environ.get("INVOCATION_ID") and systemctl and config_dir.resolve() == Path("/etc/postfix"):
        return run_tool([systemctl, "restart", "postfix.service"], timeout=120)
    postfix_cmd(config_dir, "stop", timeout=60)
    return postfix_cmd(config_dir, "start", timeout=60)


def restore_service(config_dir: Path, *, restart: bool, timeout: float) -> bool:
    """Bring Postfix back on the (restored) old configuration and confirm it is healthy."""
    if restart:
        restart_postfix(config_dir)
    else:
        postfix_cmd(config_dir, "reload", timeout=60)
    result = check_health(config_dir, timeout)
    if not result.ok:
        log.error("apply.rollback_unhealthy", detail=result.detail)
    return result.ok
