"""Property-based fuzzing of the parsers, validators and renderers that see hostile input (hypothesis).

Pure functions only, each property a few seconds: domain files never crash the parser and what it
accepts is safe to write into a table or a row; Postfix's config parsers never crash; an accepted
address cannot inject a line into a hash map or need escaping in SQL; secret masking never prints a
secret value; rendered plans never print a password hash or a secret value.
"""

from __future__ import annotations

import json
import string

import pymysql.converters
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_plan_property import PASSWORDS, SECRET_VALUES, Host, scenarios
from test_plan_property import observe as observe_host

from reconciler.cfparse import diff_parameters, inet_listeners, logical_lines, parse_main_cf, parse_master_cf
from reconciler.desired.domains import parse_domain_file
from reconciler.desired.render import render_file
from reconciler.models import address_problem, domain_problem
from reconciler.plan import (
    Desired,
    FileSpec,
    LiveFile,
    Observed,
    mask_live,
    plan,
    unified,
)
from reconciler.render import plan_json, plan_text
from reconciler.rows import DomainRows

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters that end or split a line, or a token, for Postfix, MySQL, YAML or a terminal.
HOSTILE_CHARS = "\n\r\0\t\f\v\x1b\x7f\x85\xa0\u2028\u2029\ufeff \"'\\%$;:@.,<>[]{}()#=!*/|`~^&+-_?"
ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
ATOM = st.text(st.sampled_from(ATEXT), min_size=1, max_size=6)
SHORT_LOCAL = st.lists(ATOM, min_size=1, max_size=3).map(".".join)
LONG_LOCAL = st.text(st.sampled_from("ab'%"), min_size=60, max_size=68)  # around the 64-character limit
LOCAL = st.one_of(SHORT_LOCAL, SHORT_LOCAL, SHORT_LOCAL, LONG_LOCAL)
LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
SHORT_DOMAIN = st.lists(LABEL, min_size=2, max_size=3).map(".".join)
LONG_DOMAIN = st.integers(50, 63).map(lambda n: ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * n]))  # 242..255
DOMAIN = st.one_of(SHORT_DOMAIN, SHORT_DOMAIN, SHORT_DOMAIN, LONG_DOMAIN)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[str], rate: int = 2) -> str:
    """A value from ``base``, one time in ``rate`` with a hostile character inserted or replaced, or upper-cased."""
    value = draw(base)
    if draw(st.integers(1, rate)) != 1:
        return value
    ch = draw(st.one_of(st.sampled_from(HOSTILE_CHARS), st.characters(codec="utf-8")))
    i = draw(st.integers(0, len(value)))
    how = draw(st.sampled_from(["insert", "insert", "replace", "replace", "upper"]))
    if how == "upper":
        return value.upper()
    return value[:i] + ch + value[i + (how == "replace") :]


def _address_in(
    domain: st.SearchStrategy[str], rate: int = 2, local: st.SearchStrategy[str] = LOCAL
) -> st.SearchStrategy[str]:
    return mutated(st.builds(lambda lp, d: f"{lp}@{d}", local, domain), rate)


ADDRESSES = st.one_of(
    _address_in(DOMAIN),
    mutated(DOMAIN.map(lambda d: "@" + d)),
    st.text(max_size=30),
)


def _no_control_or_space(value: str) -> bool:
    return not any(
        ch.isspace() or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or ch in "\u2028\u2029\ufeff" for ch in value
    )


# ------------------------------------------------------------------------------------------------
# (a) domain files


def _address_like(*domains: str) -> st.SearchStrategy[str]:
    """A short address in one of ``domains``, one time in ten with a hostile change."""
    return _address_in(st.sampled_from(domains), rate=10, local=SHORT_LOCAL)


def _password_like() -> st.SearchStrategy[str]:
    tail = st.text(st.sampled_from(string.ascii_letters + string.digits + "./$"), min_size=1, max_size=30)
    scheme = st.sampled_from(["{BLF-CRYPT}", "{SHA512-CRYPT}", "{ARGON2ID}", "{SSHA512}"])
    return mutated(st.builds(lambda sc, t: sc + t, scheme, tail), rate=10)


