"""Layouts real servers have: postfix/ subdirectories, bare crypt(3) hashes, outside tables via rootfs/.

Validation cases run Postfix's own tools on a staged copy of example-repo; the apply case runs on a
private mail host (real Postfix, real MariaDB) and checks the live files, the built tables and SMTP.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mailhost import MailHost
from pydantic import ValidationError

from reconciler.models import AgentConfig, DomainFile, PostfixConfig
from reconciler.source import open_snapshot
from reconciler.validate import validate_snapshot

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example-repo"

SHA512 = "$6$kC2Q1mYxZ3p5Tn0b$" + "A" * 86
SHA256 = "$5$rounds=5000$saltsalt$" + "b" * 43
BCRYPT = "$2y$05$QDUtJYxKHTfAOm0Znz5SiOxDjfx2AUkk8vLhZFSc3FUxFU1AfxQ0W"
YESCRYPT = "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7"
ARGON2ID = "$argon2id$v=19$m=65536,t=3,p=1$c29tZXNhbHRzb21lc2FsdA$3Bhf5J1xw2c1ZkvK9mGf0Q1yW2nGQ7z3o1nJbVqJw0c"
MD5 = "$1$saltsalt$" + "c" * 22


def _mailbox(password: str) -> dict[str, object]:
    return {"domain": "example.org", "mailboxes": [{"address": "a@example.org", "password": password}]}


@pytest.mark.parametrize("password", [SHA512, SHA256, BCRYPT, "$2b$12$" + "d" * 53, YESCRYPT, ARGON2ID, MD5])
def test_bare_crypt_hashes_accepted(password: str) -> None:
    """A bare crypt(3) hash of every scheme Dovecot's CRYPT reads is accepted without a {SCHEME} prefix."""
    assert DomainFile.model_validate(_mailbox(password)).mailboxes[0].password == password


@pytest.mark.parametrize(
    "password",
    ["$6$hello", "$6$salt$short", "$2y$05$tooshort", "$y$", "$argon2id$secret", "$secret$", "abXyZ0123.ab/", "hunter2"],
)
def test_plaintext_that_looks_like_crypt_refused(password: str) -> None:
    """A plaintext password that merely starts like a crypt hash (or a DES-crypt lookalike) is refused."""
    with pytest.raises(ValidationError, match="plaintext passwords are refused"):
        DomainFile.model_validate(_mailbox(password))


def test_outside_paths_config_checked() -> None:
    """[postfix].outside_paths defaults to /etc/aliases and refuses relative or non-normal paths."""
    assert AgentConfig().postfix.outside_paths == ("/etc/aliases",)
    assert PostfixConfig.model_validate({"outside_paths": ["/srv/mail/aliases"]}).outside_paths == (
        "/srv/mail/aliases",
    )
    for bad in ("etc/aliases", "/etc/../root/.ssh/authorized_keys", "/aliases", "/etc//aliases"):
        with pytest.raises(ValidationError):
            PostfixConfig.model_validate({"outside_paths": [bad]})


def _subdir_repo(repo: Path) -> None:
    """example-repo with the mysql configs in postfix/sql/ and two maps in postfix/maps/."""
    shutil.copytree(EXAMPLE, repo)
    pf = repo / "postfix"
    (pf / "sql").mkdir()
    (pf / "maps").mkdir()
    main = (pf / "main.cf").read_text()
    for path in sorted(pf.glob("mysql-*.cf")):
        path.rename(pf / "sql" / path.name)
        main = main.replace(f"$config_directory/{path.name}", f"$config_directory/sql/{path.name}")
    for name in ("canonical", "postscreen_access.cidr"):
        (pf / name).rename(pf / "maps" / name)
        main = main.replace(f"$config_directory/{name}", f"$config_directory/maps/{name}")
    (pf / "main.cf").write_text(main)


def test_subdirectories_validate(tmp_path: Path) -> None:
    """Tables and mysql configs in postfix/ subdirectories are found, built and checked like any other."""
    repo = tmp_path / "repo"
    _subdir_repo(repo)
    result = validate_snapshot(open_snapshot(repo))
    assert result.problems == ()
    tables = {t.name: (t.type, t.builder) for t in result.tables}
    assert tables["maps/canonical"] == ("hash", "postmap")
    assert tables["maps/postscreen_access.cidr"] == ("cidr", "")
    assert "sql/mysql-virtual-mailbox-maps.cf" in result.desired.files


