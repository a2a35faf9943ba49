"""Shared fixtures: a private MariaDB for the session and a fresh private Postfix per test.

Both are real Debian services started by ``harness.mariadb`` and ``harness.postfix`` on loopback
ports: MariaDB in pytest's temp directory, Postfix instances under a short world-searchable /tmp/reconciler-pf-*
directory (see ``postfix_root``). A missing binary is a failure naming the package to install, never
a skip: CI installs them with deploy/install-deps.sh, and a suite that silently skips its service
tests proves nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from harness.common import SandboxError, find_tool
from harness.mariadb import MariaDB, start_mariadb
from harness.postfix import PostfixInstance, cool_down, create_postfix_instance

ROOT = Path(__file__).resolve().parent.parent

# Binary -> the Debian package that ships it.
REQUIRED_TOOLS: Mapping[str, str] = {
    "postfix": "postfix",
    "postconf": "postfix",
    "postmap": "postfix",
    "postalias": "postfix",
    "mariadbd": "mariadb-server",
    "mariadb-install-db": "mariadb-server",
    "mariadb": "mariadb-client",
    "openssl": "openssl",
    "git": "git",
}


@pytest.fixture(scope="session")
def postfix_tools_available(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Absolute paths of the Postfix, MariaDB and helper binaries; fails the test if any is missing."""
    found: dict[str, str] = {}
    missing: list[str] = []
    for tool, package in REQUIRED_TOOLS.items():
        try:
            found[tool] = find_tool(tool)
        except SandboxError:
            missing.append(f"{tool} (Debian package {package})")
    if missing:
        pytest.fail(
            "missing service binaries: " + ", ".join(missing) + "; run deploy/install-deps.sh",
            pytrace=False,
        )
    # Plain "postconf -m" fails without /etc/postfix/main.cf (absent on a "No configuration" host).
    empty = tmp_path_factory.mktemp("postconf-m")
    (empty / "main.cf").write_text("")
    cool_down(empty / "main.cf")
    map_types = subprocess.run(
        [found["postconf"], "-c", str(empty), "-m"], capture_output=True, text=True, check=False, timeout=60
    ).stdout.split()
    if "mysql" not in map_types:
        pytest.fail("Postfix has no mysql: table type; install Debian package postfix-mysql", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the Postfix tests need root: Postfix's master process runs as root", pytrace=False)
    return found


@pytest.fixture(scope="session")
def mariadb(postfix_tools_available: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    """A private MariaDB for the whole session, with the mailserver database and both users."""
    db = start_mariadb(tmp_path_factory.mktemp("mariadb"))
    try:
        yield db
    finally:
        db.stop()


PostfixFactory = Callable[..., PostfixInstance]


@pytest.fixture(scope="session")
def postfix_root(postfix_tools_available: dict[str, str]) -> Iterator[Path]:
    """A directory for the session's Postfix instances that the postfix user can enter.

    Not pytest's tmp_path: /tmp/pytest-of-root is 0700, and Postfix's master opens its lock file
    as the postfix user by absolute path; and short, because Postfix's socket paths under the queue
    directory must fit in 108 bytes. Removed at the end of the session.
    """
    root = Path(tempfile.mkdtemp(prefix="reconciler-pf-"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postfix_instance(postfix_root: Path, request: pytest.FixtureRequest) -> Iterator[PostfixFactory]:
    """Factory of fresh private Postfix instances, started unless ``start=False``; all stopped afterwards.

    Call it as ``postfix_instance()`` or ``postfix_instance(start=False, extra={"param": "value"})``.
    When the test failed, the instances' maillog tails are printed into its report.
    """
    created: list[PostfixInstance] = []

    def make(
        *, start: bool = True, smtp_port: int | None = None, extra: Mapping[str, str] | None = None
    ) -> PostfixInstance:
        label = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:24]
        base = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=postfix_root))
        instance = create_postfix_instance(base, smtp_port=smtp_port, extra=extra)
        created.append(instance)
        if start:
            instance.start()
        return instance

    try:
        yield make
    finally:
        errors: list[str] = []
        for instance in created:
            try:
                instance.stop()
            except SandboxError as exc:  # keep stopping the others
                errors.append(str(exc))
            # Shown by pytest for failing tests only (captured output of the teardown).
            print(f"--- {instance.maillog} (last lines)")
            print("\n".join(instance.maillog_text().splitlines()[-30:]))
        if errors:
            pytest.fail("could not stop Postfix: " + "; ".join(errors), pytrace=False)


@pytest.fixture
def mailhost(mariadb: MariaDB, postfix_instance: PostfixFactory, tmp_path: Path) -> Iterator[object]:
    """A private mail host running example-repo's setup, before its first apply (see tests/mailhost.py)."""
    from mailhost import MailHost

    instance = postfix_instance()
    host = MailHost.create(tmp_path, mariadb, instance)
    assert host.cli("init-db").returncode == 0
    yield host


@pytest.fixture(scope="session")
def galera(postfix_tools_available: dict[str, str]) -> Iterator[object]:
    """A private three-node MariaDB Galera cluster for the session (harness.galera, ~15 s to start)."""
    from harness.galera import remove, start_galera

    cluster = start_galera()
    try:
        yield cluster
    finally:
        remove(cluster)


@pytest.fixture
def fleet(galera: object, postfix_instance: PostfixFactory, tmp_path: Path) -> Iterator[Callable[..., object]]:
    """Factory of a fleet (tests/fleethost.py): ``fleet({"mx1": 0, "mx2": 1})``, agents not started."""
    from fleethost import make_fleet, reset_cluster_database

    made: list[Any] = []

    def make(waves: dict[str, int], *, host_timeout: int = 600) -> object:
        galera.wait_synced()  # type: ignore[attr-defined]
        reset_cluster_database(galera)  # type: ignore[arg-type]
        instances = [postfix_instance() for _ in waves]
        built = make_fleet(tmp_path, galera, instances, waves, host_timeout=host_timeout)  # type: ignore[arg-type]
        made.append(built)
        first = next(iter(built.hosts.values()))
        res = first.cli("init-db")
        assert res.returncode == 0, res.stderr
        return built

    try:
        yield make
    finally:
        for built in made:
            built.stop()
            for host in built.hosts.values():
                print(f"--- agent {host.name} (last lines)")
                print("".join(host.log_lines[-40:]))
