"""Hostile revisions against a real mail host: each is refused by `reconciler apply` and nothing changes live.

Issue [5]'s hostile-input corpus at apply level. One private Postfix + MariaDB host serves the whole
module: the good revision (example-repo, sandboxized) is applied once and fingerprinted; then each
case resets the work tree to that commit, applies one hostile mutation, commits it (symlinks,
submodules and crafted trees included) and runs `reconciler apply`. It must exit 1, print a problem
naming the file (and line, where there is one) with a clear message, and leave every managed byte
and row exactly as it was. Cases are data, one a line, like tests/test_validate.py's corpus.

A case whose refusal is missing or unclear is a known bug: it carries ``bug=...`` and runs as a
strict xfail (the live host is restored to the good revision afterwards, so later cases still see
it). The final test scans everything the corpus produced for the relay secret's value.
"""

from __future__ import annotations

import gzip
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mailhost import EXAMPLE, HASH, RELAY_SECRET, MailHost

from harness.mariadb import MariaDB
from harness.postfix import create_postfix_instance

Git = Callable[..., str]


@dataclass
class Corpus:
    """The module's mail host, its good commit and baseline fingerprint, and every output seen."""

    host: MailHost
    good: str
    baseline: tuple[object, object]
    outputs: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def corpus(mariadb: MariaDB, postfix_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    """One private mail host for the module with the good revision applied (Postfix stopped at the end)."""
    base = Path(tempfile.mkdtemp(prefix="hostile-", dir=postfix_root))
    instance = create_postfix_instance(base)
    try:
        instance.start()
        host = MailHost.create(tmp_path_factory.mktemp("hostile"), mariadb, instance)
        host.cli("init-db", check=True)
        host.cli("apply", check=True)
        good = host.git("rev-parse", "HEAD")
        state = Corpus(host, good, host.fingerprint())
        yield state
    finally:
        try:
            instance.stop()
        finally:
            print(f"--- {instance.maillog} (last lines)")
            print("\n".join(instance.maillog_text().splitlines()[-30:]))


# ------------------------------------------------------------------------------------------------
# The corpus


LAST = -1  # the expected line is the last line of the mutated file


@dataclass(frozen=True)
class Hostile:
    """One hostile revision: a mutation of the good work tree and the refusal it must produce."""

    id: str
    mutate: Callable[[Path], None]
    path: str  # the file the refusal must name; "" to match message as a regular expression on one line
    line: int | None  # its line, LAST for the last line of the mutated file, None when it has none
    message: str  # a substring of the refusal (a regular expression when path is "")
    also: tuple[tuple[int, str], ...] = ()  # further (line, message) problems expected in the same file
    craft: Callable[[Git, str], str] | None = None  # index/tree surgery after "git add -A": tree -> tree
    seconds: float = 20.0  # the refusal must come within this time
    memory_mb: int = 0  # and, when set, within this address space (RLIMIT_AS of the apply process)
    bug: str = ""  # a known bug: the case runs as a strict xfail with this reason
    exit: int = 1  # 1 rejected; 2 when the host (not the revision) must fix it, as a missing secret


def _write(rel: str, data: bytes | str) -> Callable[[Path], None]:
    def mutate(work: Path) -> None:
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(data.encode() if isinstance(data, str) else data)

    return mutate


def _append(rel: str, text: str) -> Callable[[Path], None]:
    def mutate(work: Path) -> None:
        with (work / rel).open("a", encoding="utf-8", newline="") as fh:
            fh.write(text)

    return mutate


def _prepend(rel: str, text: str) -> Callable[[Path], None]:
    def mutate(work: Path) -> None:
        (work / rel).write_bytes(text.encode() + (work / rel).read_bytes())

    return mutate


def _edit(rel: str, old: str, new: str) -> Callable[[Path], None]:
    def mutate(work: Path) -> None:
        text = (work / rel).read_text(encoding="utf-8")
        assert old in text, (rel, old)
        (work / rel).write_text(text.replace(old, new, 1), encoding="utf-8")

    return mutate


def _symlink(rel: str, target: str) -> Callable[[Path], None]:
    def mutate(work: Path) -> None:
        (work / rel).unlink(missing_ok=True)
        (work / rel).symlink_to(target)

    return mutate


def _symlinked_dir(rel: str, target: str, *, keep_as: str = "") -> Callable[[Path], None]:
    """Replace directory ``rel`` by a symlink to ``target`` (its files moved to ``keep_as`` if given)."""

    def mutate(work: Path) -> None:
        if keep_as:
            (work / rel).rename(work / keep_as)
        else:
            for child in (work / rel).iterdir():
                child.unlink()
            (work / rel).rmdir()
        (work / rel).symlink_to(target)

    return mutate


def _both(*mutations: Callable[[Path], None]) -> Callable[[Path], None]:
    def mutate(work: Path) -> None:
        for m in mutations:
            m(work)

    return mutate


def _nothing(work: Path) -> None:
    del work


def _gitlink(rel: str) -> Callable[[Git, str], str]:
    """A submodule entry (mode 160000) at ``rel``, as `git submodule add` would record it."""

    def craft(git: Git, tree: str) -> str:
        del tree
        git("update-index", "--add", "--cacheinfo", f"160000,0123456789abcdef0123456789abcdef01234567,{rel}")
        return git("write-tree")

    return craft


def _dotdot_tree(parent: str, inner: str) -> Callable[[Git, str], str]:
    """A tree entry literally named ``..`` in ``parent`` holding ``inner`` (git mktree accepts the name)."""

    def craft(git: Git, tree: str) -> str:
        blob = git("hash-object", "-w", "--stdin", input="x\n")
        dotdot = git("mktree", input=f"100644 blob {blob}\t{inner}\n")
        listing = git("ls-tree", f"{tree}:{parent}") + f"\n040000 tree {dotdot}\t..\n"
        sub = git("mktree", input=listing)
        root = [line for line in git("ls-tree", tree).splitlines() if not line.endswith(f"\t{parent}")]
        return git("mktree", input="\n".join([*root, f"040000 tree {sub}\t{parent}"]) + "\n")

    return craft


HOSTILE_DOMAIN = "domains/hostile.example.yaml"
# A domain file with one mailbox and one alias; an injection puts a character into every field at once
# (pydantic reports each field), and each field's problem is expected at its own line.
DOMAIN_TEMPLATE = (
    'domain: "hostile.example{X}"\n'  # line 1
    "mailboxes:\n"
    '  - address: "a{X}@hostile.example"\n'  # line 3
    f'    password: "{HASH}{{X}}"\n'  # line 4
    "aliases:\n"
    '  - source: "b{X}@hostile.example"\n'  # line 6
    '    destination: "a@hostile.example{X}"\n'  # line 7
)
CONTROL = "control character"
# The address, password, source and destination lines after the domain line (1, checked as the case's line).
FIELDS = (
    (3, "address: contains " + CONTROL),
    (4, "password must be a hash"),
    (6, "source: contains " + CONTROL),
    (7, "destination: contains " + CONTROL),
)


def _inject(escape: str) -> Callable[[Path], None]:
    """The hostile domain file with a YAML double-quoted escape in every field."""
    return _write(HOSTILE_DOMAIN, DOMAIN_TEMPLATE.replace("{X}", escape))


def _mailbox(address: str) -> str:
    return f'domain: hostile.example\nmailboxes:\n  - address: "{address}"\n    password: "{HASH}"\n'


def _alias(source: str, destination: str) -> str:
    return f'domain: hostile.example\naliases:\n  - source: "{source}"\n    destination: "{destination}"\n'


def _many_keys(n: int) -> str:
    return "domain: hostile.example\n" + "".join(f"key{i}: {i}\n" for i in range(n))


def _laughs() -> str:
    lines = ["domain: hostile.example", "x:", '  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"  {name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append("mailboxes: *i")
    return "\n".join(lines) + "\n"


def _merge_bomb() -> str:
    lines = ["domain: hostile.example", "x:", "  a: &a {k: v}"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"  {name}: &{name} {{<<: [" + ",".join([f"*{prev}"] * 9) + "]}")
    return "\n".join(lines) + "\n"


LOOP = "  - source: loop@example.{a}\n    destination: loop@example.{b}\n"
CATCH_ALL_LOOP = '  - source: "@example.{a}"\n    destination: nobody@example.{b}\n'
CANONICAL = "postfix/canonical"
RELAY = "postfix/relay_password"
MAIN = "postfix/main.cf"
ALIAS_CF = "postfix/mysql-virtual-alias-maps.cf"
COM_LINES = len((EXAMPLE / "domains" / "example.com.yaml").read_text(encoding="utf-8").splitlines())
OVERSIZE = b"# x\n" * (16 * 1024 * 1024 + 1)  # 64 MiB + 4 bytes

CASES = [
    # -- repository shape: links, submodules, names, sizes, encodings ------------------------------------
    Hostile("symlink-to-etc-shadow", _symlink("postfix/generic", "/etc/shadow"), "postfix/generic", None, "symbolic links are not allowed"),
    Hostile("symlink-to-parent-dir", _symlink(CANONICAL, "../"), CANONICAL, None, "symbolic links are not allowed"),
    Hostile("symlink-domain-file", _symlink("domains/evil.example.yaml", "example.org.yaml"), "domains/evil.example.yaml", None, "symbolic links are not allowed"),
    Hostile("symlink-dir-in-postfix", _symlink("postfix/sasl", "/etc"), "postfix/sasl", None, "symbolic links are not allowed"),
    Hostile("symlinked-domains-dir", _symlinked_dir("domains", "real-domains", keep_as="real-domains"), "domains", None, "symbolic links are not allowed"),
    Hostile("symlinked-postfix-dir", _symlinked_dir("postfix", "/etc/postfix"), "postfix", None, "symbolic links are not allowed"),
    Hostile("submodule-in-domains", _nothing, "domains/vendor", None, "submodules are not allowed", craft=_gitlink("domains/vendor")),
    Hostile("submodule-in-postfix", _nothing, "postfix/vendor", None, "submodules are not allowed", craft=_gitlink("postfix/vendor")),
    Hostile("tree-entry-named-dotdot", _nothing, "postfix/../shadow", None, "unexpected directory name '..'", craft=_dotdot_tree("postfix", "shadow")),
    Hostile("name-starting-with-dotdot", _write("postfix/..canonical", "a b\n"), "postfix/..canonical", None, "unexpected file name"),
    Hostile("name-with-space", _write("postfix/my map", "a b\n"), "postfix/my map", None, "unexpected file name"),
    Hostile("name-with-newline", _write("postfix/x\nmain.cf:1: fine", "a b\n"), "", None, r"^postfix/\S*x\S*main\.cf:1: fine\S*: unexpected file name"),
    Hostile("name-with-quote", _write("postfix/it's", "a b\n"), "postfix/it's", None, "unexpected file name"),
    Hostile("name-with-dollar", _write("postfix/$config_directory", "a b\n"), "postfix/$config_directory", None, "unexpected file name"),
    Hostile("name-with-semicolon", _write("postfix/a;rm -rf", "a b\n"), "postfix/a;rm -rf", None, "unexpected file name"),
    Hostile("name-unicode-lookalike", _write("postfix/m\u0430in.cf", "biff = no\n"), "postfix/m\u0430in.cf", None, "unexpected file name"),
    Hostile("domain-name-lookalike", _write("domains/ex\u0430mple.org.yaml", "domain: ex\u0430mple.org\n"), "domains/ex\u0430mple.org.yaml", None, "unexpected file name"),
    Hostile("file-in-hidden-postfix-subdir", _write("postfix/.sasl/smtpd.conf", "pwcheck_method: saslauthd\n"), "postfix/.sasl/smtpd.conf", None, "unexpected directory name"),
    Hostile("postfix-tree-too-deep", _write("postfix/a/b/c/d/e/f", "x y\n"), "postfix/a/b/c/d/e/f", None, "levels of subdirectories"),
    Hostile("file-in-domains-subdir", _write("domains/x/evil.example.yaml", "domain: evil.example\n"), "domains/x/evil.example.yaml", None, "only files directly inside"),
    Hostile("oversize-file", _write(CANONICAL, OVERSIZE), CANONICAL, None, "the limit is"),
    Hostile("nul-byte-in-main-cf", _append(MAIN, "biff = no\0\n"), MAIN, LAST, "NUL byte"),
    Hostile("invalid-utf8-domain-file", _write(HOSTILE_DOMAIN, b"domain: hostile.example\n# caf\xe9\n"), HOSTILE_DOMAIN, 2, "not valid UTF-8"),
    Hostile("gzip-blob-as-main-cf", lambda w: (w / MAIN).write_bytes(gzip.compress((w / MAIN).read_bytes())), MAIN, 1, "not valid UTF-8"),
    Hostile("raw-cr-in-map", _append(CANONICAL, "evil\r x@example.net\n"), CANONICAL, LAST, "control character '\\r'"),
    Hostile("raw-formfeed-in-main-cf", _append(MAIN, "biff = no\f\n"), MAIN, LAST, "control character '\\x0c'"),
    Hostile("raw-u2028-in-domain-file", _write(HOSTILE_DOMAIN, "domain: hostile.example\n# x\u2028y\n"), HOSTILE_DOMAIN, 2, "control character"),
    Hostile("raw-u0085-in-domain-file", _write(HOSTILE_DOMAIN, "domain: hostile.example\n# x\u0085y\n"), HOSTILE_DOMAIN, 2, "control character"),
    # -- a domain declared twice -----------------------------------------------------------------
    Hostile("domain-twice-other-file", _write("domains/copy.example.yaml", "domain: example.org\n"), "domains/copy.example.yaml", 1, "must equal the file name"),
    Hostile("domain-twice-case-variant", _write("domains/Example.org.yaml", "domain: Example.org\n"), "domains/Example.org.yaml", 1, "lower case"),
    Hostile("domain-twice-case-file-name", _write("domains/Example.org.yaml", "domain: example.org\n"), "domains/Example.org.yaml", 1, "must equal the file name"),
    Hostile("domain-twice-trailing-dot", _write("domains/example.org..yaml", 'domain: "example.org."\n'), "domains/example.org..yaml", 1, "invalid domain label ''"),
    # -- injections into domain, address, password, alias source and destination (YAML escapes) ----
    Hostile("inject-newline", _inject("\\n"), HOSTILE_DOMAIN, 1, "domain: contains control character '\\n'", also=FIELDS),
    Hostile("inject-cr", _inject("\\r"), HOSTILE_DOMAIN, 1, "domain: contains control character '\\r'", also=FIELDS),
    Hostile("inject-nul", _inject("\\0"), HOSTILE_DOMAIN, 1, "domain: contains control character '\\x00'", also=FIELDS),
    Hostile("inject-tab", _inject("\\t"), HOSTILE_DOMAIN, 1, "domain: contains control character '\\t'", also=FIELDS),
    Hostile("inject-formfeed", _inject("\\f"), HOSTILE_DOMAIN, 1, "domain: contains control character '\\x0c'", also=FIELDS),
    Hostile("inject-u2028", _inject("\\u2028"), HOSTILE_DOMAIN, 1, "domain: contains control character '\\u2028'", also=FIELDS),
    Hostile("inject-u0085", _inject("\\N"), HOSTILE_DOMAIN, 1, "domain: contains control character '\\x85'", also=FIELDS),
    Hostile("inject-u2029", _inject("\\P"), HOSTILE_DOMAIN, 1, "domain: contains control character '\\u2029'", also=FIELDS),
    Hostile("inject-bom", _inject("\\uFEFF"), HOSTILE_DOMAIN, 1, "domain: contains control character '\\ufeff'", also=FIELDS),
    Hostile("inject-escape", _inject("\\e"), HOSTILE_DOMAIN, 1, "domain: contains control character '\\x1b'", also=FIELDS),
    Hostile("inject-nbsp", _inject("\\_"), HOSTILE_DOMAIN, 1, "domain: contains whitespace", also=tuple((n, m.replace(CONTROL, "whitespace")) for n, m in FIELDS)),
    # -- quotes, backslashes, Postfix %-expansions and SQL where they are invalid ------------------
    Hostile("address-double-quote", _write(HOSTILE_DOMAIN, _mailbox('\\"a\\"@hostile.example')), HOSTILE_DOMAIN, 3, "quoted local parts are not supported"),
    Hostile("address-backslash", _write(HOSTILE_DOMAIN, _mailbox("a\\\\b@hostile.example")), HOSTILE_DOMAIN, 3, "invalid local part"),
    Hostile("address-percent-s-domain", _write(HOSTILE_DOMAIN, _mailbox("a@%s.hostile.example")), HOSTILE_DOMAIN, 3, "invalid domain label '%s'"),
    Hostile("source-percent-d-catch-all", _write(HOSTILE_DOMAIN, _alias("@%d.hostile.example", "a@example.org")), HOSTILE_DOMAIN, 3, "invalid domain label '%d'"),
    Hostile("destination-percent-u-domain", _write(HOSTILE_DOMAIN, _alias("b@hostile.example", "a@%u")), HOSTILE_DOMAIN, 4, "at least two labels"),
    Hostile("address-sql-drop-table", _write(HOSTILE_DOMAIN, _mailbox("x'; DROP TABLE virtual_users; --@hostile.example")), HOSTILE_DOMAIN, 3, "whitespace"),
    Hostile("source-sql-no-spaces", _write(HOSTILE_DOMAIN, _alias("x';DROP/**/TABLE/**/virtual_aliases;--@hostile.example", "a@example.org")), HOSTILE_DOMAIN, 3, "invalid local part"),
    Hostile("domain-sql-drop-table", _write(HOSTILE_DOMAIN, "domain: \"hostile.example'; DROP TABLE virtual_domains; --\"\n"), HOSTILE_DOMAIN, 1, "whitespace"),
    Hostile("password-sql-drop-table", _write(HOSTILE_DOMAIN, _mailbox("a@hostile.example").replace(HASH, "{BLF-CRYPT}'; DROP TABLE virtual_users; --")), HOSTILE_DOMAIN, 4, "password must be a hash"),
    Hostile("password-longer-than-column", _write(HOSTILE_DOMAIN, _mailbox("a@hostile.example").replace(HASH, "{BLF-CRYPT}" + "x" * 300)), HOSTILE_DOMAIN, 4, "password"),
    # -- secrets ---------------------------------------------------------------------------------
    Hostile("secret-path-traversal", _append(RELAY, "[evil.example]:587 u:${secret:../../etc/passwd}\n"), RELAY, LAST, "invalid secret name '../../etc/passwd'"),
    Hostile("secret-absolute-path", _append(RELAY, "[evil.example]:587 u:${secret:/etc/shadow}\n"), RELAY, LAST, "invalid secret name '/etc/shadow'"),
    Hostile("secret-undefined", _append(RELAY, "[evil.example]:587 u:${secret:nonexistent}\n"), "", None, r"^reconciler: secret\(s\) not found in /\S+: nonexistent; the host must fix this", exit=2),
    # -- lines Postfix would misread -------------------------------------------------------------
    Hostile("map-starts-with-continuation", _prepend(CANONICAL, "  root evil@example.net\n"), CANONICAL, 1, "logical line must not start with whitespace"),
    Hostile("map-key-without-value", _append(CANONICAL, "lonelykey\n"), CANONICAL, LAST, "expected format: key whitespace value"),
    Hostile("aliases-without-colon", _append("postfix/aliases", "root evil@example.net\n"), "postfix/aliases", LAST, "need name:value pair"),
    Hostile("main-cf-starts-with-continuation", _prepend(MAIN, "  myhostname = evil.example\n"), MAIN, 1, "logical line must not start with whitespace"),
    Hostile("main-cf-key-without-value", _append(MAIN, "lonely_parameter\n"), MAIN, LAST, "missing '=' after attribute name"),
    Hostile("mysql-query-unquoted-expansion", _edit(ALIAS_CF, "WHERE source='%s'\n", "WHERE source=%s\n"), ALIAS_CF, 16, "%s"),
    # -- YAML bombs, tags, nesting, size ---------------------------------------------------------
    Hostile("yaml-billion-laughs", _write(HOSTILE_DOMAIN, _laughs()), HOSTILE_DOMAIN, 2, "unknown key 'x'", seconds=10, memory_mb=256),
    Hostile("yaml-merge-key-bomb", _write(HOSTILE_DOMAIN, _merge_bomb()), HOSTILE_DOMAIN, 4, "invalid YAML", seconds=10, memory_mb=256),
    Hostile("yaml-python-object-tag", _write(HOSTILE_DOMAIN, 'domain: !!python/object/apply:os.system ["touch /tmp/pwned"]\n'), HOSTILE_DOMAIN, 1, "could not determine a constructor"),
    Hostile("yaml-binary-tag", _write(HOSTILE_DOMAIN, "domain: !!binary aG9zdGlsZS5leGFtcGxl\n"), HOSTILE_DOMAIN, 1, "Input should be a valid string"),
    Hostile("yaml-deep-nesting", _write(HOSTILE_DOMAIN, "domain: hostile.example\nmailboxes: " + "[" * 100000 + "]" * 100000 + "\n"), HOSTILE_DOMAIN, 2, "maximum nesting depth", seconds=10, memory_mb=256),
    Hostile("yaml-many-keys", _write(HOSTILE_DOMAIN, _many_keys(15000)), HOSTILE_DOMAIN, None, "15000 problems; only the first 1000 are listed", seconds=10, memory_mb=256),
    # -- cross-domain rules ----------------------------------------------------------------------
    Hostile("alias-cycle-across-domains", _both(_append("domains/example.org.yaml", LOOP.format(a="org", b="com")), _append("domains/example.com.yaml", LOOP.format(a="com", b="org"))), "domains/example.com.yaml", COM_LINES + 1, "alias cycle: loop@example.com -> loop@example.org -> loop@example.com"),
    Hostile("alias-cycle-through-catch-alls", _both(_append("domains/example.net.yaml", CATCH_ALL_LOOP.format(a="net", b="com")), _append("domains/example.com.yaml", CATCH_ALL_LOOP.format(a="com", b="net"))), "domains/example.com.yaml", None, "alias cycle"),
]  # fmt: skip


def _params() -> list[object]:
    out: list[object] = []
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case.bug)] if case.bug else []
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


