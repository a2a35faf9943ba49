"""A new git repository filled directly in git's own formats: work tree, one pack, index, one commit.

Called by ``import_host`` (``reconciler.adopt``) to write the imported repository. ``git init``
makes the skeleton; then each file is written to the work tree (its index entry taken from the
file's own ``fstat``) and, beside it, appended to a pack as an object in stored zlib blocks (no
compression, as ``core.looseCompression=0`` gives for loose objects; the first ``git gc`` or push
compresses): the domain files by two processes, each into a pack of its own (``write_made``).
``commit`` adds the trees and the commit, finishes the pack and its index (version 2), and writes
the index (version 2) and the branch ref. The result is what ``git add -A && git
commit`` gives in its objects and index entries; ``git fsck --strict`` and ``git status`` find it
clean (tests/test_gitstore.py).

Why not git itself: at a million mailboxes the domain files are about 140 MB, and ``git
update-index`` hashes them with its collision-detecting SHA-1 and copies them through zlib, about
2 CPU-seconds, into a thousand loose objects; here the hash is OpenSSL's, the object is the file's
bytes behind a 5-byte header every 64 KiB, and the objects go to one or two files (measured in
bench/importbench.py).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import pickle
import signal
import socket
import struct
import subprocess
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from reconciler.errors import ReconcilerError

_BLOCK = 0xFFFF  # the largest stored deflate block
_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, no dictionary, "fastest" (0x7801 % 31 == 0)
_FILE_MODE, _TREE_MODE = 0o100644, 0o040000
_COMMIT, _TREE, _BLOB = 1, 2, 3  # pack object types
_KIND = {_COMMIT: b"commit", _TREE: b"tree", _BLOB: b"blob"}


@dataclass(frozen=True)
class _Entry:
    """One staged file (in-memory, while the repository is filled): its object and stat."""

    oid: bytes  # binary SHA-1
    stat: os.stat_result


class NewRepository:
    """A directory being made a git repository with one commit (in-memory handle, during an import).

    ``write`` writes a file and its object before it returns, in the caller's thread;
    ``write_made`` makes and writes many, half of them in a forked process into a second pack, so
    that the second core works too. Writer threads were slower than no threads at all (1.45-1.51 s
    against 1.22 s for the million-mailbox write, medians of alternated runs): the caller makes the
    texts holding the interpreter, and each of a writer's dozen calls per file waited for it.
    """

    def __init__(self, root: Path, branch: str) -> None:
        self.root = root
        self.branch = branch
        res = subprocess.run(
            ["git", "init", "-q", "-b", branch, str(root)],
            capture_output=True,
            text=True,
            check=False,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root), "GIT_CONFIG_NOSYSTEM": "1"},
        )
        if res.returncode != 0:
            raise ReconcilerError(f"git init {root}: {res.stderr.strip()}")
        self._pack = _Pack(root / ".git" / "objects" / "pack")
        self._entries: dict[bytes, _Entry] = {}
        self._dirs: set[Path] = set()

    def write(self, rel: str, data: bytes) -> None:
        """Write the work-tree file ``rel`` (its directories made as needed) and stage it."""
        path = self.root / rel
        if path.parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, [data])
            stat = os.fstat(fd)
        finally:
            os.close(fd)
        self._entries[rel.encode()] = _Entry(self._pack.add(_BLOB, data), stat)

    def write_made(self, files: Sequence[tuple[str, Callable[[], bytes]]]) -> None:
        """Write each of ``files`` (a path and what makes its bytes) as ``write`` does; half of them in a child.

        The child is forked once the caller holds what the texts are made from (read-only: the pages
        stay shared) and writes every second file, and its objects into a pack of its own; this
        process writes the others meanwhile. An error of either (a maker's included) is raised here,
        once the child is gone; the caller removes what was written.
        """
        pid = -1
        if len(files) > 1:
            read_fd, write_fd = os.pipe()
            try:
                pid = os.fork()
            except OSError:  # no second process to be had (a process limit, no memory): all here
                os.close(read_fd)
                os.close(write_fd)
        if pid < 0:
            for rel, make in files:
                self.write(rel, make())
            return
        if pid == 0:  # the child: never returns
            os.close(read_fd)
            self._write_in_child(files[1::2], write_fd)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as answer:
            try:
                for rel, make in files[0::2]:
                    self.write(rel, make())
            except BaseException:
                os.kill(pid, signal.SIGKILL)
                raise
            finally:
                got = answer.read()
                os.waitpid(pid, 0)
        if not got:  # killed by something else, before it answered
            raise ReconcilerError("the import's second writer stopped without an answer")
        outcome = pickle.loads(got)  # noqa: S301 (our own child, through our own pipe)
        if isinstance(outcome, BaseException):
            raise outcome
        self._entries.update(outcome)

    def _write_in_child(self, files: Sequence[tuple[str, Callable[[], bytes]]], answer_fd: int) -> NoReturn:
        """In ``write_made``'s child: write ``files`` and a finished pack of their objects, answer, exit.

        The answer is the entries written, or the error (pickled: a maker's own exception, such as
        ``bulk.NotCovered``, reaches the caller as itself). The child leaves through ``os._exit``: no
        cleanup of the parent's runs in it, no buffered output is written twice.
        """
        code = 0
        try:
            self._pack = _Pack(self._pack.directory, "tmp_pack_import_2")
            self._entries = {}
            for rel, make in files:
                self.write(rel, make())
            self._pack.finish()
            outcome: object = self._entries
        except BaseException as exc:  # everything goes back to the caller
            outcome, code = exc, 1
        try:
            try:
                payload = pickle.dumps(outcome)
            except Exception:  # an error that cannot be pickled: its text
                payload = pickle.dumps(ReconcilerError(f"the import's second writer: {outcome!r}"))
            with os.fdopen(answer_fd, "wb") as answer:
                answer.write(payload)
        finally:
            os._exit(code)

    def close(self) -> None:
        """Close the pack (after ``commit``, or an import that stops half-way)."""
        self._pack.close()

    def commit(self, message: str) -> str:
        """Write the trees, the commit, the pack, the index and the branch; the commit's id (hex)."""
        entries = self._entries
        tree = self._tree(entries, b"", sorted(entries))
        host = socket.gethostname()
        who = f"reconciler import <reconciler@{host}> {int(time.time())} +0000"
        body = f"tree {tree.hex()}\nauthor {who}\ncommitter {who}\n\n{message}\n"
        commit = self._pack.add(_COMMIT, body.encode()).hex()
        self._pack.finish()
        _write_index(self.root / ".git" / "index", entries)
        ref = self.root / ".git" / "refs" / "heads" / self.branch
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit + "\n")
        return commit

    def _tree(self, entries: dict[bytes, _Entry], prefix: bytes, paths: list[bytes]) -> bytes:
        """Add the tree of the sorted staged ``paths`` under ``prefix`` (and its subtrees); its id."""
        items: list[tuple[bytes, bytes]] = []  # (sort key: a subtree's name ends with "/", entry)
        i = 0
        while i < len(paths):
            name, sep, _ = paths[i][len(prefix) :].partition(b"/")
            if not sep:
                items.append((name, b"%o %s\0%s" % (_FILE_MODE, name, entries[paths[i]].oid)))
                i += 1
                continue
            below = prefix + name + b"/"
            j = i
            while j < len(paths) and paths[j].startswith(below):
                j += 1
            items.append((name + b"/", b"%o %s\0%s" % (_TREE_MODE, name, self._tree(entries, below, paths[i:j]))))
            i = j
        return self._pack.add(_TREE, b"".join(entry for _, entry in sorted(items)))


