"""Request authentication of the HTTP API: bearer tokens and push-webhook signatures.

Pure functions called by the API handlers. Every comparison is constant-time
(``hmac.compare_digest``). A missing or wrong credential is simply "not authenticated": which part
was wrong is never told to the client, and no credential is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from reconciler.errors import ReconcilerError


class CredentialFileError(ReconcilerError):
    """A configured token or webhook secret file cannot be used."""


def read_credential(path: str, what: str) -> str | None:
    """The credential in ``path`` (surrounding whitespace dropped); None when no file is configured."""
    if not path:
        return None
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialFileError(f"{what} {path}: cannot read it ({exc.__class__.__name__})") from None
    if len(value) < 8:
        raise CredentialFileError(f"{what} {path}: shorter than 8 characters")
    return value


def bearer_ok(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>``."""
    if not authorization:
        return False
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


def webhook_ok(body: bytes, secret: str, *, github_signature: str | None, gitlab_token: str | None) -> bool:
    """GitHub's ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`` or GitLab's ``X-Gitlab-Token``."""
    if github_signature:
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(github_signature.strip().lower().encode(), expected.encode())
    if gitlab_token:
        return hmac.compare_digest(gitlab_token.encode(), secret.encode())
    return False
