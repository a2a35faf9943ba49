#!/usr/bin/env python3
"""Push-to-live on every host of a three-host fleet, on a private three-node Galera cluster.

    .venv/bin/python bench/fleet.py [--pushes 10] [--waves 0,0,0] [--out bench/out/fleet.json]

Starts ``harness.galera.start_galera``, three private Postfix instances and one ``reconciler
run`` agent per instance, all following one bare repository (the fleet of tests/fleethost.py:
each host's MySQL lookups and its agent's first ``[mysql].host`` on its own Galera node). Then,
``--pushes`` times: commit one new mailbox, ``git push`` to the bare repository, and time from the
push returning until ``RCPT TO`` of that mailbox is accepted (250) on all three hosts. Prints one
JSON document (median and max, every sample, and per host) and writes it to ``--out``. With
``--waves 0,1,2`` the hosts roll out in three waves (the time then includes every wave's wait).
Everything it started is stopped and its directories removed. Goal: median under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fleethost import make_fleet, new_base, reset_cluster_database  # noqa: E402

from harness.galera import remove, start_galera  # noqa: E402
from harness.postfix import PostfixInstance, create_postfix_instance  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pushes", type=int, default=10)
    parser.add_argument("--waves", default="0,0,0", help="the three hosts' waves")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "fleet.json")
    args = parser.parse_args()
    waves = {f"mx{i + 1}": int(w) for i, w in enumerate(args.waves.split(","))}
    t0 = time.monotonic()
    cluster = start_galera()
    cluster_seconds = time.monotonic() - t0
    pf_root = Path(tempfile.mkdtemp(prefix="reconciler-pf-"))
    pf_root.chmod(0o711)
    base = new_base()
    instances: list[PostfixInstance] = []
    fleet = None
    try:
        for name in waves:
            instance = create_postfix_instance(pf_root / name)
            instance.start()
            instances.append(instance)
        reset_cluster_database(cluster)
        fleet = make_fleet(base, cluster, instances, waves)
        hosts = list(fleet.hosts.values())
        res = hosts[0].cli("init-db")
        assert res.returncode == 0, res.stderr
        head = fleet.git("rev-parse", "HEAD")
        for host in hosts:
            host.start_agent()
        fleet.wait_synced(head, timeout=120)
        samples: list[float] = []
        per_host: dict[str, list[float]] = {h.name: [] for h in hosts}
        for i in range(args.pushes):
            address = f"bench-{i}@example.net"
            fleet.add_mailbox(address)
            fleet.git("add", "-A")
            fleet.git("commit", "-q", "-m", f"bench push {i}")
            fleet.git("push", "-q", str(fleet.bare), "main")
            pushed = time.monotonic()
            pending = {h.name: h for h in hosts}
            deadline = pushed + 60
            while pending:
                for name, host in list(pending.items()):
                    if host.rcpt(address) == 250:
                        per_host[name].append(time.monotonic() - pushed)
                        del pending[name]
                if time.monotonic() > deadline:
                    raise SystemExit(f"push {i}: not live on {sorted(pending)} after 60 s")
                time.sleep(0.005)
            samples.append(time.monotonic() - pushed)
            time.sleep(0.5)  # let the agents settle (status, reports) before the next push
        result: dict[str, Any] = {
            "what": "push returned -> RCPT TO accepted on all three hosts",
            "waves": waves,
            "pushes": args.pushes,
            "median_s": round(statistics.median(samples), 3),
            "max_s": round(max(samples), 3),
            "samples_s": [round(s, 3) for s in samples],
            "per_host_median_s": {n: round(statistics.median(v), 3) for n, v in per_host.items()},
            "cluster_start_s": round(cluster_seconds, 1),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(result, indent=2))
    finally:
        if fleet is not None:
            fleet.stop()
        for instance in instances:
            instance.stop()
        remove(cluster)
        shutil.rmtree(pf_root, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
