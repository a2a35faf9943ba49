"""`reconciler validate`: example-repo passes Postfix's own checks, bad repositories are refused.

The corpus below is data: each case copies example-repo, applies one mutation and names the file,
line and message the validator must report. Postfix's own tools run on every case (no mocks).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.source import open_snapshot
from reconciler.validate import validate_snapshot

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example-repo"
GUIDE_LITERAL = ROOT / "tests" / "data" / "guide-literal"
HASH = "{BLF-CRYPT}$2y$05$QDUtJYxKHTfAOm0Znz5SiOxDjfx2AUkk8vLhZFSc3FUxFU1AfxQ0W"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RECONCILER_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, env=env, check=False
    )


def test_example_repo_is_valid() -> None:
    """example-repo exits 0 and prints no problem."""
    res = run_cli("validate", "--repo", str(EXAMPLE))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout == ""


def test_example_repo_postconf_prints_no_warning(tmp_path: Path) -> None:
    """Postfix itself prints nothing on stderr for example-repo's main.cf and master.cf."""
    stage = tmp_path / "stage"
    shutil.copytree(EXAMPLE / "postfix", stage)
    for path in stage.iterdir():
        path.write_text(path.read_text().replace("${secret:", "${x").replace("${x", "dummy-${x"))
    for path in stage.iterdir():
        text = path.read_text()
        while "dummy-${x" in text:
            start = text.index("dummy-${x")
            end = text.index("}", start)
            text = text[:start] + "dummy" + text[end + 1 :]
        path.write_text(text)
        os.utime(path, (1, 1))
    for flag in ("-n", "-M", "-P"):
        res = subprocess.run(["postconf", "-c", str(stage), flag], capture_output=True, text=True, check=False)
        assert res.returncode == 0
        assert res.stderr == "", res.stderr


def test_git_revision_is_read_without_checkout(tmp_path: Path) -> None:
    """--rev reads the object database: a later, uncommitted break in the work tree is not seen."""
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.net"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "initial"], check=True)
    (repo / "postfix" / "main.cf").write_text("smtp_sender_restrictions = x\n", encoding="utf-8")
    assert run_cli("validate", "--repo", str(repo), "--rev", "HEAD").returncode == 0
    assert run_cli("validate", "--repo", str(repo)).returncode == 1


