"""Pydantic models of what users write: the domain file, the host file and the agent configuration.

Bottom layer of the pipeline: pure, no I/O beyond reading a TOML file in ``load_config``. The JSON
Schemas in ``schemas/`` are generated from these models (``python -m reconciler.schemagen``), and a
test fails when they are stale. Unknown keys are errors naming the key (``extra="forbid"``), and
types are strict: ``password: 123`` is refused rather than coerced.
"""

from __future__ import annotations

import re
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from reconciler.vocab import CONTROL

# RFC 5321 "atext" for a dot-string local part. Quoted local parts are refused on purpose: Postfix
# tables, SQL rows and MUAs disagree on their canonical form, and no hosted mailbox needs one.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_RE = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*\Z")
LOCAL_PART_RE = _LOCAL_RE  # the dot-string local part, for callers' fast paths (reconciler.adopt)
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
# Password hashes as Dovecot writes them: "{SCHEME}hash". Scheme names are upper case with digits,
# dashes and dots (BLF-CRYPT, SHA512-CRYPT, ARGON2ID, SSHA512, ...).
_HASH_RE = re.compile(r"\{[A-Z0-9][A-Z0-9.-]*\}[!-~]+\Z")
_PLAINTEXT_SCHEMES = frozenset({"PLAIN", "CLEARTEXT", "PLAIN-TRUNC", "CRAM-MD5", "DIGEST-MD5"})
# Bare crypt(3) hashes, as Dovecot reads them with default_pass_scheme = CRYPT (libxcrypt formats).
# Each shape is matched whole, so that a plaintext password that merely starts with "$" is refused:
# SHA-512 and SHA-256 crypt ($6$, $5$, optional rounds=), bcrypt ($2y$, $2b$, $2a$), yescrypt ($y$)
# and argon2 ($argon2id$, $argon2i$). MD5-crypt ($1$) is accepted too: Dovecot reads it and
# "{MD5-CRYPT}$1$..." already passes, so an adopted legacy server keeps working (docs/adopting.md
# says to rehash). DES crypt (13 characters, no "$") is indistinguishable from a plaintext: refused.
_B64 = r"[./A-Za-z0-9]"
_BARE_CRYPT_RE = re.compile(
    r"(?:"
    rf"\$6\$(?:rounds=[0-9]{{1,9}}\$)?{_B64}{{1,16}}\${_B64}{{86}}"
    rf"|\$5\$(?:rounds=[0-9]{{1,9}}\$)?{_B64}{{1,16}}\${_B64}{{43}}"
    rf"|\$1\${_B64}{{1,8}}\${_B64}{{22}}"
    rf"|\$2[aby]\$[0-9]{{2}}\${_B64}{{53}}"
    rf"|\$y\$[./A-Za-z0-9]+\${_B64}{{1,86}}\${_B64}{{43}}"
    r"|\$argon2(?:id|i)\$v=[0-9]+\$m=[0-9]+,t=[0-9]+,p=[0-9]+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"
    r")\Z"
)
# What the domain file schema publishes: a scheme-prefixed hash or a bare crypt(3) hash.
_PASSWORD_PATTERN = (
    "^(?:" + _HASH_RE.pattern.removesuffix(r"\Z") + "|" + _BARE_CRYPT_RE.pattern.removesuffix(r"\Z") + ")$"
)


_SPACE_RE = re.compile(r"\s")


def control_char_problem(value: str) -> str | None:
    """Why ``value`` cannot go into a table or row (a control character or whitespace), else None."""
    bad = CONTROL.search(value)
    if bad:
        return f"contains control character {bad.group(0)!r}"
    if _SPACE_RE.search(value):
        return "contains whitespace"
    return None


def domain_problem(name: str) -> str | None:
    """Why ``name`` is not a valid hosted domain name (RFC 5321 / 1035 LDH labels), else None."""
    bad = control_char_problem(name)
    if bad:
        return bad
    if not name or len(name) > 253:
        return "domain must be 1 to 253 characters"
    if name != name.lower():
        return "domain must be lower case"
    labels = name.split(".")
    if len(labels) < 2:
        return "domain must have at least two labels"
    for label in labels:
        if not _LABEL_RE.match(label):
            return f"invalid domain label {label!r}"
    return None


def address_problem(address: str, *, allow_catch_all: bool = False) -> str | None:
    """Why ``address`` is not a valid RFC 5321 mailbox (or ``@domain`` catch-all), else None."""
    bad = control_char_problem(address)
    if bad:
        return bad
    if len(address) > 254:
        return "address longer than 254 characters"
    local, at, domain = address.rpartition("@")
    if not at:
        return "address has no @"
    if local == "" and allow_catch_all:
        return domain_problem(domain)
    if local == "":
        return "address has an empty local part"
    if len(local) > 64:
        return "local part longer than 64 characters"
    if not _LOCAL_RE.match(local):
        return f"invalid local part {local!r} (RFC 5321 dot-string; quoted local parts are not supported)"
    return domain_problem(domain)


