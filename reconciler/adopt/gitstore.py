"""A new git repository filled directly in git's own formats: work tree, loose objects, index, one commit.

Called by ``import_host`` (``reconciler.adopt``) to write the imported repository. ``git init``
makes the skeleton; then each file is written to the work tree and, in the same step, as a loose
object (``blob LEN\\0DATA``, SHA-1 named, zlib-wrapped in stored blocks: no compression, as
``core.looseCompression=0`` gives; the first ``git gc`` or push packs them), with its index entry
taken from the file's own ``fstat``. ``commit`` writes the trees, the commit, the index (version 2)
and the branch ref. The result is what ``git add -A && git commit`` gives, byte for byte in its
objects and index entries; ``git fsck --strict`` and ``git status`` find it clean (tests/test_import.py).

Why not git itself: at a million mailboxes the domain files are about 140 MB, and ``git
update-index`` hashes them with its collision-detecting SHA-1 and copies them through zlib, about
2 CPU-seconds; here the hash is OpenSSL's and the object is the file's bytes behind a 5-byte
header every 64 KiB, written with one ``writev`` (measured in bench/importbench.py).
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import subprocess
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import ReconcilerError

_BLOCK = 0xFFFF  # the largest stored deflate block
_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, no dictionary, "fastest" (0x7801 % 31 == 0)
_FILE_MODE, _TREE_MODE = 0o100644, 0o040000
_PENDING = 8  # files handed to the writers and not yet written: bounds the memory they hold


@dataclass(frozen=True)
class _Entry:
    """One staged file (in-memory, while the repository is filled): its path, object and stat."""

    path: bytes
    oid: bytes  # binary SHA-1
    stat: os.stat_result


class NewRepository:
    """A directory being made a git repository with one commit (in-memory handle, during an import).

    Files are written by two threads beside the caller (opening, writing and hashing release the
    interpreter; the caller meanwhile makes the next file's text), at most ``_PENDING`` at a time.
    """

    def __init__(self, root: Path, branch: str) -> None:
        self.root = root
        self.branch = branch
        self._objects = root / ".git" / "objects"
        self._entries: dict[bytes, _Entry] = {}
        self._stored: set[bytes] = set()
        self._dirs: set[Path] = set()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(_PENDING)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="import-write")
        self._pending: list[Future[None]] = []
        res = subprocess.run(
            ["git", "init", "-q", "-b", branch, str(root)],
            capture_output=True,
            text=True,
            check=False,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root), "GIT_CONFIG_NOSYSTEM": "1"},
        )
        if res.returncode != 0:
            raise ReconcilerError(f"git init {root}: {res.stderr.strip()}")

    def write(self, rel: str, data: bytes) -> None:
        """Write the work-tree file ``rel`` (its directories made as needed) and stage it; soon, in a thread."""
        self._slots.acquire()
        pending = []
        for f in self._pending:
            if f.done():
                f.result()  # a writer's error, raised here
            else:
                pending.append(f)
        self._pending = pending
        self._pending.append(self._pool.submit(self._write, rel, data))

    def _write(self, rel: str, data: bytes) -> None:
        try:
            path = self.root / rel
            self._directory(path.parent, parents=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _write_all(fd, [data])
                st = os.fstat(fd)
            finally:
                os.close(fd)
            oid = self._object(b"blob", data)
            self._entries[rel.encode()] = _Entry(rel.encode(), oid, st)
        finally:
            self._slots.release()

    def wait(self) -> None:
        """Wait until every file handed to ``write`` is written (raising a writer's error)."""
        for f in self._pending:
            f.result()
        self._pending = []

    def close(self) -> None:
        """Stop the writers once they are done (after ``commit``, or an import that stops half-way)."""
        self._pool.shutdown(wait=True)

    def commit(self, message: str) -> str:
        """Write the trees, the commit, the index and the branch; the commit's id (hex)."""
        self.wait()
        tree = self._tree(b"", sorted(self._entries))
        host = socket.gethostname()
        stamp = f"{int(time.time())} +0000"
        who = f"reconciler import <reconciler@{host}> {stamp}"
        body = f"tree {tree.hex()}\nauthor {who}\ncommitter {who}\n\n{message}\n"
        commit = self._object(b"commit", body.encode()).hex()
        self._write_index()
        ref = self.root / ".git" / "refs" / "heads" / self.branch
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit + "\n")
        return commit

    def _object(self, kind: bytes, data: bytes) -> bytes:
        """Store ``data`` as a loose object of ``kind``; its binary id."""
        header = b"%s %d\0" % (kind, len(data))
        digest = hashlib.sha1(header, usedforsecurity=False)
        digest.update(data)
        oid = digest.digest()
        with self._lock:
            if oid in self._stored:
                return oid  # the same content twice (two empty domains, say): one object
            self._stored.add(oid)
        name = oid.hex()
        directory = self._objects / name[:2]
        path = directory / name[2:]
        self._directory(directory, parents=False)
        tmp = directory / f"tmp_obj_{name[2:]}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o444)
        try:
            _write_all(fd, _stored_zlib(header, data))
        finally:
            os.close(fd)
        tmp.rename(path)
        return oid

    def _directory(self, path: Path, *, parents: bool) -> None:
        """Make ``path`` once (each directory is made by the first writer that needs it)."""
        if path not in self._dirs:
            with self._lock:
                if path not in self._dirs:
                    path.mkdir(parents=parents, exist_ok=True)
                    self._dirs.add(path)

    def _tree(self, prefix: bytes, paths: list[bytes]) -> bytes:
        """Write the tree of the sorted staged ``paths`` under ``prefix`` (and its subtrees); its id."""
        items: list[tuple[bytes, bytes]] = []  # (sort key, entry)
        i = 0
        while i < len(paths):
            name, sep, _ = paths[i][len(prefix) :].partition(b"/")
            if not sep:
                items.append((name, b"%o %s\0%s" % (_FILE_MODE, name, self._entries[paths[i]].oid)))
                i += 1
                continue
            below = prefix + name + b"/"
            j = i
            while j < len(paths) and paths[j].startswith(below):
                j += 1
            items.append((name + b"/", b"%o %s\0%s" % (_TREE_MODE, name, self._tree(below, paths[i:j]))))
            i = j
        return self._object(b"tree", b"".join(entry for _, entry in sorted(items)))

    def _write_index(self) -> None:
        """``.git/index`` (version 2): every staged file with its stat, so that ``git status`` hashes nothing."""
        parts = [b"DIRC", struct.pack(">II", 2, len(self._entries))]
        for path in sorted(self._entries):
            e = self._entries[path]
            st = e.stat
            fields = (
                st.st_ctime_ns // 10**9,
                st.st_ctime_ns % 10**9,
                st.st_mtime_ns // 10**9,
                st.st_mtime_ns % 10**9,
                st.st_dev,
                st.st_ino,
                _FILE_MODE,
                st.st_uid,
                st.st_gid,
                st.st_size,
            )
            entry = struct.pack(">10I", *(f & 0xFFFFFFFF for f in fields)) + e.oid
            entry += struct.pack(">H", min(len(path), 0xFFF)) + path
            parts.append(entry + b"\0" * (8 - len(entry) % 8))  # 1 to 8 NULs: a multiple of 8
        data = b"".join(parts)
        index = self.root / ".git" / "index"
        index.write_bytes(data + hashlib.sha1(data, usedforsecurity=False).digest())


def _stored_zlib(header: bytes, data: bytes) -> list[bytes | memoryview]:
    """``header + data`` as a zlib stream of stored deflate blocks, in pieces for ``writev``."""
    view = memoryview(data)
    first = len(data) if len(data) <= _BLOCK - len(header) else _BLOCK - len(header)
    blocks: list[bytes | memoryview] = [header + data[:first]]
    blocks += [view[start : start + _BLOCK] for start in range(first, len(data), _BLOCK)]
    pieces: list[bytes | memoryview] = [_ZLIB_HEADER]
    for n, block in enumerate(blocks):
        size = len(block)
        pieces += [struct.pack("<BHH", n == len(blocks) - 1, size, size ^ 0xFFFF), block]
    pieces.append(struct.pack(">I", zlib.adler32(data, zlib.adler32(header))))
    return pieces


def _write_all(fd: int, pieces: list[bytes | memoryview] | list[bytes]) -> None:
    """Write every piece to ``fd`` (``writev`` in batches; a short write continues where it stopped)."""
    queue = [memoryview(p) for p in pieces if len(p)]
    while queue:
        batch = queue[:512]  # below IOV_MAX
        done = os.writev(fd, batch)
        while done:
            if done >= len(queue[0]):
                done -= len(queue.pop(0))
            else:
                queue[0] = queue[0][done:]
                done = 0