@st.composite
def domain_documents(draw: st.DrawFn) -> str:
    """A YAML domain file, mostly well-formed, with hostile characters in every value."""
    doc: dict[str, object] = {"domain": draw(mutated(st.just("fuzz.example"), rate=10))}
    if draw(st.booleans()):
        doc["mailboxes"] = draw(
            st.lists(
                st.fixed_dictionaries({"address": _address_like("fuzz.example"), "password": _password_like()}),
                max_size=3,
            )
        )
    if draw(st.booleans()):
        doc["aliases"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"source": _address_like("fuzz.example"), "destination": _address_like("fuzz.example", "o.example")}
                ),
                max_size=3,
            )
        )
    if draw(st.integers(0, 19)) == 13:
        doc[draw(st.text(max_size=5))] = draw(st.one_of(st.none(), st.integers(), st.text(max_size=5)))
    style = draw(st.sampled_from([None, '"', "'"]))
    return yaml.safe_dump(doc, default_style=style, allow_unicode=draw(st.booleans()), sort_keys=False)


def _check_accepted(path: str, data: bytes) -> None:
    result = parse_domain_file(path, data)
    assert all(isinstance(p.message, str) and p.path == path for p in result.problems)
    if result.model is None:
        assert result.problems, "refused without a problem"
        return
    assert not result.problems
    model = result.model
    assert domain_problem(model.domain) is None
    values = [model.domain]
    for m in model.mailboxes:
        values += [m.address, m.password]
    for a in model.aliases:
        values += [a.source, a.destination]
    for value in values:
        assert _no_control_or_space(value), repr(value)
        assert value.encode("utf-8").decode("utf-8") == value


YAML_ISH = st.text(
    st.sampled_from("domain:mailboxes aliases-[]{}&*!|>'\"#\n\t @.fuzzexample\\%?,\r\x85\u2028\0"), max_size=200
)


@FUZZ
@given(st.one_of(st.text(max_size=300), YAML_ISH, domain_documents().map(lambda d: d.replace("'", "", 1))))
@example("domain: fuzz.example\nmailboxes:\n  - address: !!binary YUBmdXp6LmV4YW1wbGU=\n    password: x\n")
@example("domain: &a fuzz.example\naliases: [{source: *a, destination: *a}]\n")
def test_parse_domain_file_never_raises_on_text(text: str) -> None:
    """Any UTF-8 text gives a model or problems, never an exception, and an accepted file holds only safe values."""
    _check_accepted("domains/fuzz.example.yaml", text.encode("utf-8"))


@FUZZ
@given(domain_documents())
def test_parse_domain_file_accepts_only_safe_values(document: str) -> None:
    """Well-formed domain files with hostile values: every accepted address, password, source and destination is clean."""
    _check_accepted("domains/fuzz.example.yaml", document.encode("utf-8"))


@FUZZ
@given(st.binary(max_size=200))
@example(b"domain: fuzz.example\n# caf\xe9\n")
def test_parse_domain_file_never_raises_on_bytes(data: bytes) -> None:
    """Any bytes, valid UTF-8 or not, give a model or problems, never an exception."""
    _check_accepted("domains/fuzz.example.yaml", data)


# ------------------------------------------------------------------------------------------------
# (b) Postfix's own file formats

CF_TEXT = st.text(st.sampled_from(" \t\n\r#=:[]-ox1ainetsmtpd,\u2028\x85\0"), max_size=200) | st.text(max_size=200)


@FUZZ
@given(CF_TEXT)
def test_cfparse_never_crashes(text: str) -> None:
    """main.cf and master.cf parsers accept any text: logical lines in order, no crash, no empty line."""
    lines = logical_lines(text)
    numbers = [ll.line for ll in lines]
    assert numbers == sorted(set(numbers))
    assert all(ll.text and not ll.text[0].isspace() and not ll.text.startswith("#") for ll in lines)
    params = parse_main_cf(text)
    services = parse_master_cf(text)
    listeners = inet_listeners(text)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in {**params, **services}.items())
    assert all(listener.port is not None for listener in listeners)
    diff_parameters(params, parse_main_cf(text[::-1]))


# ------------------------------------------------------------------------------------------------
# (c) addresses: the validator against a reference, and safe in a map line and an SQL row

