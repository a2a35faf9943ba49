"""Remote sources (https://, ssh://, git@host:path): a bare mirror of the branch in the state dir.

Source layer, called by the agent before each reconcile of a remote source (every
``[source].poll_interval`` and on ``POST /hooks/git``). The agent then reads revisions from the
mirror exactly as from a local repository. Credentials come from files named in the configuration
(``[source].ssh_key``, ``[source].token_file``); their values are never logged, never put into an
error and never written into the mirror's config (the remote URL is stored without userinfo). A
failed fetch is a ``TemporaryError``: the agent reports ``degraded`` and retries with backoff.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pygit2

from reconciler.errors import TemporaryError

REMOTE_NAME = "origin"
CONNECT_TIMEOUT_MS = 10_000
SERVER_TIMEOUT_MS = 60_000
_USERINFO_RE = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^@/]*@)", re.IGNORECASE)


def is_remote(url: str) -> bool:
    """Whether ``url`` names a remote (fetched) source rather than a local path or file:// URL."""
    if url.startswith("file://"):
        return False
    return "://" in url or bool(re.match(r"^[\w.-]+@[\w.-]+:", url))


def public_url(url: str) -> str:
    """``url`` without any user or password part, safe for logs and the status document."""
    return _USERINFO_RE.sub(lambda m: m.group("scheme"), url)


def _url_user(url: str) -> str | None:
    m = _USERINFO_RE.match(url)
    if m:
        return m.group("userinfo")[:-1].split(":", 1)[0] or None
    scp = re.match(r"^(?P<user>[\w.-]+)@[\w.-]+:", url)
    return scp.group("user") if scp else None


class _Credentials(pygit2.RemoteCallbacks):
    """Answers libgit2's credential requests from the configured files, once each."""

    def __init__(self, url: str, ssh_key: str, token_file: str) -> None:
        super().__init__()
        self._url = url
        self._ssh_key = ssh_key
        self._token_file = token_file
        self._asked: set[int] = set()

    def credentials(self, url: str, username_from_url: str | None, allowed_types: Any) -> Any:
        user = username_from_url or _url_user(self._url)
        kinds = pygit2.enums.CredentialType
        if allowed_types & kinds.SSH_KEY and self._ssh_key and kinds.SSH_KEY not in self._asked:
            self._asked.add(kinds.SSH_KEY)
            pub = f"{self._ssh_key}.pub"
            return pygit2.Keypair(user or "git", pub if Path(pub).exists() else None, self._ssh_key, "")
        if (
            allowed_types & kinds.USERPASS_PLAINTEXT
            and self._token_file
            and kinds.USERPASS_PLAINTEXT not in self._asked
        ):
            self._asked.add(kinds.USERPASS_PLAINTEXT)
            token = Path(self._token_file).read_text(encoding="utf-8").strip()
            # GitHub takes any user name with a token; x-access-token is what its apps use.
            return pygit2.UserPass(user or "x-access-token", token)
        if allowed_types & kinds.USERNAME and kinds.USERNAME not in self._asked:
            self._asked.add(kinds.USERNAME)
            return pygit2.Username(user or "git")
        # Returning nothing makes libgit2 fail the fetch with an authentication error.
        return None


class Mirror:
    """A bare repository in the state dir holding ``refs/heads/<branch>`` as fetched from ``url``."""

    def __init__(self, path: Path, url: str, branch: str, *, ssh_key: str = "", token_file: str = "") -> None:
        self.path = path
        self.url = url
        self.branch = branch
        self.ssh_key = ssh_key
        self.token_file = token_file

    @property
    def ref(self) -> str:
        return f"refs/heads/{self.branch}"

    def _open(self) -> pygit2.Repository:
        if (self.path / "HEAD").exists():
            repo = pygit2.Repository(str(self.path))
        else:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            repo = pygit2.init_repository(str(self.path), bare=True)
        # The remote is configured without userinfo: the mirror's config never holds a password.
        url = self.url
        names = [r.name for r in repo.remotes]
        if REMOTE_NAME not in names:
            repo.remotes.create(REMOTE_NAME, public_url(url))
        elif repo.remotes[REMOTE_NAME].url != public_url(url):
            repo.remotes.set_url(REMOTE_NAME, public_url(url))
        return repo

    def fetch(self) -> str:
        """Fetch the branch; returns its head commit id. Raises ``TemporaryError`` on any failure."""
        pygit2.settings.server_connect_timeout = CONNECT_TIMEOUT_MS
        pygit2.settings.server_timeout = SERVER_TIMEOUT_MS
        try:
            repo = self._open()
            remote = repo.remotes[REMOTE_NAME]
            if public_url(self.url) != self.url:
                # Userinfo in the configured URL (discouraged: use token_file) is used for this fetch only.
                remote = repo.remotes.create_anonymous(self.url)
            callbacks = _Credentials(self.url, self.ssh_key, self.token_file)
            remote.fetch([f"+{self.ref}:{self.ref}"], callbacks=callbacks, prune=pygit2.enums.FetchPrune.NO_PRUNE)
            ref = repo.references.get(self.ref)
        except (pygit2.GitError, OSError, KeyError, ValueError) as exc:
            raise TemporaryError(f"fetch of {public_url(self.url)} failed: {_scrub(str(exc), self.url)}") from None
        if ref is None:
            raise TemporaryError(f"fetch of {public_url(self.url)}: no branch {self.branch!r} on the remote")
        return str(ref.resolve().target)


def _scrub(text: str, url: str) -> str:
    # libgit2 may quote the URL it was given; never let userinfo through.
    return text.replace(url, public_url(url)) if url != public_url(url) else text
