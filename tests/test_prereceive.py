"""`reconciler pre-receive` as the hook of a real bare repository, fed by a real `git push`.

Each test installs the hook with deploy/install-pre-receive.sh into a bare repository, pushes from a
clone with git, and checks what the pusher's terminal shows (``remote: ...`` lines) and whether the
branch moved. git runs the hook with the pushed objects in quarantine, so every end-to-end test
also proves that they are read from there. The unit tests at the end need no services.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pygit2
import pytest
from mailhost import EXAMPLE, MailHost

from reconciler.gitrepo import extra_object_dirs, open_repository
from reconciler.prereceive import HookInputError, RefUpdate, parse_updates

ROOT = Path(__file__).resolve().parent.parent
RECONCILER = str(Path(sys.executable).parent / "reconciler")
ZERO = "0" * 40


def _git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "RECONCILER_"))}
    cmd = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.net", *args]
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
    return res


class Server:
    """A bare repository with the hook installed, and a clone to push from."""

    def __init__(self, base: Path, seed: Path, config: Path) -> None:
        self.bare = base / "srv.git"
        self.clone = base / "clone"
        _git(base, "clone", "-q", "--bare", str(seed), str(self.bare))
        res = subprocess.run(
            ["bash", str(ROOT / "deploy" / "install-pre-receive.sh"), str(self.bare), RECONCILER, str(config)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "installed" in res.stdout
        _git(base, "clone", "-q", str(self.bare), str(self.clone))

    def head(self, branch: str = "main") -> str:
        return _git(self.bare, "rev-parse", f"refs/heads/{branch}").stdout.strip()

    def commit(self, message: str, *extra: str) -> str:
        _git(self.clone, "add", "-A")
        _git(self.clone, *extra, "commit", "-q", "--allow-empty", "-m", message)
        return _git(self.clone, "rev-parse", "HEAD").stdout.strip()

    def push(self, *refspec: str) -> subprocess.CompletedProcess[str]:
        return _git(self.clone, "push", "origin", *(refspec or ("main",)), check=False)


def _plain_config(tmp_path: Path, **source: str) -> Path:
    config = tmp_path / "config.toml"
    extra = "".join(f'{k} = "{v}"\n' for k, v in source.items())
    config.write_text(
        f'[source]\nurl = "{tmp_path / "srv.git"}"\nbranch = "main"\n{extra}'
        f'[postfix]\nconfig_dir = "/etc/postfix"\n[state]\ndir = "{tmp_path / "state"}"\n'
    )
    return config


@pytest.fixture
def server(tmp_path: Path, postfix_tools_available: dict[str, str]) -> Server:
    """example-repo as the branch main of a bare repository guarded by the hook (no database needed)."""
    seed = tmp_path / "seed"
    shutil.copytree(EXAMPLE, seed)
    _git(seed, "init", "-q", "-b", "main")
    _git(seed, "add", "-A")
    _git(seed, "commit", "-q", "-m", "initial revision")
    return Server(tmp_path, seed, _plain_config(tmp_path))


def test_typo_in_main_cf_is_refused_with_file_line_and_message(server: Server) -> None:
    """A misspelled parameter is refused; the pusher sees main.cf's line and Postfix's complaint; the branch stays."""
    before = server.head()
    main_cf = server.clone / "postfix" / "main.cf"
    lines = main_cf.read_text().splitlines(keepends=True)
    number = next(i for i, line in enumerate(lines, 1) if line.startswith("smtpd_banner"))
    lines[number - 1] = lines[number - 1].replace("smtpd_banner", "smtpd_bannr", 1)
    main_cf.write_text("".join(lines))
    bad = server.commit("typo")
    res = server.push()
    assert res.returncode != 0
    assert f"remote: postfix/main.cf:{number}: unused parameter smtpd_bannr" in res.stderr, res.stderr
    assert f"refs/heads/main {bad[:12]} refused: 1 problem(s)" in res.stderr
    assert "pre-receive hook declined" in res.stderr
    assert server.head() == before
    assert _git(server.bare, "cat-file", "-e", bad, check=False).returncode != 0  # the quarantine was dropped


def test_every_problem_of_the_head_is_listed(server: Server) -> None:
    """A push with problems in two files lists both, each as path:line: message."""
    (server.clone / "domains" / "example.org.yaml").write_text(
        "domain: example.org\nmailboxes:\n  - address: john@example.org\n    password: secret\n"
    )
    with (server.clone / "postfix" / "main.cf").open("a") as fh:
        fh.write("smtpd_tls_security_levle = may\n")
    server.commit("two problems")
    res = server.push()
    assert res.returncode != 0
    remote = [line for line in res.stderr.splitlines() if line.startswith("remote: ")]
    assert any(line.startswith("remote: domains/example.org.yaml:4: ") and "plaintext" in line for line in remote), (
        res.stderr
    )
    assert any(line.startswith("remote: postfix/main.cf:") and "smtpd_tls_security_levle" in line for line in remote), (
        res.stderr
    )
    assert "refused: 2 problem(s)" in res.stderr


def test_other_refs_are_accepted_and_branch_deletion_refused(server: Server) -> None:
    """Tags and other branches are not checked (agents do not follow them); deleting main is refused."""
    with (server.clone / "postfix" / "main.cf").open("a") as fh:
        fh.write("no_such_parameter_at_all = 1\n")
    wip = server.commit("work in progress")
    _git(server.clone, "tag", "v-wip")
    res = server.push("HEAD:refs/heads/feature", "v-wip")
    assert res.returncode == 0, res.stderr
    assert server.head("feature") == wip
    main = server.head()
    res = server.push(":main")
    assert res.returncode != 0
    assert "remote: refs/heads/main: deleting the branch the agents follow is refused" in res.stderr
    assert server.head() == main


def test_mass_deletion_refused_at_push_time_unless_the_commit_allows_it(server: Server) -> None:
    """Dropping most domains is refused at push time, counted against the branch; the trailer lets it through."""
    before = server.head()
    for name in ("example.org.yaml", "example.com.yaml"):
        (server.clone / "domains" / name).unlink()
    server.commit("drop two domains")
    res = server.push()
    assert res.returncode != 0
    assert "remote: refs/heads/main: revision deletes" in res.stderr and "Allow-Mass-Delete: yes" in res.stderr
    assert server.head() == before
    _git(server.clone, "commit", "-q", "--amend", "-m", "drop two domains\n\nAllow-Mass-Delete: yes")
    res = server.push()
    assert res.returncode == 0, res.stderr
    assert server.head() == _git(server.clone, "rev-parse", "HEAD").stdout.strip()


def test_unsigned_push_refused_when_signatures_are_required(tmp_path: Path, server: Server) -> None:
    """With signatures required an unsigned head is refused and an SSH-signed one by a trusted key accepted."""
    key = tmp_path / "trusted"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)], check=True)
    signers = tmp_path / "allowed_signers"
    signers.write_text(f'test@example.net namespaces="git" {Path(f"{key}.pub").read_text().strip()}\n')
    _plain_config(tmp_path, signatures="required", allowed_signers=str(signers))
    before = server.head()
    unsigned = server.commit("unsigned")
    res = server.push()
    assert res.returncode != 0
    assert f"remote: refs/heads/main: commit {unsigned[:12]} is not signed; signatures are required" in res.stderr
    assert server.head() == before
    signed = server.commit(
        "signed", "-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "-c", "commit.gpgsign=true"
    )
    res = server.push()
    assert res.returncode == 0, res.stderr
    assert server.head() == signed


def test_could_not_run_fails_closed(tmp_path: Path, server: Server) -> None:
    """A hook whose configuration is unreadable exits 2 and git refuses the push."""
    (tmp_path / "config.toml").write_text("[source]\nno_such_key = 1\n")
    before = server.head()
    server.commit("anything")
    res = server.push()
    assert res.returncode != 0
    assert "source.no_such_key: unknown key" in res.stderr
    assert server.head() == before


def test_good_push_is_accepted_and_goes_live(mailhost: MailHost, tmp_path: Path) -> None:
    """A valid push to the guarded repository moves the branch, and the agent's apply makes it live."""
    host = mailhost
    srv = tmp_path / "git"
    srv.mkdir()
    server = Server(srv, host.work, host.config)
    host.config.write_text(host.config.read_text().replace(f'url = "{host.work}"', f'url = "{server.bare}"'))
    assert host.cli("apply").returncode == 0
    assert host.rcpt("newbox@example.net") == 550
    (server.clone / "domains" / "example.net.yaml").write_text(
        (server.clone / "domains" / "example.net.yaml")
        .read_text()
        .replace(
            "mailboxes:\n",
            'mailboxes:\n  - address: "newbox@example.net"\n    password: "{BLF-CRYPT}$2y$05$QDUtJYxKHTfAOm0Znz5SiOxDjfx2AUkk8vLhZFSc3FUxFU1AfxQ0W"\n',
            1,
        )
    )
    good = server.commit("add newbox")
    res = server.push()
    assert res.returncode == 0, res.stderr
    assert f"remote: reconciler: refs/heads/main {good[:12]}: valid" in res.stderr
    assert server.head() == good
    res = host.cli("apply")
    assert res.returncode == 0, res.stderr
    assert host.rcpt("newbox@example.net") == 250


