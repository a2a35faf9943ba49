"""Masks secret values in text that leaves the agent (status, history, API answers, log fields).

Called by the agent loop on every error message before it is stored or served. The values are
those of every file in ``[secrets].dir``, the MySQL password, the API's token and webhook secret
and ``[notify]``'s forge token and webhook secret, re-read on each use so that a rotated secret is
masked too. The notifier scrubs every field of what it sends with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from reconciler.models import AgentConfig
from reconciler.vocab import MASK

MIN_LENGTH = 4  # shorter values would mask ordinary words
MAX_SECRET_FILE = 64 * 1024


def _values(paths: Iterable[Path]) -> set[str]:
    out: set[str] = set()
    for path in paths:
        try:
            if not path.is_file() or path.stat().st_size > MAX_SECRET_FILE:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for value in (text, text.rstrip("\n"), text.strip()):
            if len(value) >= MIN_LENGTH:
                out.add(value)
    return out


class Redactor:
    """Replaces every known secret value in a text by ``MASK``."""

    def __init__(self, cfg: AgentConfig) -> None:
        files = (
            cfg.mysql.password_file,
            cfg.api.token_file,
            cfg.api.webhook_secret_file,
            cfg.notify.token_file,
            cfg.notify.webhook_secret_file,
        )
        self._files = [p for p in files if p]
        self._secrets_dir = Path(cfg.secrets.dir)

    def values(self) -> set[str]:
        try:
            in_dir = [p for p in self._secrets_dir.iterdir() if not p.name.startswith(".")]
        except OSError:
            in_dir = []
        return _values([*in_dir, *(Path(p) for p in self._files)])

    def __call__(self, text: str | None) -> str | None:
        if not text:
            return text
        # Longest first: a secret that contains another is masked whole.
        for value in sorted(self.values(), key=len, reverse=True):
            text = text.replace(value, MASK)
        return text
