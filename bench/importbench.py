#!/usr/bin/env python3
"""Benchmark of ``reconciler import`` beside ``mariadb-dump`` of the same three tables, same run.

    .venv/bin/python bench/importbench.py [--sizes 100000,1000000] [--repeat N] [--no-diff] [--keep]

Per size N: a private MariaDB and Postfix instance (as bench/run sets them up: example-repo's
postfix/ folder sandboxized, ``reconciler apply`` of it with no domains), then N generated mailboxes
in ceil(N/1000) domains and about N/10 alias rows loaded with the ``mariadb`` client (bench/run's
generator). Measured, each under bench/rusage.py (wall time fork to reap, the command's peak RSS):

- ``reconciler import --out DIR`` (a new DIR each repeat, the secrets it reuses kept: the earlier
  ones are removed at the end with the rest, not just before the next import: on a journal-less
  ext4 a thousand inodes freed a moment before are skipped one by one by every new file);
- ``mariadb-dump --single-transaction --quick`` of virtual_domains, virtual_users and
  virtual_aliases to a file: the raw cost of reading and writing out the same rows. Goal: import at
  most 2x of it.

Unless ``--no-diff``, ``reconciler diff`` against the imported repository (parse cache cold) must
then exit 0: the import is checked at scale, not only timed. Prints a table (best-of and median
ratios; from the best import's own ``import.written`` log line, the seconds it spent reading and
checking the rows and writing the repository) and writes ``bench/out/import.json``. Needs root
(Postfix's master runs as root).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_loader = importlib.machinery.SourceFileLoader("bench_run", str(ROOT / "bench" / "run"))
_spec = importlib.util.spec_from_loader("bench_run", _loader)
assert _spec is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_run"] = bench  # its dataclasses look their module up while being defined
_loader.exec_module(bench)

from harness.mariadb import start_mariadb  # noqa: E402

_STAGE = re.compile(r'"?(rows_s|write_s)"?[=:]\s*([0-9.]+)')
from harness.postfix import create_postfix_instance  # noqa: E402


def _settle(db: Any, limit: float = 60.0) -> float:
    """Wait until InnoDB has purged what the load left (its history list empty); the seconds waited.

    Right after a load of a million rows the server purges in the background for a while, and
    whatever runs first (the first import) would share the cores with it. (Dirty pages are not
    waited for: below its low-water mark the server leaves a few hundred for good.)
    """
    started = time.monotonic()
    conn = db.root_connect()
    conn.autocommit(True)  # no read view of its own, which would hold the purge back
    try:
        with conn.cursor() as cur:
            while time.monotonic() - started < limit:
                cur.execute(
                    "SELECT NAME, COUNT FROM information_schema.INNODB_METRICS "
                    "WHERE NAME = 'trx_rseg_history_len'"
                )
                counts = dict(cur.fetchall())
                if not any(counts.values()):
                    break
                time.sleep(0.5)
            else:
                bench.log(f"the server did not settle in {limit:.0f} s: {counts}")
    finally:
        conn.close()
    return time.monotonic() - started


def bench_size(size: int, root: Path, db: Any, args: argparse.Namespace) -> dict[str, Any]:
    base = root / f"n{size}"
    base.mkdir(mode=0o711)
    postfix = create_postfix_instance(base / "pf")
    try:
        host = bench.create_host(base, db, postfix)
        host.commit("postfix/ only")
        bench.expect(host.cli("init-db"), (0,), "init-db")
        bench.expect(host.cli("apply"), (0,), "apply of postfix/")
        bench.log(f"N={size}: generating and loading the rows")
        (base / "gen").mkdir()
        gen = bench.generate_domains(base / "gen", size, base / "load.sql", seed=size)
        load = bench.measure(db.client_argv("root"), stdin=gen.sql)
        bench.expect(load, (0,), "mariadb < load.sql")
        bench.log(f"N={size}: {gen.users} mailboxes, {gen.aliases} aliases loaded in {load.seconds:.1f} s")
        bench.log(f"N={size}: the server settled in {_settle(db):.1f} s")
        imports, dumps = [], []
        for n in range(args.repeat):
            out = base / f"imported-{n + 1}"
            run = host.cli("import", "--out", str(out))
            bench.expect(run, (0,), "reconciler import")
            imports.append(run)
            dump_file = base / "dump.sql"
            dump = bench.measure(
                [
                    "sh",
                    "-c",
                    'exec "$0" "$@" > "$DUMP"',
                    shutil.which("mariadb-dump") or "mariadb-dump",
                    f"--defaults-file={db.client_defaults_file('root')}",
                    "--single-transaction",
                    "--quick",
                    db.database,
                    "virtual_domains",
                    "virtual_users",
                    "virtual_aliases",
                ],
                env={**os.environ, "DUMP": str(dump_file)},
            )
            bench.expect(dump, (0,), "mariadb-dump")
            dumps.append(dump)
        best, raw = min(imports, key=lambda r: r.seconds), min(dumps, key=lambda r: r.seconds)
        stages = {k: float(v) for k, v in _STAGE.findall(best.stderr)}  # the import's own log line
        result: dict[str, Any] = {
            "size": size,
            "mailboxes": gen.users,
            "aliases": gen.aliases,
            "domains": len(gen.domains),
            "import_s": round(best.seconds, 2),
            "import_rss_mb": round(best.rss_mb),
            "dump_s": round(raw.seconds, 2),
            "dump_rss_mb": round(raw.rss_mb),
            "ratio": round(best.seconds / raw.seconds, 2),
            "median_ratio": round(
                statistics.median(r.seconds for r in imports) / statistics.median(r.seconds for r in dumps), 2
            ),
            # rows: reading and checking the rows (Postfix's checks beside it); write: the domain
            # files, the pack and the commit; the rest of the wall time is start-up and the end.
            "rows_s": stages.get("rows_s"),
            "write_s": stages.get("write_s"),
            "import_samples": [round(r.seconds, 2) for r in imports],
            "dump_samples": [round(r.seconds, 2) for r in dumps],
            "repo_mb": round(sum(p.stat().st_size for p in (out / "domains").iterdir()) / 1e6, 1),
        }
        if args.profile:
            out = base / "imported-profiled"
            prof = ROOT / "bench" / "out" / f"import-{size}.prof"
            prof.parent.mkdir(parents=True, exist_ok=True)
            bench.measure(
                [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "reconciler", "import", "--out", str(out)],
                env=host.env,
            )
            import pstats

            pstats.Stats(str(prof)).sort_stats("cumulative").print_stats(30)
        bench.log(f"N={size}: import {best.seconds:.2f} s, mariadb-dump {raw.seconds:.2f} s: {result['ratio']}x")
        if not args.no_diff:
            config = base / "config-imported.toml"
            config.write_text(host.config.read_text().replace(f'url = "{host.work}"', f'url = "{out}"'))
            diff = bench.measure(
                [sys.executable, "-m", "reconciler", "diff"], env={**os.environ, "RECONCILER_CONFIG": str(config)}
            )
            bench.expect(diff, (0,), "diff against the imported repository")
            result["diff_s"] = round(diff.seconds, 2)
            bench.log(f"N={size}: diff against the import exits 0 ({diff.seconds:.2f} s)")
        return result
    finally:
        postfix.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--no-diff", action="store_true", help="skip the diff against the imported repository")
    parser.add_argument("--profile", action="store_true", help="also run one import under cProfile, print the top")
    parser.add_argument("--keep", action="store_true", help="leave the files in /tmp")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/importbench.py needs root", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="reconciler-bench-import-"))
    root.chmod(0o711)
    db = start_mariadb(root / "mariadb")
    results = []
    try:
        for size in (int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()):
            results.append(bench_size(size, root, db, args))
    finally:
        db.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(
        f"\n{'mailboxes':>10} {'import s':>9} {'dump s':>7} {'ratio':>6} {'median':>7} {'rows s':>7} "
        f"{'write s':>8} {'RSS MB':>7} {'diff s':>7}"
    )
    for r in results:
        print(
            f"{r['mailboxes']:>10} {r['import_s']:>9.2f} {r['dump_s']:>7.2f} {r['ratio']:>6.2f} "
            f"{r['median_ratio']:>7.2f} {r['rows_s'] or float('nan'):>7.2f} {r['write_s'] or float('nan'):>8.2f} "
            f"{r['import_rss_mb']:>7} {r.get('diff_s', float('nan')):>7.2f}"
        )
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "import.json").write_text(json.dumps({"machine": bench.machine(), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