# ------------------------------------------------------------------------------------------------
# Running a case


def _git(work: Path) -> Git:
    def git(*args: str, input: str | None = None) -> str:
        env = {**os.environ, "GIT_AUTHOR_DATE": "", "GIT_COMMITTER_DATE": ""}
        cmd = ["git", "-C", str(work), "-c", "user.name=Test", "-c", "user.email=test@example.net", *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, input=input).stdout.strip()

    return git


def _commit(host: MailHost, case: Hostile) -> str:
    """Commit the work tree as it is, with the case's index or tree surgery; returns the commit id."""
    git = _git(host.work)
    git("add", "-A")
    tree = git("write-tree")
    if case.craft is not None:
        tree = case.craft(git, tree)
    commit = git("commit-tree", tree, "-p", "HEAD", "-m", f"hostile: {case.id}")
    git("update-ref", "refs/heads/main", commit)
    return commit


def _reset(host: MailHost, good: str) -> None:
    git = _git(host.work)
    git("reset", "-q", "--hard", good)
    git("clean", "-q", "-fdx")


def _cli(host: MailHost, *args: str, timeout: float, memory_mb: int = 0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RECONCILER_CONFIG": str(host.config)}

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))

    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
        preexec_fn=limit if memory_mb else None,
    )


def _expected_line(host: MailHost, case: Hostile) -> int | None:
    if case.line != LAST:
        return case.line
    lines = (host.work / case.path).read_bytes().split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return len(lines)


