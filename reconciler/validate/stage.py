"""Staging a revision's ``postfix/`` tree and running Postfix's own checks on it.

The files are written into a temporary config directory with every ``${secret:NAME}`` replaced by
a dummy of the same shape, then checked with ``postconf -n``, ``-M`` and ``-P`` (every ``warning:``
line is an error) and every table built or parsed as Postfix would. Called by ``validate``;
results are cached by the tree (``parsecache``).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from reconciler.cfparse import parse_main_cf
from reconciler.desired.types import POSTFIX_DIR, DesiredFile, repo_path
from reconciler.errors import Problem
from reconciler.postfix import (
    TableRef,
    ToolResult,
    backdate,
    parse_parameters,
    postconf,
    supported_table_types,
)
from reconciler.tables import TableDecl, built_suffixes
from reconciler.validate.lines import LineMapper, staged_name
from reconciler.validate.tables import check_table, config_relative, discover_tables, mysql_cf_problems, mysql_tables
from reconciler.vocab import SECRET_REF_BYTES

DEFAULT_LIVE_CONFIG_DIR = "/etc/postfix"
DEFAULT_OUTSIDE_PATHS: tuple[str, ...] = ("/etc/aliases",)
DUMMY_SECRET = "Dummy-Secret-0"  # noqa: S105 - a placeholder value for staging, not a credential

# Parameters Postfix 3.6+ still accepts but silently ignores (postconf(5)); postconf prints nothing.
IGNORED_SINCE_3_6 = {
    "smtpd_tls_dh512_param_file": "export-grade Diffie-Hellman is gone since Postfix 3.6",
    "tlsproxy_tls_dh512_param_file": "export-grade Diffie-Hellman is gone since Postfix 3.6",
    "smtpd_tls_eecdh_grade": "Postfix 3.6+ ignores it and uses tls_eecdh_auto_curves",
    "tlsproxy_tls_eecdh_grade": "Postfix 3.6+ ignores it and uses tls_eecdh_auto_curves",
}


def param_at(lines: list[str], line: int) -> str | None:
    """The main.cf parameter whose setting covers physical ``line`` (1-based), else None."""
    for number in range(min(line, len(lines)), 0, -1):
        raw = lines[number - 1]
        if raw.strip() and not raw[:1].isspace() and not raw.lstrip().startswith("#"):
            name, sep, _ = raw.partition("=")
            return name.strip() if sep else None
    return None


def stage_key(files: Mapping[str, DesiredFile], live_config_dir: str) -> str:
    """Identity of a staged check: every postfix/ blob, the live dir and the Postfix binary."""
    h = hashlib.sha256(live_config_dir.encode())
    for name in sorted(files):
        h.update(f"\0{name}\0{files[name].blob_id}".encode())
    try:
        st = Path(shutil.which("postconf") or "postconf").stat()
        h.update(f"\0{st.st_mtime_ns}:{st.st_size}".encode())
    except OSError:
        pass
    return h.hexdigest()


def stage_files(
    files: Mapping[str, DesiredFile],
    stage: Path,
    secrets: Mapping[str, bytes] | None,
    live_config_dir: str = DEFAULT_LIVE_CONFIG_DIR,
) -> None:
    """Write the files into ``stage``, secrets substituted (dummies when ``secrets`` is None).

    References to the live config directory by absolute path point into the stage instead, so
    that Postfix checks the staged mysql-*.cf and tables rather than whatever is live.
    """
    live = _live_prefix(live_config_dir)
    for name, f in files.items():
        data = f.template.replace(live, str(stage).encode() + b"/")
        if f.secrets:
            data = SECRET_REF_BYTES.sub(
                lambda m: _secret_value(m.group(0), secrets),
                data,
            )
        target = stage / staged_name(name)
        if target.parent != stage:
            target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        backdate(target)


def _live_prefix(live_config_dir: str) -> bytes:
    """What ``stage_files`` rewrites to the stage: the live config dir as a path prefix."""
    return live_config_dir.rstrip("/").encode() + b"/"


def _secret_value(ref: bytes, secrets: Mapping[str, bytes] | None) -> bytes:
    name = ref[len(b"${secret:") : -1].decode()
    if secrets is None:
        return DUMMY_SECRET.encode()
    return secrets[name]


def check_postfix_tree(
    files: Mapping[str, DesiredFile],
    live_config_dir: str = DEFAULT_LIVE_CONFIG_DIR,
    built_dir: Path | None = None,
    stage_key: str = "",
    notes: list[Problem] | None = None,
) -> tuple[list[TableDecl], list[Problem]]:
    """Stage the files with dummy secrets and run Postfix's checks; returns tables and problems.

    With ``built_dir``, the tables built cleanly from exactly the repo's bytes (no secret, no live
    path in them) are moved there under their build key, for the applier to reuse.
    """
    with tempfile.TemporaryDirectory(prefix="reconciler-stage-") as tmp:
        stage = Path(tmp)
        stage_files(files, stage, None, live_config_dir)
        tables, problems = _check_stage(stage, files, live_config_dir, notes if notes is not None else [])
        if built_dir is None or problems:
            return tables, problems
        return [_keep_built(stage, files, t, built_dir, stage_key, live_config_dir) for t in tables], problems


def _keep_built(
    stage: Path, files: Mapping[str, DesiredFile], spec: TableDecl, built_dir: Path, key: str, live_config_dir: str
) -> TableDecl:
    source = files.get(spec.name)
    if spec.builder not in ("postmap", "postalias") or source is None or source.secrets:
        return spec
    if _live_prefix(live_config_dir) in source.template:
        return spec  # the staged copy is not what goes live (a live path rewritten): neither is its build
    build_key = hashlib.sha256(f"{key}\0{spec.name}\0{spec.type}\0{spec.builder}".encode()).hexdigest()
    built = [stage / f"{staged_name(spec.name)}{suffix}" for suffix in built_suffixes(spec.type)]
    if not all(p.is_file() for p in built):
        return spec
    target = built_dir / build_key
    shutil.rmtree(target, ignore_errors=True)
    try:
        target.mkdir(mode=0o700, parents=True)
        for path in built:
            shutil.move(path, target / path.name)  # the base name: built_files looks for that
    except OSError:  # a full state dir: not kept, the applier builds the table itself
        shutil.rmtree(target, ignore_errors=True)
        return spec
    return TableDecl(spec.name, spec.type, spec.builder, spec.parameters, build_key)


def _check_stage(
    stage: Path, files: Mapping[str, DesiredFile], live_config_dir: str, notes: list[Problem]
) -> tuple[list[TableDecl], list[Problem]]:
    mapper = LineMapper(stage, files)
    problems: list[Problem] = []
    results: dict[str, ToolResult] = {}
    for flag in ("-n", "-M", "-P"):
        results[flag] = postconf(stage, flag, "-x")
        problems.extend(mapper.problems(results[flag]))
    if any(r.returncode != 0 for r in results.values()):
        return [], problems
    params = parse_parameters(results["-n"].stdout)
    service_params = parse_parameters(results["-P"].stdout)
    outside: list[TableRef] = []
    tables, missing = discover_tables(stage, files, params, service_params, live_config_dir, outside)
    for ref in missing:
        file = "master.cf" if "/" in ref.parameter else "main.cf"
        rel = config_relative(ref.path, stage, live_config_dir) or Path(ref.path).name
        problems.append(
            Problem(
                POSTFIX_DIR + file,
                mapper.parameter_line(ref.parameter.rsplit("/", 1)[-1], file),
                f"{ref.parameter} names {ref.type}:{ref.path}, but postfix/{rel} is not in the repo",
            )
        )
    for ref in outside:
        file = "master.cf" if "/" in ref.parameter else "main.cf"
        notes.append(
            Problem(
                POSTFIX_DIR + file,
                mapper.parameter_line(ref.parameter.rsplit("/", 1)[-1], file),
                f"{ref.parameter} names {ref.type}:{ref.path} outside the config directory: left alone "
                f"(to manage it: rootfs{ref.path} in the repo and the path in [postfix].outside_paths)",
            )
        )
    supported = supported_table_types(stage)
    for spec in tables:
        if spec.type not in supported:
            problems.append(
                Problem(
                    POSTFIX_DIR + "main.cf",
                    mapper.parameter_line(spec.parameters[0]),
                    f"table type {spec.type}: is not supported by this Postfix (postconf -m); "
                    f"install Debian's postfix-{spec.type} package",
                )
            )
            continue
        problems.extend(mapper.problems(check_table(stage, spec)))
    problems.extend(ignored_parameter_problems(files, mapper))
    mysql_files = mysql_tables(stage, live_config_dir, params, service_params)
    for name in sorted(files):
        base = name.rsplit("/", 1)[-1]
        if (base.startswith("mysql") and base.endswith(".cf")) or name in mysql_files:
            problems.extend(mysql_cf_problems(repo_path(name), files[name].template.decode("utf-8")))
    return tables, problems


def ignored_parameter_problems(files: Mapping[str, DesiredFile], mapper: LineMapper) -> list[Problem]:
    """Parameters Postfix accepts without a warning but ignores, and SSLv3 in a cipher list."""
    out: list[Problem] = []
    params = parse_main_cf(files["main.cf"].template.decode("utf-8"))
    for name, value in sorted(params.items()):
        if name in IGNORED_SINCE_3_6:
            out.append(
                Problem(
                    POSTFIX_DIR + "main.cf",
                    mapper.parameter_line(name),
                    f"{name} is ignored by Postfix: {IGNORED_SINCE_3_6[name]}; remove it",
                )
            )
        if name.endswith("cipherlist") and "SSLv3" in value:
            out.append(
                Problem(
                    POSTFIX_DIR + "main.cf",
                    mapper.parameter_line(name),
                    f"{name} names SSLv3: in a cipher list OpenSSL reads it as a cipher class, it does not "
                    "turn the protocol off (use smtpd_tls_protocols / smtpd_tls_mandatory_protocols)",
                )
            )
    level = params.get("smtp_tls_security_level", "")
    if level in ("dane", "dane-only") and params.get("smtp_dns_support_level", "").lower() != "dnssec":
        out.append(
            Problem(
                POSTFIX_DIR + "main.cf",
                mapper.parameter_line("smtp_tls_security_level"),
                f"smtp_tls_security_level = {level} needs smtp_dns_support_level = dnssec; "
                "without DNSSEC lookups Postfix silently falls back to opportunistic TLS",
            )
        )
    return out
