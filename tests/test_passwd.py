"""`reconciler passwd`: the printed hash verifies against the password and a domain file accepts it."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import subprocess
import sys
import termios
import time

import argon2
import bcrypt
import pytest

from reconciler.models import DomainFile
from reconciler.passwd import sha512_crypt

PASSWORD = "correct horse ¶ battery"


def _passwd(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "passwd", *args], input=stdin, capture_output=True, text=True, check=False
    )


def _verifies(hashed: str, password: str) -> bool:
    scheme, _, rest = hashed[1:].partition("}")
    if scheme == "BLF-CRYPT":
        return bcrypt.checkpw(password.encode(), rest.replace("$2y$", "$2b$", 1).encode())
    if scheme == "ARGON2ID":
        try:
            return argon2.PasswordHasher().verify(rest, password)
        except argon2.exceptions.VerifyMismatchError:
            return False
    assert scheme == "SHA512-CRYPT"
    salt = rest.split("$")[2]
    return sha512_crypt(password, salt) == rest


@pytest.mark.parametrize(
    ("scheme", "prefix"),
    [(None, "{BLF-CRYPT}$2y$10$"), ("SHA512-CRYPT", "{SHA512-CRYPT}$6$"), ("ARGON2ID", "{ARGON2ID}$argon2id$")],
)
def test_stdin_password_hash_verifies_and_validates(scheme: str | None, prefix: str) -> None:
    """One stdin line is hashed with the scheme's prefix; the hash verifies, a wrong password does not, a domain file takes it."""
    res = _passwd(*(["--scheme", scheme] if scheme else []), stdin=PASSWORD + "\n")
    assert res.returncode == 0, res.stderr
    hashed = res.stdout.strip()
    assert hashed.startswith(prefix) and res.stdout.count("\n") == 1
    assert PASSWORD not in res.stdout + res.stderr
    assert _verifies(hashed, PASSWORD)
    assert not _verifies(hashed, PASSWORD + "x")
    model = DomainFile.model_validate(
        {"domain": "example.org", "mailboxes": [{"address": "a@example.org", "password": hashed}]}
    )
    assert model.mailboxes[0].password == hashed


def test_empty_stdin_is_refused() -> None:
    """No password on stdin exits 2 and prints no hash."""
    res = _passwd(stdin="")
    assert res.returncode == 2 and res.stdout == ""
    assert "empty password" in res.stderr


def _controlling_terminal() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _on_terminal(lines: list[str]) -> tuple[int, str]:
    """Run `reconciler passwd` with a pseudo-terminal as stdin, answering each prompt with a line."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "passwd"],
        stdin=secondary,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_controlling_terminal,  # getpass prompts and reads on /dev/tty
    )
    os.close(secondary)
    seen = b""
    try:
        for number, line in enumerate(lines, start=1):
            deadline = time.monotonic() + 20
            while seen.count(b":") < number and time.monotonic() < deadline:
                ready, _, _ = select.select([primary], [], [], 0.5)
                if ready:
                    seen += os.read(primary, 1024)
            os.write(primary, line.encode() + b"\n")
        out, _ = proc.communicate(timeout=30)
    finally:
        os.close(primary)
    assert b"New password:" in seen
    assert PASSWORD.encode() not in seen  # typed without echo
    return proc.returncode, out.decode()


def test_terminal_asks_twice_without_echo() -> None:
    """On a terminal the password is read twice without echo; equal answers print a hash, different ones exit 2."""
    code, out = _on_terminal([PASSWORD, PASSWORD])
    assert code == 0, out
    assert _verifies(out.strip(), PASSWORD)
    code, out = _on_terminal([PASSWORD, PASSWORD + "typo"])
    assert code == 2 and out == ""