def _restore(state: Corpus) -> None:
    """Put the good revision back live after a case that got through (a known bug)."""
    host = state.host
    _reset(host, state.good)
    if not host.postfix.is_running():
        host.postfix.start()
    res = _cli(host, "apply", "--rev", state.good, timeout=120)
    state.outputs.append(res.stdout + res.stderr)
    assert res.returncode == 0, res.stdout + res.stderr
    state.baseline = host.fingerprint()


@pytest.mark.parametrize("case", _params())
def test_hostile_revision_is_refused(case: Hostile, corpus: Corpus) -> None:
    """A hostile revision exits 1 (2: the host's to fix) naming its file and line clearly; nothing changes live."""
    host = corpus.host
    _reset(host, corpus.good)
    case.mutate(host.work)
    expected_line = _expected_line(host, case)
    _commit(host, case)
    started = time.monotonic()
    try:
        try:
            res = _cli(host, "apply", timeout=case.seconds, memory_mb=case.memory_mb)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"apply took more than {case.seconds:.0f} s") from exc
        elapsed = time.monotonic() - started
        corpus.outputs.append(res.stdout + res.stderr)
        report = f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr[-3000:]}"
        assert res.returncode == case.exit, report
        assert "Traceback" not in res.stderr, report
        lines = res.stderr.split("\n")
        if case.path:
            for number, message in ((expected_line, case.message), *case.also):
                where = case.path if number is None else f"{case.path}:{number}"
                assert any(line.startswith(where + ":") and message in line for line in lines), (
                    f"expected '{where}: ...{message}...'\n{report}"
                )
        else:  # a refusal that names no file: the message is a regular expression for one line
            assert any(re.search(case.message, line) for line in lines), report
        assert elapsed < case.seconds, f"refused after {elapsed:.1f} s (limit {case.seconds} s)"
        assert host.postfix.is_running(), "Postfix stopped"
        assert host.fingerprint() == corpus.baseline, "live files or rows changed"
    finally:
        if host.fingerprint() != corpus.baseline or not host.postfix.is_running():
            _restore(corpus)


