"""reconciler.adopt.gitstore: the repository an import writes in git's own formats, checked by git itself.

The same files are committed once through ``NewRepository`` and once with ``git add -A``: the trees
must be the same object, ``git fsck --strict --full`` and ``git verify-pack`` must find nothing,
``git status`` must be clean without hashing anything, and the result must clone and push. The pack
index's large-offset table (packs over 2 GiB) is checked by reading it back.
"""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.adopt.gitstore import NewRepository, _pack_index, _stored_zlib
from reconciler.errors import ReconcilerError

FILES = {
    "README.md": b"# imported\n",
    "domains/a.example.yaml": b"domain: a.example\n" * 20000,  # several stored blocks
    "domains/b.example.yaml": b"",
    "domains/c.example.yaml": b"",  # the same (empty) object twice
    "postfix/main.cf": b"myhostname = mx.example\n",
    "postfix/sql/mysql-users.cf": b"user = mail\npassword = ${secret:mysql_mail_password}\n",
    "postfix-extra": b"sorts before postfix/ in the index, after it in the tree\n",
    "postfix.d/x": b"x\n",
    "rootfs/etc/aliases": b"postmaster: root\n",
    "schemas/domain.schema.json": b"{}\n",
}


def _no_fork() -> int:
    raise BlockingIOError(11, "Resource temporarily unavailable")


def _git(repo: Path, *args: str) -> str:
    res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    assert res.returncode == 0, (args, res.stderr)
    return res.stdout.strip()


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 200_000])
def test_stored_zlib_is_a_zlib_stream(size: int) -> None:
    data = os.urandom(size)
    assert zlib.decompress(b"".join(bytes(p) for p in _stored_zlib(data))) == data


@pytest.mark.parametrize("how", ["write", "write_made", "write_made_no_fork"])
def test_new_repository_is_what_git_add_gives(tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same tree as ``git add -A``; fsck, verify-pack and status clean; clones and pushes.

    ``write_made`` writes half the files in a forked child, into a second pack; all of them here
    when no process can be forked.
    """
    if how == "write_made_no_fork":
        monkeypatch.setattr(os, "fork", _no_fork)
    made = how != "write"
    ours = tmp_path / "ours"
    ours.mkdir()
    repo = NewRepository(ours, "main")
    try:
        if made:
            repo.write_made([(rel, lambda data=data: data) for rel, data in FILES.items()])
        else:
            for rel, data in FILES.items():
                repo.write(rel, data)
        commit = repo.commit("Import of a test host")
    finally:
        repo.close()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    for rel, data in FILES.items():
        (theirs / rel).parent.mkdir(parents=True, exist_ok=True)
        (theirs / rel).write_bytes(data)
    _git(theirs, "init", "-q", "-b", "main")
    _git(theirs, "add", "-A")
    assert _git(ours, "rev-parse", "HEAD^{tree}") == _git(theirs, "write-tree")
    assert _git(ours, "rev-parse", "HEAD") == commit and _git(ours, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert _git(ours, "log", "--format=%s") == "Import of a test host"
    _git(ours, "fsck", "--strict", "--full", "--no-dangling")
    packs = list((ours / ".git" / "objects" / "pack").glob("pack-*.idx"))
    assert len(packs) == (2 if how == "write_made" else 1) and not list((ours / ".git" / "objects").glob("??/*"))  # none loose
    assert all(_git(ours, "verify-pack", str(pack)) == "" for pack in packs)
    assert not list((ours / ".git" / "objects" / "pack").glob("tmp_*"))
    ls = _git(ours, "ls-files", "-s").splitlines()
    assert [line.split("\t")[1] for line in ls] == sorted(FILES)  # byte order, as git keeps its index
    assert ls == _git(theirs, "ls-files", "-s").splitlines()
    assert _git(ours, "status", "--porcelain") == ""
    (ours / "domains" / "b.example.yaml").write_bytes(b"changed\n")
    assert _git(ours, "status", "--porcelain") == "M domains/b.example.yaml"
    _git(ours, "checkout", "--", "domains/b.example.yaml")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ours), str(clone)], check=True, capture_output=True)
    assert (clone / "domains" / "a.example.yaml").read_bytes() == FILES["domains/a.example.yaml"]
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    _git(ours, "push", "-q", str(bare), "main")
    assert _git(bare, "rev-parse", "main") == commit
    _git(ours, "gc", "-q")
    _git(ours, "fsck", "--strict", "--full", "--no-dangling")


class _Refused(Exception):
    """A maker's own error (picklable, as bulk.NotCovered is)."""


def _children() -> list[int]:
    return [int(p) for p in Path(f"/proc/self/task/{os.getpid()}/children").read_text().split()]


def _refuse(name: str) -> bytes:
    raise _Refused(name)


def _sleep() -> bytes:
    time.sleep(60)
    return b""


class _Unpicklable(Exception):
    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("not picklable")


def _unpicklable() -> bytes:
    raise _Unpicklable("held a lock")


def _killed() -> bytes:
    os.kill(os.getpid(), signal.SIGKILL)
    return b""


@pytest.mark.parametrize(
    ("makers", "raised", "text"),
    [
        # the child's file (every second one) fails: its own exception, raised here once the child is done
        ([lambda: b"a", lambda: _refuse("b.example"), lambda: b"c"], _Refused, "b.example"),
        # this process's file fails while the child is still busy: the child is stopped, not waited for
        ([lambda: _refuse("a.example"), _sleep], _Refused, "a.example"),
        ([lambda: b"a", _unpicklable], ReconcilerError, "second writer: _Unpicklable('held a lock')"),
        ([lambda: b"a", _killed], ReconcilerError, "second writer stopped without an answer"),
    ],
    ids=["child", "parent", "unpicklable", "killed"],
)
def test_write_made_raises_either_writers_error_and_leaves_no_child(
    tmp_path: Path, makers: list[Callable[[], bytes]], raised: type[Exception], text: str
) -> None:
    repo = NewRepository(tmp_path / "repo", "main")
    before = set(_children())  # a worker may hold a session's servers
    started = time.monotonic()
    try:
        with pytest.raises(raised, match=re.escape(text)):
            repo.write_made([(f"domains/{i}.yaml", make) for i, make in enumerate(makers)])
    finally:
        repo.close()
    assert time.monotonic() - started < 20 and set(_children()) <= before


def test_pack_index_keeps_large_offsets_apart() -> None:
    """Offsets of 2 GiB and more go to the 8-byte table, the 4-byte one pointing there (index version 2)."""
    ids = [bytes([b]) * 20 for b in (0x01, 0x80, 0xFE)]
    objects = {ids[0]: (12, 7), ids[1]: (0x80000000, 8), ids[2]: (0x1_2345_6789, 9)}
    data = _pack_index(objects, b"\x11" * 20)
    assert data[:8] == b"\xfftOc\x00\x00\x00\x02"
    fanout = struct.unpack(">256I", data[8 : 8 + 1024])
    assert (fanout[0], fanout[0x01], fanout[0x80], fanout[0xFE], fanout[0xFF]) == (0, 1, 2, 3, 3)
    at = 8 + 1024
    assert [data[at + 20 * i : at + 20 * i + 20] for i in range(3)] == ids
    at += 60
    assert struct.unpack(">3I", data[at : at + 12]) == (7, 8, 9)
    assert struct.unpack(">3I", data[at + 12 : at + 24]) == (12, 0x80000000, 0x80000001)
    assert struct.unpack(">2Q", data[at + 24 : at + 40]) == (0x80000000, 0x1_2345_6789)
    assert data[at + 40 : at + 60] == b"\x11" * 20 and len(data) == at + 80
