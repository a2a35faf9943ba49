"""A fleet end to end (SPEC 6): three Postfix instances, three agents, one bare repository, Galera.

One session-scoped three-node Galera cluster (``galera`` fixture) is shared by these tests; each
test builds a fresh fleet on it (``fleet`` fixture, tests/fleethost.py) and talks to the agents
over HTTP and SMTP as an operator would.
"""

from __future__ import annotations

import json
from typing import Any

from fleethost import Fleet, wait_for

MAILBOX = "fleet-new@example.org"


def start(fleet: Fleet, env: dict[str, dict[str, str]] | None = None) -> str:
    head = fleet.git("rev-parse", "HEAD")
    for name, host in fleet.hosts.items():
        host.start_agent((env or {}).get(name))
    fleet.wait_synced(head)
    return head


def test_push_goes_live_on_every_host_rows_once(fleet: Any) -> None:
    """A push adding a mailbox and changing mx2's myhostname: all synced, RCPT accepted everywhere, rows written once."""
    f: Fleet = fleet({"mx1": 0, "mx2": 0, "mx3": 0})
    start(f)
    before = {n: h.param("myhostname") for n, h in f.hosts.items()}
    f.add_mailbox(MAILBOX)
    f.set_main_cf("mx2", "myhostname", "mx2.fleet.test")
    head = f.push("add a mailbox, rename mx2")
    f.wait_synced(head)
    for name, host in f.hosts.items():
        assert host.rcpt(MAILBOX) == 250, name
        expected = "mx2.fleet.test" if name == "mx2" else before[name]
        assert host.param("myhostname") == expected, name
    written = [
        e["rows"]
        for h in f.hosts.values()
        for e in h.events("reconcile.done")
        if e.get("result") == "applied" and e.get("revision") == head[:12]
    ]
    assert sorted(written) == [0, 0, 1], written  # each host applied; one of them wrote the row
    fleet_doc = f.hosts["mx1"].get("/fleet")
    assert sorted(h["name"] for h in fleet_doc["hosts"]) == ["mx1", "mx2", "mx3"]
    assert {h["applied_revision"] for h in fleet_doc["hosts"]} == {head}
    res = f.hosts["mx3"].cli("status", "--fleet", "--format", "json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["head_revision"] == head
