"""A tiny sd_notify(3): READY=1, WATCHDOG=1, STATUS=..., STOPPING=1 over ``$NOTIFY_SOCKET``.

Called by the agent loop. A no-op when not started by systemd (no ``NOTIFY_SOCKET``). The socket is
a datagram socket, by path or in the abstract namespace (a name starting with ``@``).
"""

from __future__ import annotations

import os
import socket

SEND_TIMEOUT = 1.0  # seconds a notification may wait for room in the receiver's queue


def notify(*fields: str) -> bool:
    """Send ``fields`` (e.g. ``"READY=1"``) to systemd; False when there is no one to tell."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # A reader that falls behind fills its queue (net.unix.max_dgram_qlen, often 10
            # datagrams) and a blocking send would then stop the reconcile loop: wait 1 s at most.
            sock.settimeout(SEND_TIMEOUT)
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except OSError:  # includes the timeout: the message is dropped, the agent goes on
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings systemd expects (half of ``WatchdogSec``), None when off."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.5, int(usec) / 2_000_000)
    except ValueError:
        return None