def test_subdirectory_problems_name_the_file(tmp_path: Path) -> None:
    """A bad line in a subdirectory's map and a missing subdirectory table are reported at their repo paths."""
    repo = tmp_path / "repo"
    _subdir_repo(repo)
    with (repo / "postfix/maps/canonical").open("a") as fh:
        fh.write("lonely-key-without-value\n")
    lines = (repo / "postfix/maps/canonical").read_text().count("\n")
    (repo / "postfix/sql/mysql-virtual-alias-maps.cf").write_text(
        (repo / "postfix/sql/mysql-virtual-alias-maps.cf").read_text() + "bogus_key = 1\n"
    )
    main = (repo / "postfix/main.cf").read_text()
    (repo / "postfix/main.cf").write_text(main.replace("$config_directory/generic", "$config_directory/maps/generic"))
    problems = [str(p) for p in validate_snapshot(open_snapshot(repo)).problems]
    assert any(p.startswith(f"postfix/maps/canonical:{lines}: ") for p in problems), problems
    assert any(p.startswith("postfix/sql/mysql-virtual-alias-maps.cf:") and "bogus_key" in p for p in problems)
    assert any("postfix/maps/generic is not in the repo" in p for p in problems), problems


def test_unsafe_subdirectory_names_refused(tmp_path: Path) -> None:
    """A hidden or oddly named directory under postfix/, or a rootfs/ path with '..', is refused."""
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo)
    (repo / "postfix/.git-crypt").mkdir()
    (repo / "postfix/.git-crypt/x").write_text("a b\n")
    (repo / "postfix/my maps").mkdir()
    (repo / "postfix/my maps/x").write_text("a b\n")
    (repo / "rootfs/etc/..x").mkdir(parents=True)
    (repo / "rootfs/etc/..x/aliases").write_text("root: a\n")
    problems = [str(p) for p in validate_snapshot(open_snapshot(repo)).problems]
    assert any(p.startswith("postfix/.git-crypt/x: unexpected directory name") for p in problems), problems
    assert any(p.startswith("postfix/my maps/x: unexpected directory name") for p in problems), problems
    assert any(p.startswith("rootfs/etc/..x/aliases: ") for p in problems), problems


def test_outside_table_not_allowed_is_left_alone(tmp_path: Path) -> None:
    """A repo naming /root/.ssh/authorized_keys as a table is refused; a disallowed plain path gets a note, never a build."""
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo)
    main = (repo / "postfix/main.cf").read_text()
    keys = repo / "rootfs/root/.ssh/authorized_keys"
    keys.parent.mkdir(parents=True)
    keys.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEvil attacker\n")
    (repo / "postfix/main.cf").write_text(main + "relocated_maps = hash:/root/.ssh/authorized_keys\n")
    result = validate_snapshot(open_snapshot(repo), outside_paths=("/root/.ssh/authorized_keys",))
    assert [str(p) for p in result.problems] == [
        "rootfs/root/.ssh/authorized_keys: unexpected directory name '.ssh': use letters, digits, '.', '_', '+' and '-'"
    ]
    assert "/root/.ssh/authorized_keys" not in result.desired.files
    assert all(not t.name.startswith("/") for t in result.tables)
    with pytest.raises(ValidationError):  # nor can a host allow it
        PostfixConfig.model_validate({"outside_paths": ["/root/.ssh/authorized_keys"]})
    shutil.rmtree(repo / "rootfs")
    keys = repo / "rootfs/root/ssh/authorized_keys"
    keys.parent.mkdir(parents=True)
    keys.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEvil attacker\n")
    main += "relocated_maps = hash:/root/ssh/authorized_keys\n"
    (repo / "postfix/main.cf").write_text(main)
    result = validate_snapshot(open_snapshot(repo))
    assert result.problems == ()
    assert "/root/ssh/authorized_keys" not in result.desired.files
    assert all(not t.name.startswith("/") for t in result.tables)
    notes = [str(n) for n in result.notes]
    assert "rootfs/root/ssh/authorized_keys: /root/ssh/authorized_keys is not in [postfix].outside_paths" in " ".join(
        notes
    ), notes
    assert any(
        n.startswith("postfix/main.cf:") and "hash:/root/ssh/authorized_keys outside the config directory" in n
        for n in notes
    ), notes
    # The default Debian alias_maps = hash:/etc/aliases without a rootfs/ file: a note, not a problem.
    (repo / "postfix/main.cf").write_text(main.replace("hash:$config_directory/aliases", "hash:/etc/aliases"))
    (repo / "postfix/aliases").unlink()
    result = validate_snapshot(open_snapshot(repo))
    assert result.problems == ()
    assert any("names hash:/etc/aliases outside the config directory" in str(n) for n in result.notes)