def test_corpus_is_large_enough() -> None:
    """The corpus holds at least 40 hostile revisions."""
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


def test_relay_secret_never_leaked(corpus: Corpus) -> None:
    """After the corpus, no output, state file or log line holds the relay secret (or the lookup password)."""
    host = corpus.host
    assert RELAY_SECRET in (host.postfix.config_dir / "relay_password").read_text()  # it is live
    # Dry runs of revisions that stop naming the secret: the live line still holds its value.
    for change in (
        ("user@example.net:${secret:relay_password}", "user@example.net:literal-password"),
        (
            "[smtp.myisp.com]:587    user@example.net:${secret:relay_password}",
            "# removed",
        ),
    ):
        _reset(host, corpus.good)
        host.edit("postfix/relay_password", lambda t, c=change: t.replace(*c))
        host.commit("drop the secret")
        res = _cli(host, "diff", timeout=60)
        assert res.returncode == 1, res.stdout + res.stderr
        assert "relay_password" in res.stdout
        corpus.outputs.append(res.stdout + res.stderr)
        corpus.outputs.append(_cli(host, "diff", "--format", "json", timeout=60).stdout)
    _reset(host, corpus.good)
    assert corpus.outputs, "the corpus ran no case"
    for value in (RELAY_SECRET, host.db.mailuser_password):
        for text in corpus.outputs:
            assert value not in text
        for path in host.state.rglob("*"):
            if path.is_file():
                assert value.encode() not in path.read_bytes(), path
        assert value not in host.postfix.maillog_text()


