"""Where the agent reads the branch head: the local repository, or the mirror of a remote one.

Called by the agent loop before every reconcile. ``engine_config`` points the engine at the mirror
for a remote source, so that the engine reads revisions the same way in both cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pygit2

from reconciler.engine import local_repo_path
from reconciler.errors import SourceError
from reconciler.models import AgentConfig
from reconciler.source_remote import Mirror, is_remote

MIRROR_DIR = "mirror.git"


@dataclass(frozen=True)
class CommitMeta:
    """Subject, author and author time of a commit, for the history and the status (in-memory)."""

    subject: str | None
    author: str | None
    time: datetime | None = None


class BranchSource:
    """The configured branch of the configured source."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.branch = cfg.source.branch
        self.remote = is_remote(cfg.source.url)
        self.mirror: Mirror | None = None
        if self.remote:
            self.mirror = Mirror(
                Path(cfg.state.dir) / MIRROR_DIR,
                cfg.source.url,
                cfg.source.branch,
                ssh_key=cfg.source.ssh_key,
                token_file=cfg.source.token_file,
            )
            self.repo_path = self.mirror.path
            source = cfg.source.model_copy(update={"url": str(self.mirror.path)})
            self.engine_config = cfg.model_copy(update={"source": source})
        else:
            self.repo_path = local_repo_path(cfg.source.url)
            self.engine_config = cfg

    def fetch(self) -> None:
        """Bring the mirror up to date (remote sources only); raises ``TemporaryError``."""
        if self.mirror is not None:
            self.mirror.fetch()

    def _repo(self) -> pygit2.Repository:
        try:
            return pygit2.Repository(str(self.repo_path))
        except (pygit2.GitError, KeyError) as exc:
            raise SourceError(f"{self.repo_path}: not a git repository") from exc

    def head(self) -> str:
        """The commit id the branch points at now."""
        ref = self._repo().references.get(f"refs/heads/{self.branch}")
        if ref is None:
            raise SourceError(f"{self.repo_path}: no branch {self.branch!r}")
        return str(ref.resolve().target)

    def commit_meta(self, revision: str) -> CommitMeta:
        """Subject and author of ``revision`` (None when it cannot be read)."""
        try:
            commit = self._repo()[revision]
            if not isinstance(commit, pygit2.Commit):
                return CommitMeta(None, None)
            message: str = commit.message
            author = f"{commit.author.name} <{commit.author.email}>"
            when = datetime.fromtimestamp(commit.author.time, UTC)
            return CommitMeta(message.splitlines()[0] if message else "", author, when)
        except (SourceError, KeyError, ValueError, AttributeError, OverflowError, OSError, pygit2.GitError):
            return CommitMeta(None, None)