# -- units ---------------------------------------------------------------------------------------


def test_parse_updates_reads_git_lines_and_refuses_garbage() -> None:
    """git's lines become updates (creation and deletion recognised); anything else names its line."""
    new = "a" * 40
    updates = parse_updates([f"{ZERO} {new} refs/heads/main\n", "\n", f"{new} {ZERO} refs/tags/x\n"])
    assert updates == [RefUpdate(ZERO, new, "refs/heads/main"), RefUpdate(new, ZERO, "refs/tags/x")]
    assert updates[0].creates and not updates[0].deletes and updates[1].deletes
    with pytest.raises(HookInputError, match="stdin:2"):
        parse_updates([f"{ZERO} {new} refs/heads/main\n", "rm -rf /\n"])


def test_open_repository_sees_objects_in_quarantine(tmp_path: Path) -> None:
    """Objects in a directory git names in GIT_QUARANTINE_PATH are readable; plain libgit2 does not see them."""
    repo = pygit2.init_repository(str(tmp_path / "repo.git"), bare=True)
    other = pygit2.init_repository(str(tmp_path / "incoming.git"), bare=True)
    blob = other.create_blob(b"pushed content\n")
    quarantine = str(tmp_path / "incoming.git" / "objects")
    env = {"GIT_QUARANTINE_PATH": quarantine, "GIT_OBJECT_DIRECTORY": quarantine,
           "GIT_ALTERNATE_OBJECT_DIRECTORIES": f"{tmp_path / 'repo.git' / 'objects'}"}  # fmt: skip
    assert blob not in repo
    seen = open_repository(tmp_path / "repo.git", env)
    assert bytes(seen[blob].data) == b"pushed content\n"  # type: ignore[attr-defined]
    assert extra_object_dirs(env) == [os.path.realpath(quarantine), os.path.realpath(tmp_path / "repo.git" / "objects")]
    assert extra_object_dirs({}) == []