class _Pack:
    """A pack being written (in-memory handle): objects appended in order, then its header, trailer and index."""

    def __init__(self, directory: Path, name: str = "tmp_pack_import") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.tmp = directory / name
        self.fd: int | None = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o444)
        self.offset = 12  # after the header, written last (the object count is known then)
        self.objects: dict[bytes, tuple[int, int]] = {}  # id -> (offset, CRC-32 of the packed entry)

    def add(self, kind: int, data: bytes) -> bytes:
        """Append ``data`` as an object of ``kind`` (unless already there); its binary id."""
        digest = hashlib.sha1(b"%s %d\0" % (_KIND[kind], len(data)), usedforsecurity=False)
        digest.update(data)
        oid = digest.digest()
        if self.fd is None:
            raise ReconcilerError("the pack is already closed")
        if oid in self.objects:
            return oid  # the same content twice (two empty maps, say): one object
        pieces = [_entry_header(kind, len(data)), *_stored_zlib(data)]
        crc = 0
        for piece in pieces:
            crc = zlib.crc32(piece, crc)
        os.lseek(self.fd, self.offset, os.SEEK_SET)
        _write_all(self.fd, pieces)
        self.objects[oid] = (self.offset, crc)
        self.offset += sum(len(p) for p in pieces)
        return oid

    def finish(self) -> None:
        """Write the header and the trailing checksum, the pack index, and give both their final names."""
        if self.fd is None:
            raise ReconcilerError("the pack is already closed")
        os.pwrite(self.fd, b"PACK" + struct.pack(">II", 2, len(self.objects)), 0)
        digest = hashlib.sha1(usedforsecurity=False)
        with mmap.mmap(self.fd, self.offset, prot=mmap.PROT_READ) as view:
            digest.update(view)
        checksum = digest.digest()
        os.pwrite(self.fd, checksum, self.offset)
        self.close()
        name = f"pack-{checksum.hex()}"
        index = self.directory / f"tmp_idx_{name}"
        index.write_bytes(_pack_index(self.objects, checksum))
        index.chmod(0o444)
        index.rename(self.directory / f"{name}.idx")
        self.tmp.rename(self.directory / f"{name}.pack")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _entry_header(kind: int, size: int) -> bytes:
    """A pack entry's type and size: 3 type bits and the size's low 4 bits, then 7 bits a byte."""
    out = bytearray()
    byte = kind << 4 | size & 0x0F
    size >>= 4
    while size:
        out.append(byte | 0x80)
        byte = size & 0x7F
        size >>= 7
    out.append(byte)
    return bytes(out)


