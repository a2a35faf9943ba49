"""Defects a new user hits, against a real private Postfix and MariaDB: each test fails without its fix.

A first apply onto a config dir without main.cf, a dry run that must write nothing, a missing
secret that the host (not the revision) must fix, and state files truncated as by a power loss.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PostfixFactory
from mailhost import MailHost
from test_agent import RunningAgent, configure

from reconciler.sandbox import MariaDB


@pytest.fixture
def fresh_host(mariadb: MariaDB, postfix_instance: PostfixFactory, tmp_path: Path) -> Iterator[MailHost]:
    """A mail host whose config dir holds no main.cf nor master.cf (Debian's "No configuration"), Postfix stopped."""
    instance = postfix_instance(start=False)
    host = MailHost.create(tmp_path, mariadb, instance)
    assert host.cli("init-db").returncode == 0
    for name in ("main.cf", "master.cf"):
        (instance.config_dir / name).unlink()
    yield host


def test_first_apply_onto_a_config_dir_without_main_cf(fresh_host: MailHost) -> None:
    """`reconciler apply` onto a config dir without main.cf builds the secret-holding table and leaves Postfix stopped."""
    host = fresh_host
    res = host.cli("apply")
    assert res.returncode == 0, res.stdout + res.stderr
    config_dir = host.postfix.config_dir
    assert (config_dir / "main.cf").is_file() and (config_dir / "relay_password.db").is_file()
    assert not list(config_dir.glob(".*reconciler*"))
    assert not host.postfix.is_running()
    assert host.cli("diff").returncode == 0
    host.postfix.start()
    assert host.rcpt("john@example.org") == 250


def test_agent_first_apply_onto_a_config_dir_without_main_cf(fresh_host: MailHost) -> None:
    """The agent's first reconcile onto a config dir without main.cf gets synced, not failed at build."""
    host = fresh_host
    configure(host)
    agent = RunningAgent(host)
    try:
        status = agent.wait_state("synced", 30)
        assert status["applied_revision"] == host.git("rev-parse", "HEAD")
        assert (host.postfix.config_dir / "relay_password.db").is_file()
    finally:
        assert agent.stop() == 0
