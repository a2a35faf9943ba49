"""Opening a git repository with pygit2, including the objects of a push still in quarantine.

Called by ``source`` (snapshots, and the worker processes that read blobs) and ``signatures``.
During a ``pre-receive`` hook git keeps the pushed objects in a quarantine directory
(``GIT_QUARANTINE_PATH``, also named by ``GIT_OBJECT_DIRECTORY``), with the repository's own
objects listed in ``GIT_ALTERNATE_OBJECT_DIRECTORIES``; they reach the repository only once the
hook accepted the push. git's own tools read those variables, libgit2 does not: ``open_repository``
adds every directory they name to the object database as an alternate, so the new head and its
trees and blobs can be read before they exist in the repository. Outside a hook the variables are
unset and nothing is added. Worker processes inherit the environment, so they see the same objects.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pygit2

QUARANTINE_VARS = ("GIT_QUARANTINE_PATH", "GIT_OBJECT_DIRECTORY")
ALTERNATES_VAR = "GIT_ALTERNATE_OBJECT_DIRECTORIES"


def _split_alternates(value: str) -> list[str]:
    # git's list is colon-separated; an entry with a colon in it is C-quoted ("..."), see git's
    # parse_alt_odb_entry. Such entries are rare enough to take the quotes off and nothing more.
    out = []
    for part in value.split(os.pathsep):
        part = part.strip()
        if len(part) >= 2 and part[0] == part[-1] == '"':
            part = part[1:-1]
        if part:
            out.append(part)
    return out


def extra_object_dirs(environ: Mapping[str, str] | None = None) -> list[str]:
    """The object directories git names in the environment beside the repository's own, in order."""
    env = os.environ if environ is None else environ
    dirs = [env[name] for name in QUARANTINE_VARS if env.get(name)]
    dirs.extend(_split_alternates(env.get(ALTERNATES_VAR, "")))
    seen: set[str] = set()
    out = []
    for d in dirs:
        full = os.path.realpath(d)
        if full not in seen:
            seen.add(full)
            out.append(full)
    return out


def open_repository(path: Path | str, environ: Mapping[str, str] | None = None) -> pygit2.Repository:
    """The repository at ``path``, seeing the objects of a push in quarantine (see module docstring).

    Raises ``pygit2.GitError`` or ``KeyError`` when ``path`` is not a repository.
    """
    repo = pygit2.Repository(str(path))
    own = os.path.realpath(Path(repo.path) / "objects")
    for directory in extra_object_dirs(environ):
        if directory != own and Path(directory).is_dir():
            repo.odb.add_disk_alternate(directory)
    return repo
