"""Fleet host files: ``hosts/<name>.yaml`` parsed into ``HostSpec``s and a host's view of ``postfix/``.

Called by ``desired.build`` (a host's files), ``reconciler.engine`` (waves) and tests (SPEC 6).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from pydantic import ValidationError

from reconciler.cfparse import set_parameters
from reconciler.desired.text import secret_refs, shape_problem, text_problems
from reconciler.desired.types import (
    HOSTS_DIR,
    MAX_FILE_SIZE,
    MAX_PROBLEMS_PER_FILE,
    POSTFIX_DIR,
    DesiredFile,
    HostSpec,
)
from reconciler.desired.yamlfile import YamlLines, load_yaml, validation_problems
from reconciler.errors import Problem
from reconciler.models import HostFile
from reconciler.source import EntryKind, Snapshot


def host_specs(snapshot: Snapshot) -> tuple[dict[str, HostSpec], list[Problem]]:
    """Every ``hosts/<name>.yaml`` with its ``hosts/<name>/postfix/`` files, and their problems."""
    problems: list[Problem] = []
    models: dict[str, tuple[str, HostFile]] = {}
    replacements: dict[str, dict[str, DesiredFile]] = {}
    for path in sorted(p for p in snapshot.entries if p.startswith(HOSTS_DIR)):
        entry = snapshot.entries[path]
        if entry.kind not in (EntryKind.FILE, EntryKind.EXECUTABLE):
            continue  # symlinks and the like: reported by build_desired
        parts = path.split("/")
        if entry.size > MAX_FILE_SIZE:
            problems.append(Problem(path, None, f"file is {entry.size} bytes; the limit is {MAX_FILE_SIZE}"))
            continue
        if len(parts) == 2 and parts[1].endswith(".yaml"):
            model, file_problems = parse_host_file(path, snapshot.read(path))
            problems.extend(file_problems)
            if model is not None:
                models[model.host] = (path, model)
            continue
        if len(parts) >= 4 and parts[2] == "postfix":
            # The same shapes as postfix/ itself, subdirectories included (postfix/sql/...).
            name = "/".join(parts[3:])
            shape = shape_problem(POSTFIX_DIR + name)
            if shape:
                problems.append(Problem(path, None, shape))
                continue
            desired_file, file_problems = read_file(snapshot, path, name, entry.blob_id)
            problems.extend(file_problems)
            if desired_file is not None:
                replacements.setdefault(parts[1], {})[name] = desired_file
            continue
        problems.append(
            Problem(path, None, "unexpected path: hosts/ holds <name>.yaml and <name>/postfix/<file> replacements")
        )
    for name in sorted(set(replacements) - set(models)):
        where = f"{HOSTS_DIR}{name}/postfix"
        problems.append(Problem(where, None, f"no host file {HOSTS_DIR}{name}.yaml for these files"))
    hosts = {
        name: HostSpec(name, path, model.wave, dict(model.main_cf), replacements.get(name, {}))
        for name, (path, model) in models.items()
    }
    return hosts, problems


def read_file(snapshot: Snapshot, path: str, name: str, blob_id: str) -> tuple[DesiredFile | None, list[Problem]]:
    """A managed file (``postfix/``, ``rootfs/`` or a host's replacement): text checks, secret refs."""
    data = snapshot.read(path)
    problems = text_problems(path, data)
    if problems:
        return None, problems
    secrets, secret_problems = secret_refs(path, data.decode("utf-8"))
    return DesiredFile(name, blob_id, data, secrets), secret_problems


def host_tree(files: Mapping[str, DesiredFile], host: HostSpec) -> dict[str, DesiredFile]:
    """A host's desired files: the shared ones, its replacements, its main.cf parameters set."""
    out = {**files, **host.files}
    main = out.get("main.cf")
    if host.main_cf and main is not None:
        text = set_parameters(main.template.decode("utf-8"), host.main_cf, comment=f"set by {host.path}")
        data = text.encode("utf-8")
        # Not a blob of the repository: an id of its own, so that caches keyed by blob ids see a new file.
        blob = "host-" + hashlib.sha1(data, usedforsecurity=False).hexdigest()
        secrets, _ = secret_refs(host.path, text)
        out["main.cf"] = DesiredFile("main.cf", blob, data, secrets)
    return out


def parse_host_file(path: str, data: bytes) -> tuple[HostFile | None, list[Problem]]:
    """Parse and check one ``hosts/<name>.yaml``; problems carry the file's line numbers."""
    text_problem = text_problems(path, data)
    if text_problem:
        return None, text_problem
    raw, problems = load_yaml(path, data)
    if problems:
        return None, problems
    lines = YamlLines(data.decode("utf-8"))
    if not isinstance(raw, dict):
        return None, [Problem(path, 1, "a host file must be a mapping with a 'host' key")]
    try:
        model = HostFile.model_validate(raw)
    except ValidationError as exc:
        problems.extend(validation_problems(path, lines, exc, MAX_PROBLEMS_PER_FILE))
        return None, problems
    stem = path[len(HOSTS_DIR) :].removesuffix(".yaml")
    if model.host != stem:
        return None, [Problem(path, lines.at(["host"]), f"host {model.host!r} must equal the file name {stem!r}")]
    return model, []