def test_validate_cli_prints_notes(tmp_path: Path) -> None:
    """`reconciler validate` prints notes on stderr as 'note: ...' and still exits 0."""
    import subprocess
    import sys

    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo)
    (repo / "rootfs/srv/mail").mkdir(parents=True)
    (repo / "rootfs/srv/mail/aliases").write_text("root: a@example.org\n")
    res = subprocess.run(
        [sys.executable, "-m", "reconciler", "validate", "--repo", str(repo)],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout == ""
    assert "note: rootfs/srv/mail/aliases: /srv/mail/aliases is not in [postfix].outside_paths" in res.stderr


def test_subdirs_and_outside_table_apply_end_to_end(mailhost: MailHost) -> None:
    """Subdirectory files and an allowed outside alias table are applied, built and used; a disallowed one is not written."""
    host = mailhost
    outside = host.postfix.base / "sysetc" / "aliases"
    outside.parent.mkdir()
    forbidden = host.postfix.base / "root" / "ssh" / "authorized_keys"
    config = host.config.read_text()
    host.config.write_text(config.replace("[postfix]\n", f'[postfix]\noutside_paths = ["{outside}"]\n', 1))
    pf = host.work / "postfix"
    (pf / "sql").mkdir()
    (pf / "maps").mkdir()
    main = (pf / "main.cf").read_text()
    for path in sorted(pf.glob("mysql-*.cf")):
        path.rename(pf / "sql" / path.name)
        main = main.replace(f"/{path.name}", f"/sql/{path.name}")
    (pf / "canonical").rename(pf / "maps" / "canonical")
    main = main.replace("/canonical\n", "/maps/canonical\n")
    rootfs_aliases = host.work / "rootfs" / str(outside).lstrip("/")
    rootfs_aliases.parent.mkdir(parents=True)
    (pf / "aliases").rename(rootfs_aliases)
    for param in ("alias_maps", "alias_database"):
        main = main.replace(f"{param} = hash:$config_directory/aliases", f"{param} = hash:{outside}")
    assert f"alias_maps = hash:{outside}" in main
    (pf / "main.cf").write_text(main)
    evil = host.work / "rootfs" / str(forbidden).lstrip("/")
    evil.parent.mkdir(parents=True)
    evil.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEvil attacker\n")
    host.commit("subdirectories and an outside alias table")
    res = host.cli("apply")
    assert res.returncode == 0, res.stdout + res.stderr
    live = host.postfix.config_dir
    assert (live / "sql" / "mysql-virtual-mailbox-maps.cf").is_file()
    assert not (live / "mysql-virtual-mailbox-maps.cf").exists()
    assert (live / "maps" / "canonical.db").is_file()
    assert outside.read_bytes() == rootfs_aliases.read_bytes()
    assert Path(f"{outside}.db").is_file()
    assert not forbidden.exists() and not forbidden.parent.exists()
    assert not list(outside.parent.glob(".*reconciler*"))
    assert host.postfix.postmap("-q", "postmaster", f"hash:{outside}").strip() != ""
    assert host.rcpt("john@example.org") == 250
    assert host.cli("diff").returncode == 0
    # The outside table changes like any other: only it is rebuilt.
    rootfs_aliases.write_text(rootfs_aliases.read_text() + "adopted-test: root\n")
    host.commit("one more system alias")
    res = host.cli("diff")
    assert res.returncode == 1 and f"{outside}" in res.stdout, res.stdout
    assert host.cli("apply").returncode == 0
    assert host.postfix.postmap("-q", "adopted-test", f"hash:{outside}").strip() == "root"
    # Dropped from outside_paths, the table is no longer managed: neither rewritten nor deleted.
    host.config.write_text(config.replace("[postfix]\n", "[postfix]\noutside_paths = []\n", 1))
    before = outside.read_bytes()
    (rootfs_aliases).unlink()
    host.commit("outside table gone from the repo")
    assert host.cli("apply").returncode == 0
    assert outside.read_bytes() == before


def test_password_fast_check_agrees_with_the_model() -> None:
    """password_ok (import's fast path) accepts exactly the passwords the domain file model accepts."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from reconciler.models import password_ok, password_problem

    corpus = [SHA512, SHA256, BCRYPT, YESCRYPT, ARGON2ID, MD5, "{BLF-CRYPT}" + BCRYPT, "{PLAIN}x", "{PLAINX}y",
              "{CRAM-MD5}z", "{SSHA512}abc", "{}x", "{ssha}x", "$6$hello", "hunter2", "{X}" + "a" * 253, "{X}" + "a" * 252,
              "{A}b c", "{A}b\n", ""]  # fmt: skip
    for value in corpus:
        assert password_ok(value) == (password_problem(value) is None), value

    @settings(max_examples=300, deadline=None)
    @given(st.from_regex(r"\A(\{[A-Z-]{0,12}\}|\$[0-9a-z]{1,8}\$)?[!-~ ]{0,120}\Z"))
    def agree(value: str) -> None:
        assert password_ok(value) == (password_problem(value) is None)

    agree()
