"""Sandboxing a desired-state repository: its ``postfix/`` folder edited to run as a private instance.

Callers: ``tests/mailhost.py``, ``tests/fleethost.py``, tests that build a mail host from
example-repo, ``bench/`` and ``harness.cli`` (``python -m harness up``).

``sandboxize_postfix_tree`` edits a copy of the folder so that it runs as a ``PostfixInstance``:
loopback ports, the instance's directories, the private MariaDB's port, no amavis or milter, no
relayhost, a snakeoil certificate. Every main.cf/master.cf edit goes through Postfix's ``postconf``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from harness.common import SandboxError, find_tool, free_port, run
from harness.mariadb import DATABASE, LOOKUP_USER
from harness.postfix import SANDBOX_HOSTNAME, PostfixInstance, cool_down, sandbox_parameters
from reconciler.postfix import parse_parameters
from reconciler.vocab import SECRET_NAME, SECRET_REF

# Secret that a sandboxed mysql-*.cf reads its password from when the repository wrote it literally.
LOOKUP_PASSWORD_SECRET: Final = "sandbox-mysql-lookup-password"  # noqa: S105 - a secret's name


def _secret_names(text: str) -> set[str]:
    """The well-formed ``${secret:NAME}`` names in ``text`` (a malformed one is validate's to report)."""
    return {name for name in SECRET_REF.findall(text) if SECRET_NAME.match(name)}


@dataclass(frozen=True)
class SandboxedTree:
    """What ``sandboxize_postfix_tree`` changed (in-memory result).

    ``ports`` maps each inet service of master.cf (by its original name) to its loopback port;
    ``lookup_secrets`` are the secret names the mysql-*.cf files read their password from;
    ``other_secrets`` every other ``${secret:NAME}`` the tree refers to; ``notes`` says what was
    removed or rewritten, one line each.
    """

    ports: Mapping[str, int]
    lookup_secrets: tuple[str, ...]
    other_secrets: tuple[str, ...]
    notes: tuple[str, ...]


# main.cf parameters that would reach a service this sandbox does not have.
_DROP_PARAMS: Final = (
    "content_filter",  # amavis
    "smtpd_proxy_filter",  # before-queue amavis
    "smtpd_milters",
    "non_smtpd_milters",
    "smtp_bind_address",
    "smtp_bind_address6",
    "proxy_interfaces",  # a host name there is resolved at startup
    # Routes off this host: outbound mail must stay on the loopback nexthop of default_transport.
    "relayhost",
    "sender_dependent_relayhost_maps",
    "sender_dependent_default_transport_maps",
    "smtp_fallback_relay",
)
_SNAKEOIL_PARAMS: Final = ("smtpd_tls_cert_file", "smtpd_tls_key_file")
_DROP_TLS_PARAMS: Final = (
    "smtpd_tls_chain_files",
    "smtpd_tls_eccert_file",
    "smtpd_tls_eckey_file",
    "smtpd_tls_dcert_file",
    "smtpd_tls_dkey_file",
)
_TLS_FILE_RE: Final = re.compile(r"_tls_\w*(?:_file|_files|CAfile|CApath)\Z")
# Postscreen's deep protocol tests make every first connection fail with 450 by design; the
# sandbox turns them off (and shortens the greet wait) so that one SMTP session answers.
_POSTSCREEN_SANDBOX: Final = {
    "postscreen_dnsbl_sites": "",
    "postscreen_pipelining_enable": "no",
    "postscreen_non_smtp_command_enable": "no",
    "postscreen_bare_newline_enable": "no",
    "postscreen_greet_wait": "1s",
}


def snakeoil_certificate(directory: Path, hostname: str = SANDBOX_HOSTNAME) -> tuple[Path, Path]:
    """A self-signed certificate and its key in ``directory`` (made once with openssl, then reused)."""
    cert, key = directory / "snakeoil.crt", directory / "snakeoil.key"
    if cert.exists() and key.exists():
        return cert, key
    directory.mkdir(parents=True, exist_ok=True)
    run(
        [
            find_tool("openssl"),
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            f"/CN={hostname}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ]
    )
    key.chmod(0o600)
    return cert, key


def _is_port_25(service: str) -> bool:
    port = service.rpartition(":")[2]
    return port in ("smtp", "25")


def sandboxize_postfix_tree(
    postfix_dir: Path,
    instance: PostfixInstance,
    mysql_port: int,
    *,
    lookup_user: str = LOOKUP_USER,
    database: str = DATABASE,
    live_config_dir: str = "/etc/postfix",
    postscreen_deep_tests: bool = False,
) -> SandboxedTree:
    """Edit a copy of a repository's ``postfix/`` folder so that it runs as ``instance``.

    main.cf gets the instance's directories, loopback-only listening, logging to its maillog, no
    relayhost, no content filter or milter, a snakeoil certificate and no outbound delivery. Every
    inet service of master.cf moves to a loopback port (the one for port 25 to ``instance.smtp_port``)
    and nothing chroots. mysql-*.cf files point at ``inet:127.0.0.1:mysql_port`` as ``lookup_user``.
    Absolute references to ``live_config_dir`` become references to the instance's config_dir.
    Uses Postfix's own ``postconf -c postfix_dir -e/-X/-Fe/-Pe/-PX`` for every main/master edit.
    """
    main_cf, master_cf = postfix_dir / "main.cf", postfix_dir / "master.cf"
    for required in (main_cf, master_cf):
        if not required.is_file():
            raise SandboxError(f"{required} does not exist")
    postconf_argv = [find_tool("postconf"), "-c", str(postfix_dir)]

    def postconf(*args: str) -> str:
        out = run([*postconf_argv, *args]).stdout
        cool_down(main_cf, master_cf)
        return out

    notes: list[str] = []

    # Paths first, so that the postconf edits below see and keep the instance's directory.
    live = live_config_dir.rstrip("/") + "/"
    for path in sorted(p for p in postfix_dir.iterdir() if p.is_file()):
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        if live in text:
            path.write_text(
                text.replace(live, str(instance.config_dir) + "/"), encoding="utf-8", errors="surrogateescape"
            )
            notes.append(f"{path.name}: {live} -> {instance.config_dir}/")
    cool_down(main_cf, master_cf)

    settings = sandbox_parameters(
        instance.queue_dir, instance.data_dir, maillog=instance.maillog, syslog_name=instance.syslog_name
    )
    # Before anything reads the configuration back: postconf -n itself fails ("no local interface
    # found for 192.0.2.40") while inet_interfaces names another host's addresses.
    postconf("-e", *(f"{name}={value}" for name, value in settings.items()))
    postconf("-X", "proxy_interfaces")
    current = parse_parameters(postconf("-n"))
    cert, key = snakeoil_certificate(instance.base / "tls")
    settings.update({name: str(cert) if name.endswith("cert_file") else str(key) for name in _SNAKEOIL_PARAMS})
    if "myhostname" not in current:
        settings["myhostname"] = SANDBOX_HOSTNAME
    master_fields = parse_parameters(postconf("-F"))
    uses_postscreen = any(
        key.endswith("/command") and value.split()[:1] == ["postscreen"] for key, value in master_fields.items()
    )
    if uses_postscreen and not postscreen_deep_tests:
        settings.update(_POSTSCREEN_SANDBOX)
        notes.append("main.cf: postscreen without DNSBLs and deep protocol tests, greet wait 1s")
    drop: list[str] = [name for name in (*_DROP_PARAMS, *_DROP_TLS_PARAMS) if name in current]
    # Other TLS files (DH parameters, CA files) are dropped when the sandbox host lacks them.
    drop.extend(
        name
        for name, value in current.items()
        if _TLS_FILE_RE.search(name)
        and name not in _SNAKEOIL_PARAMS
        and name not in drop
        and not _tls_paths_exist(value, postfix_dir, instance.config_dir)
    )
    postconf("-e", *(f"{name}={value}" for name, value in settings.items()))
    if drop:
        postconf("-X", *drop)
        notes.extend(f"main.cf: removed {name} = {current[name]}" for name in drop)

    ports = _sandboxize_master(postconf, instance, cert, key, notes)
    lookup_secrets = _sandboxize_mysql_tables(postfix_dir, mysql_port, lookup_user, database, notes)
    referenced: set[str] = set()
    for path in postfix_dir.rglob("*"):
        if path.is_file():
            referenced.update(_secret_names(path.read_text(encoding="utf-8", errors="replace")))
    return SandboxedTree(
        ports=ports,
        lookup_secrets=tuple(sorted(lookup_secrets)),
        other_secrets=tuple(sorted(referenced - lookup_secrets)),
        notes=tuple(notes),
    )


def _tls_paths_exist(value: str, tree: Path, config_dir: Path) -> bool:
    """Whether every file a TLS parameter names exists (in the tree, for $config_directory paths)."""
    for item in re.split(r"[\s,]+", value):
        if not item:
            continue
        for prefix in ("${config_directory}/", "$config_directory/", "$(config_directory)/"):
            if item.startswith(prefix):
                item = str(tree / item[len(prefix) :])
        if item.startswith(str(config_dir) + "/"):
            item = str(tree / item[len(str(config_dir)) + 1 :])
        if "$" in item or not Path(item).exists():
            return False
    return True


def _sandboxize_master(
    postconf: Callable[..., str], instance: PostfixInstance, cert: Path, key: Path, notes: list[str]
) -> dict[str, int]:
    fields = parse_parameters(postconf("-F"))
    services = sorted({key_.rsplit("/", 1)[0] for key_ in fields})  # "name/type"
    edits: list[str] = []
    for svc in services:
        chroot = fields.get(f"{svc}/chroot", "-")
        if chroot in ("y", "yes"):
            edits.append(f"{svc}/chroot=n")
    if not any(fields.get(f"{svc}/command", "").split()[:1] == ["postlogd"] for svc in services):
        postconf("-Me", "postlog/unix-dgram=postlog unix-dgram n - n - 1 postlogd")
        notes.append("master.cf: added the postlog service (maillog_file needs postlogd)")

    overrides = parse_parameters(postconf("-P"))
    remove: list[str] = []
    set_: list[str] = []
    for key_, value in overrides.items():
        name = key_.rsplit("/", 1)[1]
        if name in _DROP_PARAMS and value:
            remove.append(key_)
            notes.append(f"master.cf: removed -o {name}={value} from {key_.rsplit('/', 1)[0]}")
        elif name in _SNAKEOIL_PARAMS:
            set_.append(f"{key_}={cert if name.endswith('cert_file') else key}")
        elif name == "syslog_name" and value.startswith("postfix/"):
            set_.append(f"{key_}={instance.syslog_name}/{value.removeprefix('postfix/')}")
    if remove:
        postconf("-PX", *remove)
    if set_:
        postconf("-Pe", *set_)

    # Renaming goes last: the edits above address services by their original names.
    ports: dict[str, int] = {}
    inet = [svc.rsplit("/", 1)[0] for svc in services if svc.endswith("/inet")]
    taken = {instance.smtp_port}
    for name in inet:
        if _is_port_25(name) and instance.smtp_port not in ports.values():
            port = instance.smtp_port
        else:
            port = free_port()
            while port in taken:
                port = free_port()
        taken.add(port)
        ports[name] = port
        edits.append(f"{name}/inet/service=127.0.0.1:{port}")
    if edits:
        postconf("-Fe", *edits)
    notes.extend(f"master.cf: {name} listens on 127.0.0.1:{port}" for name, port in ports.items())
    return ports


def _sandboxize_mysql_tables(tree: Path, mysql_port: int, user: str, database: str, notes: list[str]) -> set[str]:
    """Point every mysql-*.cf at the private MariaDB; the secrets their passwords come from."""
    secrets_used: set[str] = set()
    for path in sorted(tree.glob("mysql*.cf")):
        lines = path.read_text(encoding="utf-8").splitlines()
        wanted = {"hosts": f"inet:127.0.0.1:{mysql_port}", "user": user, "dbname": database}
        out: list[str] = []
        skipping = False
        for line in lines:
            if skipping and line[:1].isspace() and line.strip():
                continue  # continuation of a value we replaced
            skipping = False
            name, sep, value = line.partition("=")
            name = name.strip()
            if sep and not line[:1].isspace() and not name.startswith("#"):
                if name in wanted:
                    out.append(f"{name} = {wanted.pop(name)}")
                    skipping = True
                    continue
                if name == "password":
                    found = _secret_names(value)
                    if found:
                        secrets_used.update(found)
                    else:
                        out.append(f"password = ${{secret:{LOOKUP_PASSWORD_SECRET}}}")
                        secrets_used.add(LOOKUP_PASSWORD_SECRET)
                        skipping = True
                        continue
            out.append(line)
        out.extend(f"{name} = {value}" for name, value in wanted.items())
        path.write_text("\n".join(out) + "\n", encoding="utf-8")
        notes.append(f"{path.name}: hosts = inet:127.0.0.1:{mysql_port}, user = {user}, dbname = {database}")
    return secrets_used
