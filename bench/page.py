#!/usr/bin/env python3
"""What the status page costs the agent: rendering ``GET /ui/live`` and ``GET /``, in-process.

    .venv/bin/python bench/page.py [--repeat N]

An open page asks ``GET /ui/live`` every second, so one rendering of it is the CPU an open tab
costs the agent. Measured with a full history (50 attempts) and pending plans of 0, 100 and
10,000 row changes (the page shows 2000 lines of it), plus the one-off parse of each plan's JSON
(``DiffCache``, once per plan the agent publishes). No services needed. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

from reconciler.api.page import DiffCache, PageInput, Renderer
from reconciler.status import AgentState, Attempt, AttemptResult, HeadCommit, Status


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def _plan(rows: int) -> str:
    changes = [
        {
            "kind": "row",
            "action": "create",
            "target": f"virtual_users/user{i}@example.org",
            "table": "virtual_users",
            "key": f"user{i}@example.org",
            "domain": f"d{i % 10}.example.org",
            "before": None,
            "after": {"email": f"user{i}@example.org", "password": "********"},
        }
        for i in range(rows)
    ]
    return json.dumps({"revision": "a" * 40, "changes": changes}, indent=2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    now = datetime.now(UTC)
    history = [
        Attempt(
            revision=f"{i:040x}",
            result=AttemptResult.APPLIED,
            started_at=now,
            finished_at=now,
            duration=0.2,
            subject=f"commit number {i}",
            author="Test <test@example.net>",
            trigger="ref",
            changes=3,
        )
        for i in range(50)
    ]
    status = Status(
        state=AgentState.OUT_OF_SYNC,
        head_revision=history[0].revision,
        head_commit=HeadCommit(subject="commit number 0", author="Test <test@example.net>", time=now),
        applied_revision=history[0].revision,
        last_attempt=history[0],
        history=history,
        branch="main",
    )
    renderer = Renderer()
    head = ("pending rows", "plan JSON", "parse once", "/ui/live", "GET /", "live bytes")
    print("  ".join(f"{h:>12}" for h in head))
    for rows in (0, 100, 10_000):
        pending = _plan(rows) if rows else None
        parse_ms = _median_ms(lambda p=pending: DiffCache().get(p), max(3, args.repeat // 50)) if pending else 0.0
        diff = DiffCache().get(pending) if pending else None
        data = PageInput(status, diff, None, alive=True, token_required=False)
        live_ms = _median_ms(lambda d=data: renderer.live(d), args.repeat)
        page_ms = _median_ms(lambda d=data: renderer.page(d), max(3, args.repeat // 4))
        size = len(renderer.live(data).encode())
        plan_kib = len(pending or "") // 1024
        kib = f"{plan_kib} KiB"
        cells = (str(rows), kib, f"{parse_ms:.1f} ms", f"{live_ms:.2f} ms", f"{page_ms:.2f} ms", str(size))
        print("  ".join(f"{c:>12}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
