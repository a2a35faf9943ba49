#!/usr/bin/env python3
"""Where a no-op ``reconciler diff`` spends its time, function by function, in one process.

    python bench/stages.py CONFIG.toml [diff|apply]     # prints one JSON document

Run by ``bench/run --profile`` against a host that is in sync. It wraps the pipeline's functions
(in the namespaces they are called through: ``engine.validate_snapshot``, ``desired.load_yaml``,
``observed.domain_digests``, ``DomainFile.model_validate``, ``ParseCache.put`` ...) with timers
that add up inclusive wall time and call counts, then runs the real ``engine.diff`` twice:

- ``warm``: the state dir as the previous command left it (parse cache populated);
- ``cold``: with the parse cache directory (``<state>/parsed``) moved away first, so every domain
  file is read, parsed, validated and digested again, and Postfix's checks run again.

No profiler is active (only ~1 us per wrapped call), so Python-heavy stages are not inflated the
way cProfile inflates them. A name that does not exist (the code moved on) is skipped and listed.
Also measured: a fresh interpreter importing what the CLI imports for a diff, and the YAML loader
alone. With ``apply`` it instead runs one real ``engine.apply`` of the branch head (warm cache),
instrumented the same way (bench/run uses it for the one-mailbox change and, with ``--profile``, for
one changed line of the big map).
"""

from __future__ import annotations

import functools
import gc
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (module, attribute[, method]) in display order; indentation = nesting in the call tree.
TARGETS: list[tuple[int, str, str, str | None]] = [
    (0, "engine", "open_revision", None),
    (0, "engine", "connect", None),
    (0, "engine", "recover", None),
    # make_plan creates the cache (loading its index) as an argument of validate_snapshot: outside it.
    (0, "parsecache", "ParseCache", "__init__"),
    (0, "engine", "validate_snapshot", None),
    (1, "validate", "build_desired", None),
    (2, "parsecache", "ParseCache", "get"),
    (2, "desired.hosts", "text_problems", None),
    (2, "desired.hosts", "secret_refs", None),
    (2, "desired.build", "_parse_all", None),
    # in-process only (small changes): spawned workers are not timed
    (3, "desired.build", "parse_domain_file", None),
    (4, "desired.domains", "load_yaml", None),
    (4, "models", "DomainFile", "model_validate"),
    (4, "desired.domains", "_domain_rules", None),
    (3, "desired.build", "rows_digest", None),
    (3, "desired.build", "write_rows", None),
    (2, "parsecache", "ParseCache", "remember"),
    (2, "desired.build", "cross_domain_problems", None),
    (2, "parsecache", "ParseCache", "save"),
    (1, "validate", "stage_key", None),
    (1, "parsecache", "ParseCache", "stage_result"),
    (1, "validate", "check_postfix_tree", None),
    (2, "validate.stage", "stage_files", None),
    (2, "validate.stage", "postconf", None),
    (2, "validate.stage", "discover_tables", None),
    (2, "validate.stage", "supported_table_types", None),
    (2, "validate.stage", "check_table", None),
    (2, "validate.stage", "ignored_parameter_problems", None),
    (2, "validate.lines", "LineMapper", "problems"),
    (0, "engine", "load_secrets", None),
    (0, "engine", "desired_for", None),
    (1, "desired.render", "lazy_domain_rows", None),
    (1, "desired.render", "render_desired", None),
    (0, "engine", "observe", None),
    (1, "observed", "read_live_file", None),
    (1, "observed", "domain_digests", None),
    (1, "observed", "read_domain_rows", None),
    (1, "observed", "stale_tables", None),
    (1, "observed", "postfix_running", None),
    (1, "parsecache", "ParseCache", "rows"),
    (0, "engine", "plan", None),
    (1, "plan.compute", "_file_changes", None),
    (1, "plan.compute", "_row_changes", None),
    (0, "apply.applier", "Applier", "apply"),
    (1, "apply.applier", "Applier", "_prepare"),
    (1, "apply.applier", "Applier", "_build"),
    (1, "apply.applier", "Applier", "_rows"),
    (2, "apply.rows", "RowWriter", "store_digests"),
    (1, "apply.applier", "Applier", "_swap"),
    (1, "apply.applier", "Applier", "_check"),
    (1, "apply.applier", "Applier", "_service"),
    (1, "apply.service", "check_health", None),
    (1, "apply.applier", "Applier", "_finish"),
]

