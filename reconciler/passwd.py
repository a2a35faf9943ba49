"""``reconciler passwd``: password hashes for a domain file, as Dovecot reads them.

Low layer, called by the CLI only. The schemes and what computes them:

- ``{BLF-CRYPT}``: ``bcrypt`` (pyca; the maintained binding of OpenBSD's bcrypt), cost 10,
  written ``$2y$`` as Dovecot and PHP do (the same algorithm as ``$2b$``);
- ``{ARGON2ID}``: ``argon2-cffi`` (the maintained binding of the reference implementation), its
  default parameters (RFC 9106's second recommendation: m=64 MiB, t=3, p=4);
- ``{SHA512-CRYPT}``: ``openssl passwd -6``, the password on its stdin (never in argv). Python's
  ``crypt`` module is deprecated since 3.11 and gone in 3.13, passlib is unmaintained; OpenSSL is
  already a dependency of the host and implements exactly glibc's SHA-512 crypt (5000 rounds, as
  ``doveadm pw`` does by default).
"""

from __future__ import annotations

import getpass
import subprocess
import sys
from enum import StrEnum

import argon2
import bcrypt

from reconciler.errors import ReconcilerError

BCRYPT_COST = 10  # ~60 ms a check on this machine's cores: Dovecot pays it on every login


class Scheme(StrEnum):
    """The schemes ``reconciler passwd`` writes."""

    BLF_CRYPT = "BLF-CRYPT"
    SHA512_CRYPT = "SHA512-CRYPT"
    ARGON2ID = "ARGON2ID"


class PasswordError(ReconcilerError):
    """No usable password was read, or a hash could not be computed."""


def read_password() -> str:
    """From a terminal: twice without echo, both equal. Otherwise: the first line of stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass("New password: ")
        second = getpass.getpass("Again: ")
        if first != second:
            raise PasswordError("the passwords differ")
        password = first
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        raise PasswordError("empty password")
    return password


def hash_password(password: str, scheme: str = Scheme.BLF_CRYPT) -> str:
    """The hash of ``password`` with its ``{SCHEME}`` prefix."""
    secret = password.encode("utf-8")
    match Scheme(scheme):
        case Scheme.BLF_CRYPT:
            if len(secret) > 72:
                raise PasswordError("bcrypt uses at most 72 bytes of a password; choose SHA512-CRYPT or ARGON2ID")
            hashed = bcrypt.hashpw(secret, bcrypt.gensalt(rounds=BCRYPT_COST)).decode("ascii")
            return "{BLF-CRYPT}$2y$" + hashed.removeprefix("$2b$")
        case Scheme.ARGON2ID:
            return "{ARGON2ID}" + argon2.PasswordHasher().hash(secret)
        case Scheme.SHA512_CRYPT:
            return "{SHA512-CRYPT}" + sha512_crypt(password)


def sha512_crypt(password: str, salt: str | None = None) -> str:
    """glibc's SHA-512 crypt (``$6$``) of ``password`` by ``openssl passwd -6``; a random salt by default."""
    if "\n" in password or "\r" in password:
        raise PasswordError("a password with a line break cannot be hashed with SHA512-CRYPT here")
    argv = ["openssl", "passwd", "-6", "-stdin"]
    if salt is not None:
        argv[3:3] = ["-salt", salt]
    try:
        res = subprocess.run(argv, input=password + "\n", capture_output=True, text=True, check=False, timeout=30)
    except FileNotFoundError:
        raise PasswordError("openssl not found (Debian package openssl)") from None
    hashed = res.stdout.strip()
    if res.returncode != 0 or not hashed.startswith("$6$"):
        raise PasswordError(f"openssl passwd -6 failed: {res.stderr.strip() or res.returncode}")
    return hashed