_OUTSIDE_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\Z")


def outside_path_problem(path: str) -> str | None:
    """Why ``path`` cannot be an outside table's path (absolute, normal, plain names), else None."""
    if not path.startswith("/"):
        return "must be an absolute path"
    parts = path[1:].split("/")
    if len(parts) < 2 or any(not _OUTSIDE_PART.match(p) for p in parts):
        return "must be a normalised path of plain names (letters, digits, '.', '_', '+', '-'), not in /"
    return None


def _check(problem: str | None, value: str) -> str:
    if problem:
        raise ValueError(problem)
    return value


def _mailbox_address(v: str) -> str:
    return _check(address_problem(v), v)


def _alias_source(v: str) -> str:
    return _check(address_problem(v, allow_catch_all=True), v)


def _domain_name(v: str) -> str:
    return _check(domain_problem(v), v)


def _password_hash(v: str) -> str:
    if len(v) > 255:
        raise ValueError(f"password hash is {len(v)} characters; virtual_users.password holds at most 255")
    if _BARE_CRYPT_RE.match(v):
        return v
    if not _HASH_RE.match(v):
        raise ValueError(
            "password must be a hash with a scheme prefix such as {BLF-CRYPT} or {SHA512-CRYPT}, or a "
            "bare crypt(3) hash ($6$..., $2y$..., $y$..., $argon2id$...); plaintext passwords are refused"
        )
    scheme = v[1 : v.index("}")]
    if scheme in _PLAINTEXT_SCHEMES:
        raise ValueError(f"password scheme {{{scheme}}} stores the plaintext; use a hash scheme")
    return v


# Every accepted password in one match (a hash with a non-plaintext scheme prefix, or a bare
# crypt(3) hash): the fast path of ``password_ok``, which must accept exactly what
# ``_password_hash`` accepts (tests/test_layouts.py checks both on the same corpus); adopt.bulk builds on it.
PASSWORD_OK_RE = re.compile(
    r"(?:\{(?!(?:"
    + "|".join(sorted(_PLAINTEXT_SCHEMES))
    + r")\})[A-Z0-9][A-Z0-9.-]*\}[!-~]+|"
    + _BARE_CRYPT_RE.pattern.removesuffix(r"\Z")
    + r")\Z"
)


def password_ok(v: str) -> bool:
    """Whether ``v`` is an acceptable password hash (the same answer as ``password_problem(v) is None``)."""
    return len(v) <= 255 and PASSWORD_OK_RE.match(v) is not None


def password_problem(v: str) -> str | None:
    """Why ``v`` cannot be a mailbox's password (plaintext, unknown shape, too long), else None."""
    try:
        _password_hash(v)
    except ValueError as exc:
        return str(exc)
    return None


MailboxAddress = Annotated[str, AfterValidator(_mailbox_address)]
AliasSource = Annotated[str, AfterValidator(_alias_source)]
DomainName = Annotated[str, AfterValidator(_domain_name)]
PasswordHash = Annotated[str, AfterValidator(_password_hash)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _published(title: str, schema: str) -> ConfigDict:
    """The configuration of a model published as ``schemas/SCHEMA``: strict, with its title and id."""
    return ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        title=title,
        json_schema_extra={"$id": f"https://postfix-reconciler.invalid/schemas/{schema}"},
    )


class Mailbox(_Strict):
    """A mailbox of a hosted domain: one row of ``virtual_users``."""

    address: MailboxAddress = Field(description="The full address, inside the file's domain.")
    password: PasswordHash = Field(
        description=(
            "A password hash with a scheme prefix, e.g. {BLF-CRYPT}$2y$05$..., or a bare crypt(3) hash "
            "($6$..., $2y$..., $y$..., $argon2id$...) as Dovecot reads it; never plaintext."
        ),
        json_schema_extra={"pattern": _PASSWORD_PATTERN},
    )


class Alias(_Strict):
    """One alias row of ``virtual_aliases``; several destinations repeat the source."""

    source: AliasSource = Field(description='An address of the domain, or "@domain" for a catch-all.')
    destination: MailboxAddress = Field(description="Where mail for the source goes (any domain).")


