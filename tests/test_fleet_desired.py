"""A fleet's pure parts (SPEC 6): host files, file replacements, main.cf overrides, the wave rule, config.

Pure parts (main.cf editing, the host tree, the wave rule) run on data; ``validate --repo`` runs
Postfix's own tools on every host's resulting tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from reconciler.cfparse import parse_main_cf, set_parameters
from reconciler.desired.build import build_desired
from reconciler.fleet import wave_check
from reconciler.models import MysqlConfig, load_config
from reconciler.source import open_snapshot
from reconciler.status import Fleet, FleetHost

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example-repo"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RECONCILER_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, env=env, check=False
    )


def fleet_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo)
    (repo / "hosts").mkdir()
    (repo / "hosts" / "mx1.yaml").write_text("host: mx1\nwave: 0\n")
    (repo / "hosts" / "mx2.yaml").write_text(
        "host: mx2\nwave: 1\nmain_cf:\n  myhostname: mx2.example.net\n  smtpd_banner: $myhostname ESMTP mx2\n"
    )
    (repo / "hosts" / "mx2" / "postfix").mkdir(parents=True)
    (repo / "hosts" / "mx2" / "postfix" / "sender_access").write_text("spam@example.com REJECT\n")
    return repo


def test_set_parameters_replaces_in_place_and_appends() -> None:
    """A set parameter keeps its place and loses its continuation lines; a new one is appended."""
    text = "# head\nmyhostname = a.example\nmynetworks = 127.0.0.0/8\n    [::1]/128\nbiff = no\n"
    out = set_parameters(text, {"mynetworks": "10.0.0.0/8", "relayhost": "[r.example]"}, comment="set by x")
    assert out == (
        "# head\nmyhostname = a.example\nmynetworks = 10.0.0.0/8\nbiff = no\n# set by x\nrelayhost = [r.example]\n"
    )
    assert parse_main_cf(out) == {
        "myhostname": "a.example",
        "mynetworks": "10.0.0.0/8",
        "biff": "no",
        "relayhost": "[r.example]",
    }


def test_host_tree_applies_only_to_its_host(tmp_path: Path) -> None:
    """mx2's files carry its main_cf values and its replacement; mx1 and the shared tree do not."""
    snapshot = open_snapshot(fleet_repo(tmp_path))
    mx2, problems = build_desired(snapshot, host="mx2")
    assert problems == []
    assert mx2.host is not None and mx2.host.wave == 1
    assert parse_main_cf(mx2.files["main.cf"].template.decode())["myhostname"] == "mx2.example.net"
    assert mx2.files["sender_access"].template == b"spam@example.com REJECT\n"
    mx1, _ = build_desired(snapshot, host="mx1")
    shared = (EXAMPLE / "postfix" / "main.cf").read_bytes()
    assert mx1.files["main.cf"].template == shared
    assert mx1.files["sender_access"].template == (EXAMPLE / "postfix" / "sender_access").read_bytes()
    assert mx2.shared_files["main.cf"].template == shared
    unknown, _ = build_desired(snapshot, host="mx9")
    assert unknown.host is None and unknown.files["main.cf"].template == shared


def test_host_replacements_in_subdirectories(tmp_path: Path) -> None:
    """A host replaces a file of a postfix/ subdirectory at the same path; a bad directory name is refused."""
    repo = fleet_repo(tmp_path)
    (repo / "postfix" / "maps").mkdir()
    (repo / "postfix" / "maps" / "helo_access").write_text("shared.example REJECT\n")
    (repo / "hosts" / "mx2" / "postfix" / "maps").mkdir()
    (repo / "hosts" / "mx2" / "postfix" / "maps" / "helo_access").write_text("mx2.example REJECT\n")
    mx2, problems = build_desired(open_snapshot(repo), host="mx2")
    assert problems == []
    assert mx2.files["maps/helo_access"].template == b"mx2.example REJECT\n"
    assert mx2.shared_files["maps/helo_access"].template == b"shared.example REJECT\n"
    (repo / "hosts" / "mx2" / "postfix" / "bad dir").mkdir()
    (repo / "hosts" / "mx2" / "postfix" / "bad dir" / "x").write_text("a b\n")
    _, problems = build_desired(open_snapshot(repo), host="mx2")
    assert [str(p) for p in problems] == [
        "hosts/mx2/postfix/bad dir/x: unexpected directory name 'bad dir': use letters, digits, '.', '_', '+' and '-'"
    ]


