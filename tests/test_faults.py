"""The fault campaign's quick cases (bench/faults runs them all, at scale): real services, real faults.

An apply is held at a named step (``RECONCILER_TEST_PAUSE_AT``, released through a marker file)
while the test kills MariaDB or the Postfix master, fills a disk or starts a second apply. After
each fault: a clear error naming the step, the old state intact, and the next apply fine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PostfixFactory
from mailhost import MailHost

from harness.mariadb import MariaDB


class Paused:
    """An ``apply`` subprocess held at ``step`` until ``release``."""

    def __init__(self, host: MailHost, step: str, *args: str) -> None:
        self.marker = host.base / f"pause-{step}"
        self.marker.unlink(missing_ok=True)
        env = {"RECONCILER_TEST_PAUSE_AT": step, "RECONCILER_TEST_PAUSE_FILE": str(self.marker)}
        self.proc = host.popen("apply", *args, env=env)
        deadline = time.monotonic() + 60
        while not (self.marker.exists() and self.marker.read_text().startswith("paused")):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out, err = self.proc.communicate()
                raise AssertionError(f"apply never reached {step} (exit {self.proc.returncode}):\n{out}\n{err}")
            time.sleep(0.02)

    def release(self) -> tuple[int, str, str]:
        self.marker.write_text("go\n")
        out, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, out, err


def _change(host: MailHost, tag: str) -> str:
    """A revision that changes a file, a built table and rows."""
    host.add_mailbox(f"{tag}@example.net")
    host.edit("postfix/main.cf", lambda t: t.replace("delay_warning_time = 6h", "delay_warning_time = 2h"))
    host.edit("postfix/canonical", lambda t: t + f"{tag} {tag}@example.net\n")
    return host.commit(f"change {tag}")


def test_two_applies_at_once_one_waits(mailhost: MailHost) -> None:
    """While one apply holds the host lock, a second says who holds it and waits (or exits 2 when told not to)."""
    host = mailhost
    assert host.cli("apply").returncode == 0
    _change(host, "twice")
    first = Paused(host, "rows")
    impatient = host.cli("apply", env={"RECONCILER_LOCK_TIMEOUT": "1"})
    assert impatient.returncode == 2, impatient.stderr
    assert "another reconcile holds the host lock" in impatient.stderr
    assert f"pid {first.proc.pid}" in impatient.stderr
    second = host.popen("apply")
    time.sleep(1.0)
    assert second.poll() is None  # waiting, not writing
    code, _out, err = first.release()
    assert code == 0, err
    out2, err2 = second.communicate(timeout=120)
    assert second.returncode == 0, err2
    assert "lock.waiting" in err2 and "nothing to do" in out2
    assert host.rcpt("twice@example.net") == 250


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a killed child of this process stays a zombie until reaped: not alive)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_mariadb_killed_between_row_writes_and_commit(mailhost: MailHost) -> None:
    """MariaDB killed after the row writes, restarted: the commit fails, files and tables are restored, rows unchanged."""
    host = mailhost
    assert host.cli("apply").returncode == 0
    before = host.fingerprint()
    _change(host, "dbkill")
    paused = Paused(host, "rows")
    pid = int(host.db.pid_file.read_text().strip())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    host.db.start()
    code, _out, err = paused.release()
    assert code == 2, err  # temporary: nobody's fault, the revision is not marked failed
    assert "apply failed at step commit" in err and "rolled back" in err and "temporary" in err, err
    assert host.fingerprint() == before
    assert not list(host.postfix.config_dir.glob(".*reconciler*"))
    assert host.postfix.is_running()
    res = host.cli("apply")
    assert res.returncode == 0, res.stderr
    assert host.rcpt("dbkill@example.net") == 250


def test_postfix_master_killed_during_an_apply(mailhost: MailHost) -> None:
    """The master killed before the reload: step service named, old state back, Postfix running, next apply fine."""
    host = mailhost
    assert host.cli("apply").returncode == 0
    before = host.fingerprint()
    _change(host, "masterkill")
    paused = Paused(host, "service")
    pid = int((host.postfix.queue_dir / "pid" / "master.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)
    code, _out, err = paused.release()
    assert code == 2, err
    assert "apply failed at step service" in err and "master is not running" in err, err
    assert host.fingerprint() == before
    assert host.postfix.is_running()  # the rollback started it again, on the old configuration
    res = host.cli("apply")
    assert res.returncode == 0, res.stderr
    assert host.rcpt("masterkill@example.net") == 250


def _mount_tmpfs(path: Path, size: str) -> None:
    """A small tmpfs over ``path``, holding a copy of what was there."""
    keep = path.with_name(path.name + ".orig")
    shutil.copytree(path, keep, symlinks=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    shutil.copytree(keep, path, symlinks=True, dirs_exist_ok=True)
    for src in [keep, *keep.rglob("*")]:  # modes and owners as they were (tables' groups, 0700 dirs)
        dst = path / src.relative_to(keep)
        st = src.lstat()
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
        if not dst.is_symlink():
            os.chmod(dst, st.st_mode & 0o7777)
    shutil.rmtree(keep)


def _fill(path: Path) -> Path:
    """Fill the filesystem of ``path`` to the last byte; returns the filler file."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                continue
    finally:
        os.close(fd)
    return filler