def test_rotated_secret_used_as_a_key_is_not_printed_by_diff(corpus: Corpus) -> None:
    """A secret used as a map key, rotated while its line changes, is not printed by diff (old or new value)."""
    host = corpus.host
    secret_file = host.secrets / "relay_password"
    _reset(host, corpus.good)
    host.edit("postfix/sender_access", lambda t: t + "${secret:relay_password} OK\n")
    host.commit("a secret as a map key")
    try:
        assert _cli(host, "apply", timeout=60).returncode == 0
        secret_file.write_text("rotated-Value-0042\n")
        host.edit(
            "postfix/sender_access",
            lambda t: t.replace("${secret:relay_password} OK", "${secret:relay_password} REJECT"),
        )
        host.commit("rotate the secret and change the action")
        res = _cli(host, "diff", timeout=60)
        assert res.returncode == 1, res.stdout + res.stderr
        assert "rotated-Value-0042" not in res.stdout + res.stderr
        assert RELAY_SECRET not in res.stdout + res.stderr, res.stdout
    finally:
        secret_file.write_text(RELAY_SECRET + "\n")
        _restore(corpus)


def test_good_revision_still_applies(corpus: Corpus) -> None:
    """After every hostile revision the good one is still live and a later good revision applies."""
    host = corpus.host
    _reset(host, corpus.good)
    host.add_mailbox("after-the-storm@example.org")
    host.commit("a good change after the hostile ones")
    res = _cli(host, "apply", timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert host.rcpt("after-the-storm@example.org") == 250
    assert re.search(r"applied 0 file\(s\), 0 table\(s\), 1 row\(s\)", res.stdout), res.stdout