stats: dict[str, list[float]] = {}


def _label(module: str, attr: str, method: str | None) -> str:
    return f"{module}.{attr}.{method}" if method else f"{module}.{attr}"


def _wrap(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            entry = stats.setdefault(label, [0.0, 0])
            entry[0] += time.perf_counter() - started
            entry[1] += 1

    return wrapper


def instrument() -> list[str]:
    import importlib

    missing: list[str] = []
    for _, module_name, attr, method in TARGETS:
        label = _label(module_name, attr, method)
        try:
            module = importlib.import_module(f"reconciler.{module_name}")
            target = getattr(module, attr)
            if method is None:
                setattr(module, attr, _wrap(label, target))
            elif method == "model_validate":
                orig = target.model_validate  # a bound classmethod
                target.model_validate = staticmethod(_wrap(label, orig))
            else:
                setattr(target, method, _wrap(label, getattr(target, method)))
        except (ImportError, AttributeError, TypeError):
            missing.append(label)
    return missing


def report(total: float) -> list[dict[str, Any]]:
    rows = []
    for depth, module_name, attr, method in TARGETS:
        label = _label(module_name, attr, method)
        if label in stats:
            seconds, calls = stats[label]
            rows.append({"depth": depth, "function": label, "seconds": round(seconds, 4), "calls": int(calls)})
    top = sum(r["seconds"] for r in rows if r["depth"] == 0)
    rows.append(
        {"depth": 0, "function": "(rest: locks, state dir, glue)", "seconds": round(total - top, 4), "calls": 0}
    )
    return rows


def main() -> int:
    config = Path(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else "diff"  # "diff" or "apply" (the branch head)
    result: dict[str, Any] = {}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import reconciler.cli, reconciler.engine, reconciler.render, reconciler.validate"],
        check=True,
    )
    result["process_start_and_imports_seconds"] = round(time.perf_counter() - started, 4)

    from reconciler import engine
    from reconciler import logging as rlog
    from reconciler.models import load_config

    rlog.configure("warning", json=True)  # structlog to stderr; stdout is the JSON document
    cfg = load_config(config)
    result["not_instrumented"] = instrument()
    parsed_dir = Path(cfg.state.dir) / "parsed"

    if mode == "apply":
        stats.clear()
        t0 = time.perf_counter()
        planned, applied = engine.apply(cfg, None)
        total = time.perf_counter() - t0
        result["apply"] = {
            "engine_apply_seconds": round(total, 4),
            "plan_changes": len(planned.plan.changes),
            "rows": applied.rows,
            "functions": report(total),
        }
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0

    # The YAML loader alone on every domain blob: the project's (CSafeLoader plus a Python mapping
    # constructor that refuses duplicate keys) against plain CSafeLoader.
    import yaml

    from reconciler.desired import yamlfile as d

    snap = engine.open_revision(cfg, None)
    blobs = [snap.read(p) for p in sorted(snap.entries) if p.startswith("domains/")]

    def project() -> None:
        for b in blobs:
            d.load_yaml("x", b)

    def plain() -> None:
        for b in blobs:
            yaml.load(b.decode("utf-8"), Loader=yaml.CSafeLoader)

    def project_nogc() -> None:
        gc.disable()
        try:
            project()
        finally:
            gc.enable()

    best = {"project_loader": 1e9, "plain_CSafeLoader": 1e9, "project_loader_gc_disabled": 1e9}
    for _ in range(3):  # alternating, best of 3: the first pass also warms caches
        for name, fn in (
            ("project_loader", project),
            ("plain_CSafeLoader", plain),
            ("project_loader_gc_disabled", project_nogc),
        ):
            gc.collect()
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    result["yaml_loader_seconds"] = {k: round(v, 4) for k, v in best.items()}

    for scenario in ("warm", "cold"):
        stats.clear()
        if scenario == "cold":
            shutil.rmtree(parsed_dir, ignore_errors=True)
        t0 = time.perf_counter()
        planned = engine.diff(cfg, None)
        total = time.perf_counter() - t0
        result[scenario] = {
            "engine_diff_seconds": round(total, 4),
            "plan_changes": len(planned.plan.changes),
            "functions": report(total),
        }
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
