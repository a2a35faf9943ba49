"""Signed commits only, and the mass-deletion guard, against a real Postfix and MariaDB."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from mailhost import MailHost


def _require(host: MailHost, **keys: str) -> None:
    """Turn on a [source] policy in the host's config file."""
    text = host.config.read_text()
    extra = "".join(f'{k} = "{v}"\n' for k, v in keys.items())
    host.config.write_text(text.replace("[source]\n", f"[source]\n{extra}", 1))


def _ssh_key(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip() if path.suffix else Path(f"{path}.pub").read_text().strip()


def _ssh_commit(host: MailHost, key: Path, message: str) -> str:
    host.git("add", "-A")
    host.git(
        "-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "commit", "-q", "-S", "--allow-empty", "-m", message
    )
    return host.git("rev-parse", "HEAD")


@pytest.fixture
def ssh_keys(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A trusted key (in allowed_signers, namespace git), a stranger's key, and the allowed_signers file."""
    trusted, stranger = tmp_path / "trusted", tmp_path / "stranger"
    pub = _ssh_key(trusted)
    _ssh_key(stranger)
    signers = tmp_path / "allowed_signers"
    signers.write_text(f'test@example.net namespaces="git" {pub}\n')
    return trusted, stranger, signers


def test_unsigned_head_is_refused(mailhost: MailHost, ssh_keys: tuple[Path, Path, Path]) -> None:
    """With signatures required an unsigned commit changes nothing and the error names the commit."""
    host = mailhost
    _, _, signers = ssh_keys
    _require(host, signatures="required", allowed_signers=str(signers))
    before = host.fingerprint()
    res = host.cli("apply")
    assert res.returncode == 1
    assert "is not signed" in res.stderr
    assert host.git("rev-parse", "HEAD")[:12] in res.stderr
    assert host.fingerprint() == before


def test_ssh_signed_by_trusted_key_applies(mailhost: MailHost, ssh_keys: tuple[Path, Path, Path]) -> None:
    """A head commit SSH-signed by a key of allowed_signers is applied."""
    host = mailhost
    trusted, _, signers = ssh_keys
    _require(host, signatures="required", allowed_signers=str(signers))
    host.add_mailbox("signed@example.net")
    _ssh_commit(host, trusted, "signed change")
    res = host.cli("apply")
    assert res.returncode == 0, res.stderr
    assert host.rcpt("signed@example.net") == 250


def test_ssh_signed_by_stranger_is_refused(mailhost: MailHost, ssh_keys: tuple[Path, Path, Path]) -> None:
    """A commit signed by a key outside allowed_signers changes nothing."""
    host = mailhost
    _, stranger, signers = ssh_keys
    _require(host, signatures="required", allowed_signers=str(signers))
    before = host.fingerprint()
    _ssh_commit(host, stranger, "stranger's change")
    res = host.cli("apply")
    assert res.returncode == 1
    assert "not in allowed_signers" in res.stderr
    assert host.fingerprint() == before


def test_ssh_bad_signature_is_refused(mailhost: MailHost, ssh_keys: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """A signature that does not verify in the git namespace (the key is trusted for files only) is refused."""
    host = mailhost
    trusted, _, signers = ssh_keys
    signers.write_text(signers.read_text().replace('namespaces="git"', 'namespaces="file"'))
    _require(host, signatures="required", allowed_signers=str(signers))
    before = host.fingerprint()
    _ssh_commit(host, trusted, "wrong namespace")
    res = host.cli("apply")
    assert res.returncode == 1
    assert "signature" in res.stderr
    assert host.fingerprint() == before


def _gpg(home: Path, *args: str) -> str:
    env = {**os.environ, "GNUPGHOME": str(home)}
    return subprocess.run(
        ["gpg", "--batch", "--no-tty", *args], env=env, check=True, capture_output=True, text=True
    ).stdout


def _gpg_key(home: Path, uid: str) -> str:
    home.mkdir(mode=0o700)
    _gpg(home, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")
    listing = _gpg(home, "--with-colons", "--list-secret-keys")
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted", "stranger"])
def test_gpg_signed(mailhost: MailHost, tmp_path: Path, trusted: bool) -> None:
    """An OpenPGP-signed head applies when its key is in gpg_keyring and is refused otherwise."""
    host = mailhost
    signer_home = tmp_path / "signer"
    fpr = _gpg_key(signer_home, "Signer <signer@example.net>")
    keyring = tmp_path / "keyring.asc"
    if trusted:
        keyring.write_text(_gpg(signer_home, "--armor", "--export", fpr))
    else:
        other = _gpg_key(tmp_path / "other", "Other <other@example.net>")
        keyring.write_text(_gpg(tmp_path / "other", "--armor", "--export", other))
    _require(host, signatures="required", gpg_keyring=str(keyring))
    host.add_mailbox("gpg@example.net")
    host.git("add", "-A")
    env = {**os.environ, "GNUPGHOME": str(signer_home)}
    subprocess.run(
        ["git", "-C", str(host.work), "-c", "user.name=Test", "-c", "user.email=signer@example.net",
         "-c", f"user.signingkey={fpr}", "commit", "-q", "-S", "-m", "gpg signed"],
        env=env, check=True,
    )  # fmt: skip
    before = host.fingerprint()
    res = host.cli("apply")
    if trusted:
        assert res.returncode == 0, res.stderr
        assert host.rcpt("gpg@example.net") == 250
    else:
        assert res.returncode == 1
        assert "not in gpg_keyring" in res.stderr
        assert host.fingerprint() == before


def test_mass_deletion_needs_the_trailer(mailhost: MailHost) -> None:
    """Deleting more than max_delete_fraction of the rows is refused unless the commit allows it."""
    host = mailhost
    assert host.cli("apply").returncode == 0
    before = host.fingerprint()
    (host.work / "domains" / "example.org.yaml").unlink()
    (host.work / "domains" / "example.com.yaml").unlink()
    host.commit("drop two domains")
    res = host.cli("apply")
    assert res.returncode == 1
    assert "max_delete_fraction" in res.stderr and "Allow-Mass-Delete: yes" in res.stderr
    assert host.fingerprint() == before
    host.git("commit", "-q", "--amend", "-m", "drop two domains\n\nAllow-Mass-Delete: yes")
    res = host.cli("apply")
    assert res.returncode == 0, res.stderr
    assert [d for (d,) in host.rows_fingerprint()["virtual_domains"]] == ["example.net"]


def test_small_deletion_passes_the_guard(mailhost: MailHost) -> None:
    """Removing one alias is well under the fraction and applies without a trailer."""
    host = mailhost
    assert host.cli("apply").returncode == 0
    host.edit(
        "domains/example.org.yaml",
        lambda t: t.replace("  - source: jack@example.org\n    destination: john@example.org\n", ""),
    )
    host.commit("drop jack")
    assert host.cli("apply").returncode == 0