def _pack_index(objects: dict[bytes, tuple[int, int]], checksum: bytes) -> bytes:
    """A pack's index (version 2): fan-out table, sorted ids, CRC-32s, offsets (large ones apart)."""
    oids = sorted(objects)
    fanout = [0] * 256
    for oid in oids:
        fanout[oid[0]] += 1
    for i in range(1, 256):
        fanout[i] += fanout[i - 1]
    small: list[int] = []
    large: list[int] = []
    for oid in oids:
        offset = objects[oid][0]
        if offset < 0x80000000:
            small.append(offset)
        else:
            small.append(0x80000000 | len(large))
            large.append(offset)
    n = len(oids)
    parts = [b"\xfftOc", struct.pack(">I", 2), struct.pack(">256I", *fanout), *oids]
    parts += [struct.pack(f">{n}I", *(objects[o][1] for o in oids)), struct.pack(f">{n}I", *small)]
    parts += [struct.pack(f">{len(large)}Q", *large), checksum]
    data = b"".join(parts)
    return data + hashlib.sha1(data, usedforsecurity=False).digest()


def _write_index(path: Path, entries: dict[bytes, _Entry]) -> None:
    """``.git/index`` (version 2): every staged file with its stat, so that ``git status`` hashes nothing."""
    parts = [b"DIRC", struct.pack(">II", 2, len(entries))]
    for name in sorted(entries):
        e = entries[name]
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
        entry += struct.pack(">H", min(len(name), 0xFFF)) + name
        parts.append(entry + b"\0" * (8 - len(entry) % 8))  # 1 to 8 NULs: a multiple of 8
    data = b"".join(parts)
    path.write_bytes(data + hashlib.sha1(data, usedforsecurity=False).digest())


def _stored_zlib(data: bytes) -> list[bytes | memoryview]:
    """``data`` as a zlib stream of stored deflate blocks, in pieces for ``writev``."""
    view = memoryview(data)
    blocks = [view[start : start + _BLOCK] for start in range(0, len(data), _BLOCK)] or [view]
    pieces: list[bytes | memoryview] = [_ZLIB_HEADER]
    for n, block in enumerate(blocks):
        size = len(block)
        pieces += [struct.pack("<BHH", n == len(blocks) - 1, size, size ^ 0xFFFF), block]
    pieces.append(struct.pack(">I", zlib.adler32(data)))
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
