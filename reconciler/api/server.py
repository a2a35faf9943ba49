"""Serving the API: the listen address policy and a uvicorn server in a background thread.

Called by the CLI (``reconciler run``). The socket is bound in the calling thread, so that a bad or
busy address fails the command at once with exit 2. A non-loopback address is refused unless
``[api].token_file`` is set. The server idles without timers (uvicorn's 10 Hz tick loop is
replaced by an event), so an idle agent costs no CPU.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading

import uvicorn
from starlette.types import ASGIApp

from reconciler.errors import ReconcilerError


class ListenError(ReconcilerError):
    """``[api].listen`` is malformed, refused by policy, or cannot be bound."""


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ListenError(f"[api].listen {listen!r}: expected HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host:
        raise ListenError(f"[api].listen {listen!r}: the host is empty (use 127.0.0.1 or an address)")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: assume reachable from elsewhere


def bind(listen: str, *, has_token: bool) -> socket.socket:
    """The listening socket for ``listen``; refuses a non-loopback address without a token."""
    host, port = parse_listen(listen)
    if not is_loopback(host) and not has_token:
        raise ListenError(
            f"[api].listen {listen}: refusing to listen on a non-loopback address without [api].token_file"
        )
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"[api].listen {listen}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise ListenError(f"[api].listen {listen}: {exc.strerror}") from None
    sock.set_inheritable(False)
    return sock


class _QuietServer(uvicorn.Server):
    """uvicorn without its 10 Hz tick loop: waits on an event until asked to exit."""

    _exit_event: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._exit_event = asyncio.Event()
        await self.on_tick(0)  # sets the default headers once
        if not self.should_exit:
            await self._exit_event.wait()

    def request_exit(self) -> None:
        self.should_exit = True
        loop, event = self._loop, self._exit_event
        if loop is not None and event is not None:
            loop.call_soon_threadsafe(event.set)


class ApiServer:
    """The API served from a daemon thread on an already bound socket."""

    def __init__(self, app: ASGIApp, sock: socket.socket) -> None:
        config = uvicorn.Config(
            app,
            log_config=None,  # structlog owns the output; uvicorn's own errors still reach stderr
            access_log=False,
            date_header=False,
            server_header=False,
            timeout_graceful_shutdown=5,
            lifespan="off",
        )
        self._server = _QuietServer(config)
        self._sock = sock
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="api", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout / 0.02)):
            if self._server.started or not self._thread.is_alive():
                break
            deadline.wait(0.02)
        if not self._server.started:
            raise ListenError("the API server did not start")

    def stop(self) -> None:
        self._server.request_exit()
        self._thread.join(timeout=10)
