"""structlog set-up: console lines on a tty, JSON lines otherwise; used by the CLI and the agent.

Every event is a name plus key-values (never an f-string in the event name). Secrets are never
passed to a logger; ``redact`` is a last line of defence that masks values registered as secret.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from reconciler.vocab import MASK

_SECRET_VALUES: set[str] = set()


def register_secret(value: str) -> None:
    """Remember a secret value so that any log line containing it is masked."""
    if len(value) >= 4:
        _SECRET_VALUES.add(value)


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if not _SECRET_VALUES:
        return event
    for key, value in list(event.items()):
        if isinstance(value, str):
            for secret in _SECRET_VALUES:
                if secret in value:
                    value = value.replace(secret, MASK)
            event[key] = value
    return event


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog once for the process, writing to stderr."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