class DomainFile(_Strict):
    """A ``domains/<domain>.yaml`` file: a hosted virtual domain and all of its rows."""

    model_config = _published("Postfix reconciler domain file", "domain.schema.json")

    domain: DomainName = Field(description="The domain name; must equal the file name without .yaml.")
    mailboxes: tuple[Mailbox, ...] = Field(default=(), description="Mailboxes of this domain.")
    aliases: tuple[Alias, ...] = Field(default=(), description="Aliases whose source is in this domain.")

    @field_validator("mailboxes", "aliases", mode="before")
    @classmethod
    def _none_is_empty(cls, v: object) -> object:
        # "mailboxes:" with nothing under it is YAML null; an administrator means "none".
        if v is None:
            return ()
        if isinstance(v, list):
            return tuple(v)
        return v


_HOST_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_PARAM_RE = re.compile(r"[A-Za-z0-9_]+\Z")


def host_problem(name: str) -> str | None:
    """Why ``name`` cannot name a fleet host (a lower-case host name label), else None."""
    if not _HOST_RE.match(name):
        return "host must be a short host name: lower-case letters, digits and '-', at most 63"
    return None


def _host_name(v: str) -> str:
    return _check(host_problem(v), v)


def _main_cf_overrides(v: dict[str, str]) -> dict[str, str]:
    for name, value in v.items():
        if not _PARAM_RE.match(name):
            raise ValueError(f"{name!r} is not a main.cf parameter name (letters, digits and '_')")
        bad = CONTROL.search(value)
        if bad:
            raise ValueError(f"{name}: value contains control character {bad.group(0)!r}")
    return v


HostName = Annotated[str, AfterValidator(_host_name)]


class HostFile(_Strict):
    """A ``hosts/<name>.yaml`` file: one mail host of a fleet (SPEC section 6)."""

    model_config = _published("Postfix reconciler host file", "host.schema.json")

    host: HostName = Field(description="The host's name ([host].name); must equal the file name without .yaml.")
    wave: Annotated[int, Field(ge=0, le=1000)] = Field(
        default=0, description="Rollout wave: the host applies a revision after every host of a lower wave has."
    )
    main_cf: Annotated[dict[str, str], AfterValidator(_main_cf_overrides)] = Field(
        default_factory=dict, description="main.cf parameters this host sets (overriding or adding to postfix/main.cf)."
    )

    @field_validator("main_cf", mode="before")
    @classmethod
    def _none_is_empty(cls, v: object) -> object:
        return {} if v is None else v


# --------------------------------------------------------------------------------------------
# Agent configuration (SPEC section 3)


class SourceConfig(_Strict):
    """Where the desired state comes from."""

    url: str = Field(default="/srv/git/mail-config.git", description="local path, file://, https:// or ssh://")
    branch: str = "main"
    poll_interval: Annotated[int, Field(ge=1)] = Field(default=30, description="seconds between fetches")
    signatures: Literal["off", "required"] = "off"
    allowed_signers: str = ""
    gpg_keyring: str = ""
    ssh_key: str = Field(default="", description="private key file for ssh:// remotes")
    token_file: str = Field(default="", description="file holding an access token for https:// remotes")


