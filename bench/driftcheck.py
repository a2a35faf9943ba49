#!/usr/bin/env python3
"""The agent's periodic row-drift check, timed in one process.

    python bench/driftcheck.py CONFIG.toml [REPEAT]      # prints one JSON document

Run by ``bench/run`` against a host that is in sync (warm parse cache). The agent's
``drift_timer`` check is ``engine.apply(..., full_scan=True)``, which for a host in sync is the
same work as ``engine.diff(cfg, None, full_scan=True)``: it hashes every row in SQL
(``observed._DIGEST_SQL``) instead of reading the trigger-kept per-domain digests from
``reconciler_digest``, which every other check (``diff``, ``apply``, a push) uses. Both are timed
here, alternating, after one warm-up diff, plus ``observed.domain_digests`` alone (the SQL part)
in both modes. Each plan must be empty (the host is in sync).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(samples), 4),
        "best": round(min(samples), 4),
        "worst": round(max(samples), 4),
        "samples": [round(s, 4) for s in samples],
    }


def main() -> int:
    config = Path(sys.argv[1])
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 3

    from reconciler import engine, observed
    from reconciler import logging as rlog
    from reconciler.db import connect
    from reconciler.models import load_config

    rlog.configure("warning", json=True)  # structlog to stderr; stdout is the JSON document
    cfg = load_config(config)
    t0 = time.perf_counter()
    warm = engine.diff(cfg, None)  # imports, parse cache and the server's buffer pool warm
    warmup = time.perf_counter() - t0
    if not warm.plan.empty:
        print(f"driftcheck: host not in sync ({len(warm.plan.changes)} changes)", file=sys.stderr)
        return 1
    full: list[float] = []
    digests: list[float] = []
    for _ in range(repeat):
        for samples, full_scan in ((full, True), (digests, False)):
            t0 = time.perf_counter()
            planned = engine.diff(cfg, None, full_scan=full_scan)
            samples.append(time.perf_counter() - t0)
            if not planned.plan.empty:
                print(f"driftcheck: unexpected changes (full_scan={full_scan})", file=sys.stderr)
                return 1
    sql_full: list[float] = []
    sql_digests: list[float] = []
    conn = connect(cfg.mysql)
    try:
        for _ in range(repeat):
            for samples, full_scan in ((sql_full, True), (sql_digests, False)):
                t0 = time.perf_counter()
                observed.domain_digests(conn, full_scan=full_scan)
                samples.append(time.perf_counter() - t0)
                conn.rollback()
    finally:
        conn.close()
    json.dump(
        {
            "warmup_diff_seconds": round(warmup, 4),
            "full_scan": _summary(full),
            "digests": _summary(digests),
            "sql_full_scan": _summary(sql_full),
            "sql_digests": _summary(sql_digests),
        },
        sys.stdout,
        indent=2,
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