@pytest.fixture
def small_disks(mariadb: MariaDB, postfix_instance: PostfixFactory, tmp_path: Path) -> Iterator[MailHost]:
    """A mail host whose config dir and state dir are small tmpfs mounts (unmounted afterwards)."""
    instance = postfix_instance(start=False)
    mounts = [instance.config_dir]
    _mount_tmpfs(instance.config_dir, "4m")
    try:
        instance.start()
        host = MailHost.create(tmp_path, mariadb, instance)
        assert host.cli("init-db").returncode == 0
        host.state.mkdir(mode=0o700)
        _mount_tmpfs(host.state, "4m")
        mounts.append(host.state)
        yield host
    finally:
        instance.stop()
        for path in reversed(mounts):
            subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_config_dir_and_state_dir(small_disks: MailHost) -> None:
    """A full config dir, then a full state dir: exit 2 naming the step, old state intact, fine once space is free."""
    host = small_disks
    assert host.cli("apply").returncode == 0
    host.edit("postfix/canonical", lambda t: t + "".join(f"user{i} user{i}@example.net\n" for i in range(4000)))
    host.add_mailbox("full@example.net")
    host.commit("a map that needs space")
    # The config dir, full before the apply starts.
    filler = _fill(host.postfix.config_dir)
    before = host.fingerprint()
    res = host.cli("apply")
    _full_refused(host, res.returncode, res.stderr, "prepare", before, host.postfix.config_dir)
    filler.unlink()
    # The state dir, filled while the apply waits before its journal write (validation's cache
    # pruning could otherwise free the few bytes the journal needs).
    before = host.fingerprint()
    paused = Paused(host, "journal")
    filler = _fill(host.state)
    code, _out, err = paused.release()
    _full_refused(host, code, err, "journal", before, host.state)
    filler.unlink()
    res = host.cli("apply")
    assert res.returncode == 0, res.stderr
    assert host.rcpt("full@example.net") == 250
    assert host.cli("diff").returncode == 0


def _full_refused(
    host: MailHost, code: int, stderr: str, step: str, before: tuple[object, object], directory: Path
) -> None:
    assert code == 2, stderr
    assert f"apply failed at step {step}: No space left on device: {directory}/" in stderr, stderr
    assert "temporary" in stderr and "Traceback" not in stderr, stderr
    assert host.fingerprint() == before
    assert not list(host.postfix.config_dir.glob(".*reconciler*"))
    assert host.postfix.is_running() and host.rcpt("full@example.net") == 550