_REF_ATEXT = set(string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-")


def _reference_domain_ok(domain: str) -> bool:
    labels = domain.split(".")
    if not 1 <= len(domain) <= 253 or domain != domain.lower() or len(labels) < 2:
        return False
    allowed = set(string.ascii_lowercase + string.digits + "-")
    return all(
        1 <= len(lb) <= 63 and set(lb) <= allowed and not lb.startswith("-") and not lb.endswith("-") for lb in labels
    )


def _reference_ok(address: str, catch_all: bool) -> bool:
    """RFC 5321 dot-string mailbox in an LDH lower-case domain (the project's documented rules)."""
    if len(address) > 254 or "@" not in address:
        return False
    local, _, domain = address.rpartition("@")
    if local == "":
        return catch_all and _reference_domain_ok(domain)
    atoms = local.split(".")
    if len(local) > 64 or any(not atom or not set(atom) <= _REF_ATEXT for atom in atoms):
        return False
    return _reference_domain_ok(domain)


def _map_keys(text: str) -> list[str]:
    """Keys of a text table split as strictly as possible: any line break, then any whitespace.

    No comment handling: "#x@example.org" is a valid RFC 5321 address that Postfix would read as a
    comment line in a hash map; the rows go to MySQL only, so the validator rightly accepts it.
    """
    return [line.split(None, 1)[0] for line in text.splitlines() if line.strip()]


@FUZZ
@given(ADDRESSES, st.booleans())
@example("o'brien@example.com", False)
@example("a\u2028@example.com", False)
@example("%s@example.com", False)
@example("a@%d.example", False)
@example("#x@example.org", False)
@example("@example.org", True)
@example("a..b@example.org", False)
@example("a@example.org\n", False)
def test_accepted_address_is_one_map_key_and_a_plain_sql_value(address: str, catch_all: bool) -> None:
    """address_problem agrees with a reference; an accepted address is one hash-map key and needs no SQL escaping but quotes."""
    problem = address_problem(address, allow_catch_all=catch_all)
    assert (problem is None) == _reference_ok(address, catch_all), (address, problem)
    if problem is not None:
        assert isinstance(problem, str) and problem
        return
    assert _map_keys(f"{address} OK\n") == [address]
    assert _map_keys(f"{address}\tOK\n{address} REJECT\n") == [address, address]
    # A row value: fits the column, valid UTF-8, and the driver only has to escape quote characters.
    assert len(address) <= 254
    assert address.encode("utf-8").decode("utf-8") == address
    escaped = pymysql.converters.escape_string(address)
    assert escaped.replace("\\'", "'").replace('\\"', '"') == address


# ------------------------------------------------------------------------------------------------
# (d) secret masking

SECRET_ALPHABET = st.text(st.sampled_from("ABCDEFGHJKLMNPQRSTUVWXYZ"), min_size=4, max_size=10)
SECRET_NAMES = ("pw", "token", "db.pass", "relay_password")
PLAIN = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz_.[]@"), min_size=1, max_size=8)
SEPARATORS = [" ", "  ", "\t", " = ", "=", ":", " :"]  # where _hide_value cuts a line
SEP = st.sampled_from([*SEPARATORS, ","])


@st.composite
def template_line(draw: st.DrawFn, names: tuple[str, ...] = SECRET_NAMES, *, plain_first: bool = False) -> bytes:
    """One line of a template: plain tokens and placeholders joined by Postfix separators.

    With ``plain_first`` the line starts with a plain key and a separator, as map and main.cf lines do.
    """
    placeholder = st.sampled_from(names).map(lambda n: "${secret:" + n + "}")
    parts: list[str] = [draw(PLAIN), draw(st.sampled_from(SEPARATORS))] if plain_first else []
    for _ in range(draw(st.integers(1, 4))):
        if parts and parts[-1] not in SEPARATORS:
            parts.append(draw(SEP))
        parts.append(draw(st.one_of(PLAIN, placeholder)))
    if draw(st.integers(0, 5)) == 0:
        parts.insert(0, draw(st.sampled_from(["# ", "  ", "\t"])))
    return "".join(parts).encode()


@st.composite
def masking_cases(
    draw: st.DrawFn, *, secret_in_key: bool = False
) -> tuple[bytes, bytes, dict[str, bytes], dict[str, bytes], bool]:
    """(template, live, current secrets, old secrets, secret_file) with the live file hand-edited.

    Unless ``secret_in_key``, no line has a secret in its first token (the text before the first
    whitespace, '=' or ':'), the part of a line that ``mask_live`` shows of lines it cannot match.
    """
    values = draw(st.lists(SECRET_ALPHABET, min_size=8, max_size=8, unique=True))
    current = {n: values[i].encode() for i, n in enumerate(SECRET_NAMES)}
    old = {n: values[i + 4].encode() for i, n in enumerate(SECRET_NAMES)}
    lines = template_line(plain_first=not secret_in_key)
    template = b"\n".join(draw(st.lists(lines, min_size=1, max_size=6))) + b"\n"
    secret_file = b"${secret:" in template or draw(st.booleans())
    live_lines = render_file(template, draw(st.sampled_from([current, old]))).split(b"\n")
    everything = [*current.values(), *old.values()]
    for _ in range(draw(st.integers(0, 4))):
        edit = draw(st.sampled_from(["delete", "duplicate", "insert", "append", "prepend", "space"]))
        i = draw(st.integers(0, max(len(live_lines) - 1, 0)))
        if edit == "delete" and live_lines:
            del live_lines[i]
        elif edit == "duplicate" and live_lines:
            live_lines.insert(i, live_lines[i])
        elif edit == "insert":
            # A hand-written line; it holds a secret value only in a file that holds secrets.
            key = draw(PLAIN).encode()
            value = draw(st.sampled_from(everything)) if secret_file and draw(st.booleans()) else draw(PLAIN).encode()
            sep = draw(SEP if secret_in_key else st.sampled_from(SEPARATORS)).encode()
            live_lines.insert(i, key + sep + value)
        elif edit == "append" and live_lines:
            live_lines[i] += draw(st.sampled_from([b"x", b" # edited", b" ", b"\t"]))
        elif edit == "prepend" and live_lines:
            live_lines[i] = draw(st.sampled_from([b"#", b"# ", b"x"])) + live_lines[i]
        elif edit == "space" and live_lines:
            live_lines[i] = live_lines[i].replace(b" ", b"  ")
    return template, b"\n".join(live_lines), current, old, secret_file


def _check_masking(case: tuple[bytes, bytes, dict[str, bytes], dict[str, bytes], bool]) -> None:
    template, live, current, old, secret_file = case
    masked, changed = mask_live(template, live, current, secret_file=secret_file)
    diff = unified(masked, template, "f").encode()
    for value in [*current.values(), *old.values()]:
        assert value not in masked, (value, masked)
        assert value not in diff, (value, diff)
    assert set(changed) <= set(current)


@FUZZ
@given(masking_cases())
@example((b"user = ${secret:pw}\n", b"user =  OLDVALUE x\n", {"pw": b"NEWVALUE"}, {"pw": b"OLDVALUE"}, True))
@example((b"a ${secret:pw}\n", b"a NEWVALUE\nb: OLDVALUE\n", {"pw": b"NEWVALUE"}, {"pw": b"OLDVALUE"}, True))
def test_mask_live_never_prints_a_secret(case: tuple[bytes, bytes, dict[str, bytes], dict[str, bytes], bool]) -> None:
    """The masked live file and its diff against the template hold no current or old secret value."""
    _check_masking(case)


@FUZZ
@given(masking_cases(secret_in_key=True))
@example((b"${secret:pw} OK\n", b"OLDVALUE OK!\n", {"pw": b"NEWVALUE"}, {"pw": b"OLDVALUE"}, True))
def test_mask_live_never_prints_a_secret_in_a_key(
    case: tuple[bytes, bytes, dict[str, bytes], dict[str, bytes], bool],
) -> None:
    """A secret that is (part of) a line's first token is not printed either, once the line was edited by hand."""
    _check_masking(case)


# ------------------------------------------------------------------------------------------------
# (e) rendered plans

HASH_TAIL = st.text(st.sampled_from(string.ascii_letters + string.digits + "./"), min_size=12, max_size=20)
HASH = st.builds(
    lambda s, t: s + t, st.sampled_from(["{BLF-CRYPT}$2y$05$", "{SHA512-CRYPT}$6$", "{ARGON2ID}$a$"]), HASH_TAIL
)
LOCALS = ["ann", "bob", "cy"]
DOMAINS = ["a.example", "b.example"]


@st.composite
def hashed_rows(draw: st.DrawFn) -> dict[str, DomainRows]:
    """Mailboxes of a few domains with random password hashes."""
    out: dict[str, DomainRows] = {}
    for domain in draw(st.lists(st.sampled_from(DOMAINS), unique=True)):
        locals_ = draw(st.lists(st.sampled_from(LOCALS), unique=True))
        out[domain] = DomainRows({f"{lp}@{domain}": (f"{lp}@{domain}", draw(HASH)) for lp in locals_}, {})
    return out


@st.composite
def plans_with_secrets(draw: st.DrawFn) -> tuple[Desired, Observed, list[bytes]]:
    """A revision and a host with random hashes and secrets; returns every value that must stay hidden."""
    values = draw(st.lists(SECRET_ALPHABET, min_size=2, max_size=2, unique=True))
    current, old = {"pw": values[0].encode()}, {"pw": values[1].encode()}
    files: dict[str, FileSpec] = {}
    live: dict[str, LiveFile] = {}
    for name in draw(st.lists(st.sampled_from(["main.cf", "master.cf", "relay_password", "mysql.cf"]), unique=True)):
        template = b"\n".join(draw(st.lists(template_line(("pw",)), min_size=1, max_size=4))) + b"\n"
        holds = b"${secret:" in template
        files[name] = FileSpec(
            name,
            template,
            render_file(template, current),
            frozenset({"pw"}) if holds else frozenset(),
            0o640 if holds else 0o644,
            "postfix" if holds else "root",
        )
        if draw(st.booleans()):
            before = draw(st.sampled_from([template, template + b"extra = line\n", b"old = ${secret:pw}\nkeep\n"]))
            content = render_file(before, draw(st.sampled_from([current, old])))
            live[name] = LiveFile(content, draw(st.sampled_from([0o640, 0o600])), "postfix")
    desired_rows, live_rows = draw(hashed_rows()), draw(hashed_rows())
    desired = Desired("0" * 40, files, (), desired_rows)
    observed = Observed(live, frozenset(live), (), frozenset(), live_rows, frozenset(), draw(st.booleans()), current)
    hashes = [p.encode() for r in (*desired_rows.values(), *live_rows.values()) for _, p in r.users.values()]
    return desired, observed, [*current.values(), *old.values(), *hashes]


def _assert_hidden(rendered: list[str], hidden: list[bytes]) -> None:
    for text in rendered:
        for value in hidden:
            assert value.decode() not in text, (value, text)


@FUZZ
@given(plans_with_secrets(), st.booleans())
def test_rendered_plan_holds_no_hash_or_secret(case: tuple[Desired, Observed, list[bytes]], colour: bool) -> None:
    """plan_text and plan_json of a random plan hold no password hash and no current or old secret value."""
    desired, observed, hidden = case
    result = plan(desired, observed)
    rendered = [plan_text(result, colour=colour), plan_json(result)]
    json.loads(rendered[1])
    _assert_hidden(rendered, hidden)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.booleans())
def test_rendered_plan_property_scenarios_hold_no_hash_or_secret(
    scenario: tuple[Desired, Host, dict[str, bytes]], colour: bool
) -> None:
    """Plans of tests/test_plan_property.py's scenarios render without its password hashes or non-public secrets."""
    desired, host, secrets = scenario
    result = plan(desired, observe_host(host, desired, secrets))
    rendered = [plan_text(result, colour=colour), plan_json(result)]
    # Those scenarios draw a live file's mode independently of its content; a secret the host already
    # shows to every local user (a world-readable file the agent never wrote) is not the diff's to hide.
    public = b"".join(f.content for f in host.files.values() if f.mode & 0o004)
    hidden = [p.encode() for p in PASSWORDS] + [v for v in SECRET_VALUES if v not in public]
    _assert_hidden(rendered, hidden)