def test_guide_taken_literally_names_every_ignored_parameter() -> None:
    """The guide's main.cf as printed exits 1 and names each parameter Postfix would ignore."""
    res = run_cli("validate", "--repo", str(GUIDE_LITERAL))
    assert res.returncode == 1, res.stdout + res.stderr
    expected = [
        line.strip()
        for line in (GUIDE_LITERAL / "EXPECTED").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert expected
    for name in expected:
        assert any(name in line and line.startswith("postfix/") for line in res.stdout.splitlines()), (
            name,
            res.stdout,
        )


def test_unreadable_source_exits_2(tmp_path: Path) -> None:
    """A revision that does not exist is "could not run", exit 2."""
    assert run_cli("validate", "--repo", str(tmp_path / "missing")).returncode == 2
    shutil.copytree(EXAMPLE, tmp_path / "plain")
    assert run_cli("validate", "--repo", str(tmp_path / "plain"), "--rev", "HEAD").returncode == 2


# ------------------------------------------------------------------------------------------------
# The bad-repository corpus


@dataclass(frozen=True)
class Bad:
    """One bad repository: a mutation of example-repo and the problem it must produce."""

    id: str
    mutate: Callable[[Path], None]
    path: str
    line: int | None
    message: str


def _edit(rel: str, old: str, new: str) -> Callable[[Path], None]:
    def mutate(repo: Path) -> None:
        p = repo / rel
        text = p.read_text(encoding="utf-8")
        assert old in text, (rel, old)
        p.write_text(text.replace(old, new, 1), encoding="utf-8")

    return mutate


def _append(rel: str, text: str) -> Callable[[Path], None]:
    def mutate(repo: Path) -> None:
        with (repo / rel).open("a", encoding="utf-8") as fh:
            fh.write(text)

    return mutate


def _write(rel: str, data: bytes) -> Callable[[Path], None]:
    def mutate(repo: Path) -> None:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(data)

    return mutate


def _symlink(rel: str, target: str) -> Callable[[Path], None]:
    def mutate(repo: Path) -> None:
        (repo / rel).unlink(missing_ok=True)
        (repo / rel).symlink_to(target)

    return mutate


def _domain(body: str, name: str = "bad.example") -> Callable[[Path], None]:
    header = "# yaml-language-server: $schema=../../schemas/domain.schema.json\n"
    return _write(f"domains/{name}.yaml", (header + body).encode())


def _line_of(rel: str, needle: str) -> int:
    for number, line in enumerate((EXAMPLE / rel).read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {rel}")


DOMAIN = "domains/bad.example.yaml"
MB = f'mailboxes:\n  - address: a@bad.example\n    password: "{HASH}"\n'

CASES = [
    Bad("yaml-syntax", _domain("domain: bad.example\nmailboxes: [\n"), DOMAIN, 4, "invalid YAML"),
    Bad("yaml-tab-indent", _domain("domain: bad.example\nmailboxes:\n\t- address: x\n"), DOMAIN, 4, "invalid YAML"),
    Bad("yaml-duplicate-key", _domain("domain: bad.example\ndomain: bad.example\n"), DOMAIN, 3, "duplicate key"),
    Bad("not-a-mapping", _domain("- bad.example\n"), DOMAIN, 1, "must be a mapping"),
    Bad("unknown-top-key", _domain("domain: bad.example\nquota: 5\n"), DOMAIN, 3, "unknown key 'quota'"),
    Bad(
        "unknown-mailbox-key",
        _domain(MB + "    quota: 5\n" + "domain: bad.example\n"),
        DOMAIN,
        5,
        "unknown key 'quota'",
    ),
    Bad("missing-domain-key", _domain(MB), DOMAIN, 2, "domain: required key is missing"),
    Bad(
        "wrong-type-password",
        _domain("domain: bad.example\nmailboxes:\n  - address: a@bad.example\n    password: 12345\n"),
        DOMAIN,
        5,
        "valid string",
    ),
    Bad("wrong-type-mailboxes", _domain("domain: bad.example\nmailboxes: john\n"), DOMAIN, 3, "mailboxes"),
    Bad(
        "plaintext-password",
        _domain("domain: bad.example\nmailboxes:\n  - address: a@bad.example\n    password: hunter2\n"),
        DOMAIN,
        5,
        "plaintext passwords are refused",
    ),
    Bad(
        "plain-scheme-password",
        _domain('domain: bad.example\nmailboxes:\n  - address: a@bad.example\n    password: "{PLAIN}hunter2"\n'),
        DOMAIN,
        5,
        "stores the plaintext",
    ),
    Bad("file-name-mismatch", _domain("domain: other.example\n"), DOMAIN, 2, "must equal the file name"),
    Bad(
        "foreign-mailbox",
        _domain("domain: bad.example\n" + MB.replace("a@bad.example", "a@example.org")),
        DOMAIN,
        4,
        "is not in domain bad.example",
    ),
    Bad(
        "foreign-alias-source",
        _domain("domain: bad.example\naliases:\n  - source: x@example.org\n    destination: a@bad.example\n"),
        DOMAIN,
        4,
        "alias source x@example.org is not in domain",
    ),
    Bad(
        "duplicate-mailbox",
        _domain("domain: bad.example\n" + MB + MB.removeprefix("mailboxes:\n")),
        DOMAIN,
        6,
        "duplicate mailbox a@bad.example",
    ),
    Bad(
        "duplicate-mailbox-case",
        _domain("domain: bad.example\n" + MB + MB.removeprefix("mailboxes:\n").replace("a@", "A@")),
        DOMAIN,
        6,
        "duplicate mailbox A@bad.example",
    ),
    Bad(
        "duplicate-alias",
        _domain(
            "domain: bad.example\naliases:\n  - source: x@bad.example\n    destination: y@example.org\n  - source: x@bad.example\n    destination: y@example.org\n"
        ),
        DOMAIN,
        6,
        "duplicate alias",
    ),
    Bad(
        "alias-cycle",
        _domain(
            "domain: bad.example\naliases:\n  - source: x@bad.example\n    destination: y@bad.example\n  - source: y@bad.example\n    destination: x@bad.example\n"
        ),
        DOMAIN,
        4,
        "alias cycle",
    ),
    Bad(
        "address-newline",
        _domain(
            'domain: bad.example\nmailboxes:\n  - address: "a@bad.example\\nrelay_domains = evil.test"\n    password: "'
            + HASH
            + '"\n'
        ),
        DOMAIN,
        4,
        "control character",
    ),
    Bad(
        "address-nul",
        _domain('domain: bad.example\nmailboxes:\n  - address: "a\\0@bad.example"\n    password: "' + HASH + '"\n'),
        DOMAIN,
        4,
        "control character",
    ),
    Bad(
        "address-quote",
        _domain(
            'domain: bad.example\nmailboxes:\n  - address: "\\"a b\\"@bad.example"\n    password: "' + HASH + '"\n'
        ),
        DOMAIN,
        4,
        "whitespace",
    ),
    Bad(
        "address-space",
        _domain('domain: bad.example\naliases:\n  - source: "x y@bad.example"\n    destination: a@example.org\n'),
        DOMAIN,
        4,
        "whitespace",
    ),
    Bad(
        "destination-tab",
        _domain('domain: bad.example\naliases:\n  - source: x@bad.example\n    destination: "a@example.org\\tb"\n'),
        DOMAIN,
        5,
        "control character",
    ),
    Bad(
        "password-newline",
        _domain('domain: bad.example\nmailboxes:\n  - address: a@bad.example\n    password: "{BLF-CRYPT}x\\ny"\n'),
        DOMAIN,
        5,
        "plaintext passwords are refused",
    ),
    Bad(
        "password-quote",
        _domain('domain: bad.example\nmailboxes:\n  - address: a@bad.example\n    password: "{BLF-CRYPT}x\'y z"\n'),
        DOMAIN,
        5,
        "plaintext passwords are refused",
    ),
    Bad("domain-control-char", _domain('domain: "bad.example\\r"\n'), DOMAIN, 2, "control character"),
    Bad(
        "domain-uppercase",
        _write("domains/Bad.example.yaml", b"domain: Bad.example\n"),
        "domains/Bad.example.yaml",
        1,
        "lower case",
    ),
    Bad("raw-nul-in-domain-file", _write(DOMAIN, b"domain: bad.example\x00\n"), DOMAIN, 1, "NUL byte"),
    Bad("non-utf8-domain-file", _write(DOMAIN, b"domain: bad.example\n# caf\xe9\n"), DOMAIN, 2, "not valid UTF-8"),
    Bad(
        "non-utf8-map",
        _write("postfix/canonical", (EXAMPLE / "postfix/canonical").read_bytes() + b"caf\xe9 x@example.net\n"),
        "postfix/canonical",
        len((EXAMPLE / "postfix/canonical").read_bytes().splitlines()) + 1,
        "not valid UTF-8",
    ),
    Bad(
        "control-char-in-main-cf",
        _append("postfix/main.cf", "biff = no\x1b\n"),
        "postfix/main.cf",
        None,
        "control character",
    ),
    Bad(
        "symlink-in-postfix",
        _symlink("postfix/generic", "/etc/passwd"),
        "postfix/generic",
        None,
        "symbolic links are not allowed",
    ),
    Bad(
        "symlink-domain",
        _symlink(DOMAIN, "../example-repo/domains/example.org.yaml"),
        DOMAIN,
        None,
        "symbolic links are not allowed",
    ),
    Bad(
        "oversize-file",
        lambda repo: (repo / "postfix" / "canonical").write_bytes(b"# x\n" * (17 * 1024 * 1024)),
        "postfix/canonical",
        None,
        "the limit is",
    ),
    Bad(
        "hidden-subdirectory-in-postfix",
        _write("postfix/.sasl/smtpd.conf", b"x\n"),
        "postfix/.sasl/smtpd.conf",
        None,
        "unexpected directory name",
    ),
    Bad("odd-file-name", _write("postfix/my map", b"a b\n"), "postfix/my map", None, "unexpected file name"),
    Bad(
        "built-table-committed",
        _write("postfix/canonical.db", b"\0\0"),
        "postfix/canonical.db",
        None,
        "do not belong in the repo",
    ),
    Bad(
        "non-yaml-in-domains", _write("domains/notes.txt", b"hello\n"), "domains/notes.txt", None, "only <domain>.yaml"
    ),
    Bad(
        "missing-master-cf",
        lambda repo: (repo / "postfix" / "master.cf").unlink(),
        "postfix/master.cf",
        None,
        "required file is missing",
    ),
    Bad(
        "ignored-parameter",
        _append("postfix/main.cf", "smtp_sender_restrictions = reject_unverified_sender\n"),
        "postfix/main.cf",
        None,
        "unused parameter smtp_sender_restrictions",
    ),
    Bad(
        "undefined-parameter",
        _append("postfix/main.cf", "smtpd_helo_restrictions = $undefined_things\n"),
        "postfix/main.cf",
        None,
        "$undefined_things is used but never defined",
    ),
    Bad(
        "master-bad-field-count",
        _append("postfix/master.cf", "broken    inet  n       -\n"),
        "postfix/master.cf",
        None,
        "bad field count",
    ),
    Bad(
        "master-bad-field-value",
        _append("postfix/master.cf", "2525      inet  q       -       n       -       -       smtpd\n"),
        "postfix/master.cf",
        None,
        'invalid private field "q"',
    ),
    Bad(
        "master-unknown-override",
        _append(
            "postfix/master.cf",
            "2526      inet  n       -       n       -       -       smtpd\n  -o smtpd_bogus_setting=1\n",
        ),
        "postfix/master.cf",
        None,
        "unused parameter smtpd_bogus_setting",
    ),
    Bad(
        "map-line-without-value",
        _append("postfix/canonical", "lonelykey\n"),
        "postfix/canonical",
        None,
        "expected format: key whitespace value",
    ),
    Bad(
        "alias-line-without-colon",
        _append("postfix/aliases", "nocolon value\n"),
        "postfix/aliases",
        None,
        "need name:value pair",
    ),
    Bad(
        "cidr-bad-pattern",
        _append("postfix/postscreen_access.cidr", "10.1 permit\n"),
        "postfix/postscreen_access.cidr",
        None,
        "bad address pattern",
    ),
    Bad(
        "table-source-missing",
        lambda repo: (repo / "postfix" / "generic").unlink(),
        "postfix/main.cf",
        _line_of("postfix/main.cf", "smtp_generic_maps"),
        "postfix/generic is not in the repo",
    ),
    Bad(
        "mysql-hosts-empty",
        _edit("postfix/mysql-virtual-mailbox-maps.cf", "hosts = inet:127.0.0.1:3306", "hosts ="),
        "postfix/mysql-virtual-mailbox-maps.cf",
        None,
        "hosts is empty",
    ),
    Bad(
        "mysql-unknown-key",
        _append("postfix/mysql-virtual-alias-maps.cf", "dbhost = localhost\n"),
        "postfix/mysql-virtual-alias-maps.cf",
        None,
        "unknown mysql_table(5) parameter 'dbhost'",
    ),
    Bad(
        "mysql-socket-path",
        _edit(
            "postfix/mysql-virtual-mailbox-maps.cf",
            "hosts = inet:127.0.0.1:3306",
            "hosts = unix:/run/mysqld/mysqld.sock",
        ),
        "postfix/mysql-virtual-mailbox-maps.cf",
        None,
        "chrooted",
    ),
    Bad(
        "bad-secret-name",
        _append("postfix/relay_password", "[x.example]:587 u:${secret:bad name}\n"),
        "postfix/relay_password",
        None,
        "invalid secret name",
    ),
    Bad(
        "unterminated-secret",
        _append("postfix/relay_password", "[x.example]:587 u:${secret:open\n"),
        "postfix/relay_password",
        None,
        "unterminated",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_repository_is_refused(case: Bad, tmp_path: Path) -> None:
    """Each bad repository produces a problem naming its file (and line where there is one)."""
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo)
    case.mutate(repo)
    problems = validate_snapshot(open_snapshot(repo)).problems
    rendered = [str(p) for p in problems]
    matching = [p for p in problems if p.path == case.path and case.message in p.message]
    assert matching, f"expected {case.path}: ...{case.message}... in {rendered}"
    if case.line is not None:
        assert any(p.line == case.line for p in matching), rendered


def test_corpus_is_large_enough() -> None:
    """The corpus holds at least 30 bad repositories."""
    assert len(CASES) >= 30


def test_every_problem_reported_not_just_the_first(tmp_path: Path) -> None:
    """Several independent defects are all reported in one run, and the CLI exits 1."""
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo)
    for case in CASES[:5] + [c for c in CASES if c.id in ("ignored-parameter", "map-line-without-value")]:
        if case.path == DOMAIN:
            continue
        case.mutate(repo)
    _domain("domain: bad.example\nquota: 1\n")(repo)
    _append("postfix/main.cf", "smtp_sender_restrictions = x\n")(repo)
    _append("postfix/canonical", "lonelykey\n")(repo)
    res = run_cli("validate", "--repo", str(repo))
    assert res.returncode == 1
    lines = res.stdout.splitlines()
    assert any(line.startswith(DOMAIN + ":3:") for line in lines), lines
    assert any(line.startswith("postfix/main.cf:") and "smtp_sender_restrictions" in line for line in lines)
    assert any(line.startswith("postfix/canonical:") for line in lines)


def test_symlink_and_submodule_in_git_revision(tmp_path: Path) -> None:
    """A committed symlink and a submodule are refused when reading a git revision."""
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.net"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    (repo / "postfix" / "generic").unlink()
    (repo / "postfix" / "generic").symlink_to("/etc/shadow")
    subprocess.run([*git, "add", "-A"], check=True)
    sub_sha = "0123456789abcdef0123456789abcdef01234567"
    subprocess.run([*git, "update-index", "--add", "--cacheinfo", f"160000,{sub_sha},domains/sub"], check=True)
    subprocess.run([*git, "commit", "-qm", "hostile"], check=True)
    res = run_cli("validate", "--repo", str(repo), "--rev", "HEAD")
    assert res.returncode == 1
    assert "postfix/generic: symbolic links are not allowed" in res.stdout
    assert "domains/sub: submodules are not allowed" in res.stdout
