"""Commit signature policy: with ``[source] signatures = "required"`` only a head commit signed by a
trusted key is applied.

SSH signatures are verified with ``ssh-keygen -Y find-principals`` / ``-Y verify`` against
``allowed_signers`` in the ``git`` namespace, as git itself does; OpenPGP signatures with ``gpg
--verify`` in a private, throw-away GNUPGHOME holding only ``gpg_keyring`` (every key in it is
trusted, no other key is). Called by ``engine`` before any other check: nothing live changes for
an unsigned, badly signed or stranger-signed revision. No shell, argument lists only.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pygit2

from reconciler.errors import PermanentError
from reconciler.gitrepo import open_repository

SSH_HEADER = b"-----BEGIN SSH SIGNATURE-----"
PGP_HEADER = b"-----BEGIN PGP SIGNATURE-----"


class SignatureRejected(PermanentError):
    """The revision's commit is unsigned, badly signed or signed by a key that is not trusted."""


def commit_signature(repo_path: Path, commit_id: str) -> tuple[bytes | None, bytes | None]:
    """(signature, signed payload) of a commit, or (None, None) when it is not signed."""
    repo = open_repository(repo_path)
    commit = repo[commit_id]
    if not isinstance(commit, pygit2.Commit):
        raise SignatureRejected(f"{commit_id[:12]} is not a commit")
    signature, payload = commit.gpg_signature
    return signature, payload


def verify_commit(repo_path: Path, commit_id: str, allowed_signers: str, gpg_keyring: str) -> str:
    """Who signed the commit (principal or key fingerprint); raises ``SignatureRejected`` otherwise."""
    short = commit_id[:12]
    signature, payload = commit_signature(repo_path, commit_id)
    if not signature or payload is None:
        raise SignatureRejected(f"commit {short} is not signed; signatures are required")
    with tempfile.TemporaryDirectory(prefix="reconciler-sig-") as tmp:
        sig_file = Path(tmp) / "signature"
        data_file = Path(tmp) / "payload"
        sig_file.write_bytes(signature)
        data_file.write_bytes(payload)
        if signature.lstrip().startswith(SSH_HEADER):
            if not allowed_signers:
                raise SignatureRejected(f"commit {short} has an SSH signature but no allowed_signers is configured")
            return _verify_ssh(short, sig_file, payload, allowed_signers)
        if signature.lstrip().startswith(PGP_HEADER):
            if not gpg_keyring:
                raise SignatureRejected(f"commit {short} has an OpenPGP signature but no gpg_keyring is configured")
            return _verify_gpg(short, Path(tmp), sig_file, data_file, gpg_keyring)
    raise SignatureRejected(f"commit {short} carries a signature of an unknown kind")


def _run(
    argv: list[str], stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, timeout=30, check=False, env=env)
    except FileNotFoundError as exc:
        raise SignatureRejected(f"{argv[0]} is not installed; cannot verify signatures") from exc


def _verify_ssh(short: str, sig_file: Path, payload: bytes, allowed_signers: str) -> str:
    found = _run(["ssh-keygen", "-Y", "find-principals", "-f", allowed_signers, "-s", str(sig_file)])
    principals = [p for p in found.stdout.decode("utf-8", "replace").split() if p]
    if found.returncode != 0 or not principals:
        raise SignatureRejected(f"commit {short} is signed by an SSH key that is not in allowed_signers")
    principal = principals[0]
    res = _run(
        ["ssh-keygen", "-Y", "verify", "-f", allowed_signers, "-I", principal, "-n", "git", "-s", str(sig_file)],
        stdin=payload,
    )
    if res.returncode != 0:
        detail = res.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["verification failed"]
        raise SignatureRejected(f"commit {short}: bad SSH signature ({detail[0]})")
    return principal


def _verify_gpg(short: str, tmp: Path, sig_file: Path, data_file: Path, keyring: str) -> str:
    home = tmp / "gnupg"
    home.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin"}
    base = ["gpg", "--batch", "--no-tty", "--no-auto-key-retrieve", "--homedir", str(home)]
    imported = _run([*base, "--import", keyring], env=env)
    if imported.returncode != 0:
        raise SignatureRejected(f"gpg_keyring {keyring} could not be imported")
    res = _run([*base, "--status-fd", "1", "--verify", str(sig_file), str(data_file)], env=env)
    status = res.stdout.decode("utf-8", "replace").splitlines()
    valid = [line.split()[2] for line in status if line.startswith("[GNUPG:] VALIDSIG ")]
    if res.returncode != 0 or not valid:
        if any(line.startswith("[GNUPG:] NO_PUBKEY") or line.startswith("[GNUPG:] ERRSIG") for line in status):
            raise SignatureRejected(f"commit {short} is signed by an OpenPGP key that is not in gpg_keyring")
        raise SignatureRejected(f"commit {short}: bad OpenPGP signature")
    return valid[0]