def test_bad_host_files_are_refused_with_file_and_line(tmp_path: Path) -> None:
    """Wrong name, unknown key, bad wave and replacements without a host file name their file and line."""
    repo = fleet_repo(tmp_path)
    (repo / "hosts" / "mx3.yaml").write_text("host: mx4\n")
    (repo / "hosts" / "mx5.yaml").write_text("host: mx5\nwave: -1\ncolour: red\n")
    (repo / "hosts" / "mx6" / "postfix").mkdir(parents=True)
    (repo / "hosts" / "mx6" / "postfix" / "canonical").write_text("a b\n")
    _, problems = build_desired(open_snapshot(repo))
    shown = sorted(str(p) for p in problems)
    assert "hosts/mx3.yaml:1: host 'mx4' must equal the file name 'mx3'" in shown
    assert any(s.startswith("hosts/mx5.yaml:2: wave:") for s in shown), shown
    assert "hosts/mx5.yaml:3: colour: unknown key 'colour'" in shown
    assert "hosts/mx6/postfix: no host file hosts/mx6.yaml for these files" in shown


def test_validate_checks_every_host_tree_with_postfix(tmp_path: Path) -> None:
    """A misspelt main_cf parameter of one host fails validate --repo, named at that host file's line."""
    repo = fleet_repo(tmp_path)
    res = run_cli("validate", "--repo", str(repo))
    assert res.returncode == 0, res.stdout + res.stderr
    (repo / "hosts" / "mx1.yaml").write_text("host: mx1\nmain_cf:\n  myhostnme: mx1.example.net\n")
    res = run_cli("validate", "--repo", str(repo))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "hosts/mx1.yaml:3: main_cf.myhostnme: unused parameter myhostnme" in res.stdout, res.stdout


def test_mysql_host_list_endpoints() -> None:
    """[mysql].host as a list keeps its order; entries without a port take [mysql].port."""
    cfg = MysqlConfig(host=["db1:3307", "db2", "[::1]:3308"], port=3306)
    assert cfg.endpoints() == [("db1", 3307), ("db2", 3306), ("::1", 3308)]
    assert MysqlConfig(host="127.0.0.1", port=13306).endpoints() == [("127.0.0.1", 13306)]


def _host(name: str, wave: int, applied: str, state: str = "synced", **kw: object) -> FleetHost:
    return FleetHost(
        name=name,
        wave=wave,
        applied_revision=applied,
        state=state,
        last_seen=datetime.now(UTC),
        **kw,  # type: ignore[arg-type]
    )


def test_wave_rule() -> None:
    """Lower waves must have the revision applied and synced; failed ones hold, stale and unlisted ones do not."""
    rev, old = "b" * 40, "a" * 40
    waves = {"mx1": 0, "mx2": 0, "mx3": 1, "mx4": 2}
    fleet = Fleet(hosts=[_host("mx1", 0, rev), _host("mx2", 0, old), _host("mx3", 1, old)])
    check = wave_check(fleet, "mx3", rev, waves)
    assert not check.ready and check.waiting_for == ("mx2",) and check.failed == ()
    assert "waiting for mx2" in check.reason
    assert wave_check(fleet, "mx2", rev, waves).ready  # same wave: nobody to wait for
    assert wave_check(fleet, "mx4", rev, waves).waiting_for == ("mx2", "mx3")
    failed = Fleet(hosts=[_host("mx1", 0, old, "failed", failed_revision=rev), _host("mx2", 0, rev)])
    check = wave_check(failed, "mx3", rev, waves)
    assert check.waiting_for == ("mx1",) and check.failed == ("mx1",) and "mx1 failed" in check.reason
    stale = Fleet(hosts=[_host("mx1", 0, old, "failed", failed_revision=rev, stale=True), _host("mx2", 0, rev)])
    check = wave_check(stale, "mx3", rev, waves)
    assert check.ready and check.expired == ("mx1",) and "no longer holding" in check.reason
    assert wave_check(fleet, "mx3", rev, {"mx3": 1}).ready  # hosts without a host file do not count
    assert wave_check(fleet, "mx9", rev, waves).ready  # a host without a host file takes no part


def test_fleet_configuration_keys(tmp_path: Path) -> None:
    """[host], [fleet] and a list-valued [mysql].host load; an unknown [fleet] key is an error naming it."""
    path = tmp_path / "config.toml"
    path.write_text(
        '[host]\nname = "mx2"\n[fleet]\nhost_timeout = 30\n[mysql]\nhost = ["db1:3307", "db2"]\nport = 3306\n'
    )
    cfg = load_config(path)
    assert cfg.host.resolved() == "mx2" and cfg.fleet.host_timeout == 30
    assert cfg.mysql.endpoints() == [("db1", 3307), ("db2", 3306)]
    path.write_text("[fleet]\nhost_timout = 30\n")
    with pytest.raises(ValidationError, match="host_timout"):
        load_config(path)
    path.write_text("[mysql]\nhost = []\n")
    with pytest.raises(ValidationError):
        load_config(path)