class PostfixConfig(_Strict):
    """The Postfix instance being managed."""

    config_dir: str = "/etc/postfix"
    outside_paths: tuple[str, ...] = Field(
        default=("/etc/aliases",),
        description=(
            "the only absolute paths outside config_dir that the repo's rootfs/ may manage "
            "(a table's source; its built files beside it)"
        ),
    )
    health_timeout: Annotated[float, Field(gt=0)] = Field(
        default=10.0, description="seconds to wait for every inet listener to answer 220 after a reload"
    )

    @field_validator("outside_paths", mode="before")
    @classmethod
    def _list_is_tuple(cls, v: object) -> object:
        return tuple(v) if isinstance(v, list) else v

    @field_validator("outside_paths")
    @classmethod
    def _absolute_normal_paths(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for path in v:
            if outside_path_problem(path):
                raise ValueError(f"{path!r}: {outside_path_problem(path)}")
        return v


class HostConfig(_Strict):
    """This host's identity in a fleet."""

    name: str = Field(default="", description="this host's name in a fleet (default: the short hostname)")

    def resolved(self) -> str:
        """The configured name, else the short host name."""
        return self.name or socket.gethostname().split(".")[0].lower()


class FleetConfig(_Strict):
    """How a fleet rolls out."""

    host_timeout: Annotated[int, Field(ge=1)] = Field(
        default=600, description="seconds after which an unseen lower-wave host no longer holds later waves"
    )
    poll_interval: Annotated[float, Field(gt=0)] = Field(
        default=5.0, description="seconds between checks of the lower waves while waiting"
    )


class MysqlConfig(_Strict):
    """The agent's connection to the mail database."""

    host: str | Annotated[list[str], Field(min_length=1)] = Field(
        default="127.0.0.1",
        description='a host, or a list tried in order ("db1:3306", "db2"; the port below for entries without one)',
    )
    port: Annotated[int, Field(ge=1, le=65535)] = 3306
    unix_socket: str = ""
    user: str = "reconciler"
    password_file: str = "/etc/reconciler/mysql-password"  # noqa: S105 - a path, not a password
    database: str = "mailserver"

    def endpoints(self) -> list[tuple[str, int]]:
        """(host, port) of every configured server, in the order they are tried."""
        hosts = [self.host] if isinstance(self.host, str) else list(self.host)
        out: list[tuple[str, int]] = []
        for entry in hosts:
            host, port = entry, self.port
            if entry.startswith("["):  # [v6]:port or [v6]
                inner, _, rest = entry[1:].partition("]")
                host = inner
                if rest.startswith(":") and rest[1:].isdigit():
                    port = int(rest[1:])
            elif entry.count(":") == 1:
                name, _, number = entry.partition(":")
                if number.isdigit():
                    host, port = name, int(number)
            out.append((host, port))
        return out


class SecretsConfig(_Strict):
    """Where ``${secret:NAME}`` values are read from."""

    dir: str = "/etc/reconciler/secrets"


class StateConfig(_Strict):
    """The agent's own persistent state."""

    dir: str = "/var/lib/reconciler"


class PolicyConfig(_Strict):
    """What the agent may do on its own."""

    self_heal: bool = True
    drift_check_interval: Annotated[int, Field(ge=1)] = 60
    # Seconds between row checks that hash every row in SQL instead of reading the per-domain
    # digests the triggers keep (which every write through SQL updates, and whose counts are
    # checked each time). Only a write that bypasses the triggers needs the full scan to be seen;
    # it costs ~2.5 s of MariaDB time at a million mailboxes. 0: every row check is a full scan.
    full_scan_interval: Annotated[int, Field(ge=0)] = 600
    max_delete_fraction: Annotated[float, Field(ge=0, le=1)] = 0.25


class ApiConfig(_Strict):
    """The HTTP status API."""

    listen: str = "127.0.0.1:9480"
    token_file: str = ""
    webhook_secret_file: str = ""


class NotifyConfig(_Strict):
    """Where the agent reports each attempt: a webhook, and the commit status on the forge (SPEC 3)."""

    webhook_url: str = Field(
        default="", description="POST one JSON event per attempt that applied, failed, was rejected or reverted drift"
    )
    webhook_secret_file: str = Field(
        default="", description="when set, each event carries X-Signature: sha256=<hex HMAC-SHA256 of the body>"
    )
    commit_status: Literal["", "github", "gitlab", "gitea"] = Field(
        default="", description="report each revision's result on its commit on this forge"
    )
    api_url: str = Field(
        default="",
        description="the forge's API base: https://api.github.com, https://gitlab.example/api/v4, "
        "https://gitea.example/api/v1",
    )
    status_url: str = Field(
        default="", description="the status page's public URL, the statuses' target_url (default: http://[api].listen/)"
    )
    repository: str = Field(default="", description="owner/name (GitHub, Gitea) or the project's id or path (GitLab)")
    token_file: str = Field(default="", description="file holding the forge token")

    @model_validator(mode="after")
    def _complete(self) -> NotifyConfig:
        for key in ("webhook_url", "api_url", "status_url"):
            value = getattr(self, key)
            if value and not value.startswith(("http://", "https://")):
                raise ValueError(f"{key} must be an http:// or https:// URL")
        if self.commit_status:
            missing = [k for k in ("api_url", "repository", "token_file") if not getattr(self, k)]
            if missing:
                raise ValueError(f"commit_status = {self.commit_status!r} needs " + ", ".join(missing))
        return self


class AgentConfig(_Strict):
    """The agent configuration file (TOML), SPEC section 3."""

    model_config = _published("Postfix reconciler agent configuration", "config.schema.json")

    source: SourceConfig = SourceConfig()
    postfix: PostfixConfig = PostfixConfig()
    host: HostConfig = HostConfig()
    fleet: FleetConfig = FleetConfig()
    mysql: MysqlConfig = MysqlConfig()
    secrets: SecretsConfig = SecretsConfig()
    state: StateConfig = StateConfig()
    policy: PolicyConfig = PolicyConfig()
    api: ApiConfig = ApiConfig()
    notify: NotifyConfig = NotifyConfig()


def load_config(path: Path) -> AgentConfig:
    """Read and validate the agent configuration; raises ``ValueError`` naming the bad key."""
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    return AgentConfig.model_validate(data)
