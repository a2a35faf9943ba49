"""The verify stage: is the live Postfix healthy?

Called by ``apply`` after a reload or restart (and after a rollback), and by the agent. Postfix
reloads asynchronously and a bad value (``smtpd_client_connection_count_limit = banana``) passes
``postconf`` and the reload, then kills every smtpd at its first connection; only a real probe
catches that. Healthy means: the master runs and every inet listener of master.cf answers an SMTP
``220`` greeting within the timeout, on two consecutive probes.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from reconciler.cfparse import inet_listeners
from reconciler.postfix import postconf, postfix_cmd


@dataclass(frozen=True)
class Health:
    """Outcome of one health check (in-memory result)."""

    ok: bool
    detail: str


def listener_addresses(config_dir: Path) -> list[tuple[str, str, int]]:
    """(service, host, port) for every inet listener, resolving inet_interfaces and service names."""
    master = (config_dir / "master.cf").read_text(encoding="utf-8", errors="replace")
    interfaces = postconf(config_dir, "-h", "inet_interfaces").stdout.strip()
    default_hosts = []
    for item in interfaces.replace(",", " ").split():
        if item in ("all", "loopback-only", "localhost"):
            default_hosts.append("127.0.0.1")
        else:
            default_hosts.append(item.strip("[]"))
    out: list[tuple[str, str, int]] = []
    for listener in inet_listeners(master):
        try:
            port = int(listener.port) if listener.port.isdigit() else socket.getservbyname(listener.port, "tcp")
        except OSError:
            continue
        hosts = [listener.host] if listener.host else default_hosts or ["127.0.0.1"]
        out.extend((listener.service, h, port) for h in hosts)
    return out


def smtp_greeting(host: str, port: int, timeout: float) -> str | None:
    """The first greeting line of an SMTP listener, or None when it does not greet in time."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\n" not in data and len(data) < 4096:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                data += chunk
            with contextlib.suppress(OSError):
                sock.sendall(b"QUIT\r\n")
    except OSError:
        return None
    line = data.split(b"\n", 1)[0].decode("ascii", "replace").strip()
    return line or None


def check_health(config_dir: Path, timeout: float, settle: float = 0.3) -> Health:
    """Master running and every inet listener greeting with 220 twice in a row, within ``timeout``."""
    deadline = time.monotonic() + timeout
    time.sleep(settle)  # postfix reload is asynchronous: let the master re-read its configuration
    if postfix_cmd(config_dir, "status", timeout=30).returncode != 0:
        return Health(False, "the Postfix master is not running")
    listeners = listener_addresses(config_dir)
    for service, host, port in listeners:
        good = 0
        last = "no answer"
        while good < 2:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Health(False, f"{service} on {host}:{port} did not greet with 220 ({last})")
            greeting = smtp_greeting(host, port, min(remaining, 5.0))
            if greeting is not None and greeting.startswith("220"):
                good += 1
            else:
                good = 0
                last = greeting or "connection closed without a greeting"
                time.sleep(0.1)
    return Health(True, f"{len(listeners)} listener(s) greeted")
