#!/usr/bin/env python3
"""Turn ``bench/out/results.json`` into docs/benchmarks.png and the results section of docs/benchmarks.md.

    .venv/bin/python bench/report.py [bench/out/results.json] [--doc docs/benchmarks.md] [--png docs/benchmarks.png]

Called by ``bench/run`` at the end of a complete run (unless ``--no-docs``). The PNG plots time
against the number of mailboxes, log-log: cold apply vs the raw load, no-op diff vs the raw dump,
the one-mailbox apply, the push-to-live median, and the periodic drift check (every row hashed vs
the trigger-kept digests). In the Markdown file only what lies between ``<!-- bench:begin -->``
and ``<!-- bench:end -->`` is replaced: the machine, the table, the targets with pass/fail and,
for a cold apply over its target, where its time goes. Everything around the markers is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"
MiB = 1024 * 1024

# Targets of issue [6].
APPLY_GOAL_S = 1.0
PUSH_GOAL_S = 0.5
DIFF_RATIO = 3.0
COLD_RATIO = 3.0
RSS_GOAL_MB = 1.5 * 1024  # at 1M mailboxes
RSS_SIZE = 1_000_000


def secs(v: float | None) -> str:
    if v is None:
        return "–"
    if v < 1:
        return f"{v * 1000:.0f} ms" if v >= 0.01 else f"{v * 1000:.1f} ms"
    return f"{v:.2f} s" if v < 100 else f"{v:.0f} s"


def size_name(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return f"{n:,}"


def by_measure(results: list[dict[str, Any]], measure: str) -> dict[int, dict[str, Any]]:
    return {r["size"]: r for r in results if r["measure"] == measure and not r.get("label")}


def ratio(r: dict[str, Any]) -> float | None:
    """reconciler / raw tool, from the unrounded seconds."""
    if r.get("reconciler_s") is None or not r.get("raw_s"):
        return None
    return float(r["reconciler_s"]) / float(r["raw_s"])


def median(r: dict[str, Any]) -> float:
    """The median of a measure's samples (the single value when it ran once)."""
    samples = sorted(r.get("samples") or [r["reconciler_s"]])
    return float(samples[len(samples) // 2])


# -------------------------------------------------------------------------------------------------
# Plot


SERIES = [
    # (measure, field, label, colour, line style)
    ("cold apply", "reconciler_s", "cold apply", "tab:red", "-"),
    ("cold apply", "raw_s", "raw load (mariadb < load.sql)", "tab:red", "--"),
    ("no-op diff", "reconciler_s", "no-op diff", "tab:blue", "-"),
    ("no-op diff", "raw_s", "raw dump (mariadb -e SELECT)", "tab:blue", "--"),
    ("one-mailbox apply", "reconciler_s", "one-mailbox apply (command)", "tab:green", "-"),
    ("push-to-live (agent)", "reconciler_s", "push-to-live, median (agent)", "tab:purple", "-"),
    ("drift check, full row scan", "reconciler_s", "drift check, every row hashed", "tab:orange", "-"),
    ("drift check, trigger digests", "reconciler_s", "drift check, trigger digests", "tab:orange", ":"),
]


def plot(doc: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    results = doc["results"]
    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    for measure, key, label, colour, style in SERIES:
        rows = by_measure(results, measure)
        points = sorted((n, r[key]) for n, r in rows.items() if r.get(key))
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, style, color=colour, marker="o", markersize=4, label=label)
    ax.axhline(APPLY_GOAL_S, color="grey", linestyle=":", linewidth=1.2, label="goal: one-mailbox apply < 1 s")
    ax.axhline(PUSH_GOAL_S, color="grey", linestyle="-.", linewidth=1, label="goal: push-to-live median < 500 ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    sizes = sorted({r["size"] for r in results if not r.get("label")})
    if sizes:
        ax.set_xticks(sizes)
        ax.set_xticklabels([size_name(n) for n in sizes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("mailboxes (plus 10 % alias rows)")
    ax.set_ylabel("wall time, seconds")
    m = doc["machine"]
    ax.set_title(f"postfix-reconciler vs the raw tools ({m['nproc']} CPUs, {m['ram_gib']} GiB RAM)", fontsize=11)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


# -------------------------------------------------------------------------------------------------
# Markdown


def machine_text(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    mariadb = str(m["mariadb"]).split(" for ")[0].replace("-MariaDB", "")
    return (
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, {m['os']}, kernel {m['kernel']}, "
        f"`/tmp` on {m['tmp_fs']}. Software: Postfix {m['postfix']}, MariaDB {mariadb} (sandbox: 64 MB "
        f"buffer pool), Python {m['python']}."
    )


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| size | measure | reconciler | raw tool | ratio | peak RSS | notes |",
        "| ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        size = r.get("label") or size_name(r["size"])
        x = ratio(r)
        shown = f"{x:.1f}x" if x is not None else "–"
        rss = f"{r['rss_mb']:.0f} MB" if r.get("rss_mb") else "–"
        notes = "; ".join(x for x in (r.get("raw_tool", ""), r.get("notes", "")) if x).replace("|", "\\|")
        lines.append(
            f"| {size} | {r['measure']} | {secs(r['reconciler_s'])} | {secs(r.get('raw_s'))} | {shown} | {rss} "
            f"| {notes} |"
        )
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "**pass**" if ok else "**FAIL**"


def targets(doc: dict[str, Any]) -> tuple[str, list[str]]:
    """The targets table, and the names of the targets missed."""
    results = doc["results"]
    rows: list[tuple[str, bool, str]] = []
    missed: list[str] = []

    def add(name: str, found: dict[int, dict[str, Any]], ok_of: Any, show: Any) -> None:
        if not found:
            return
        oks = {n: ok_of(r) for n, r in sorted(found.items())}
        detail = ", ".join(f"{size_name(n)} {show(r)}{'' if oks[n] else ' ✗'}" for n, r in sorted(found.items()))
        rows.append((name, all(oks.values()), detail))
        if not all(oks.values()):
            missed.append(name)

    add(
        "one-mailbox `apply` < 1 s at every size (median)",
        by_measure(results, "one-mailbox apply"),
        lambda r: median(r) < APPLY_GOAL_S,
        lambda r: secs(median(r)),
    )
    add(
        "push-to-live median < 500 ms at every size",
        by_measure(results, "push-to-live (agent)"),
        lambda r: r["reconciler_s"] < PUSH_GOAL_S,
        lambda r: f"{r['reconciler_s'] * 1000:.0f} ms",
    )
    add(
        "no-op `diff` ≤ 3x the raw dump",
        by_measure(results, "no-op diff"),
        lambda r: (ratio(r) or float("inf")) <= DIFF_RATIO,
        lambda r: f"{ratio(r) or 0.0:.1f}x",
    )
    add(
        "cold `apply` ≤ 3x the raw load",
        by_measure(results, "cold apply"),
        lambda r: (ratio(r) or float("inf")) <= COLD_RATIO,
        lambda r: f"{ratio(r) or 0.0:.1f}x",
    )
    at_size = [r for r in results if r["size"] == RSS_SIZE and not r.get("label") and r.get("rss_mb")]
    if at_size:

        def peak(r: dict[str, Any]) -> float:
            return max(float(r["rss_mb"]), float((r.get("detail") or {}).get("tree_rss_mb") or 0.0))

        worst = max(at_size, key=peak)
        single = max(at_size, key=lambda r: r["rss_mb"])
        ok = peak(worst) < RSS_GOAL_MB
        rows.append(
            (
                "peak RSS at 1M mailboxes < 1.5 GB (every measured command and the agent)",
                ok,
                f"largest single process {single['rss_mb']:.0f} MB ({single['measure']}); largest sampled sum of "
                f"a command's processes {peak(worst):.0f} MB ({worst['measure']})",
            )
        )
        if not ok:
            missed.append("peak RSS at 1M")
    lines = ["| target | result | measured |", "| --- | --- | --- |"]
    lines += [f"| {name} | {verdict(ok)} | {detail} |" for name, ok, detail in rows]
    return "\n".join(lines), missed


def breakdown(doc: dict[str, Any], measure: str) -> str:
    """A command split into plan (validate, parse, observe, plan), applier, and the process around them."""
    rows = by_measure(doc["results"], measure)
    applier = measure == "cold apply"
    smallest = min(rows) if rows else 0
    fixed = (rows[smallest].get("detail") or {}).get("applier_s") if applier and rows else None
    head = f"| size | {measure} | plan: validate + parse + observe "
    if applier:
        head += "| applier: rows, 12 files, 6 tables, reload, probe "
        head += f"| ≈ row writes (applier − its {size_name(smallest)} figure) "
    head += "| rest: interpreter, imports, git, lock, recovery | raw tool | plan / raw "
    head += "| applier / raw |" if applier else "|"
    lines = [head, "| " + " | ".join(["---:"] * (head.count("|") - 1)) + " |"]
    for n, r in sorted(rows.items()):
        d = r.get("detail") or {}
        plan_s, applier_s, rest_s, raw = d.get("plan_s"), d.get("applier_s"), d.get("rest_s"), r.get("raw_s")
        cells = [size_name(n), secs(r["reconciler_s"]), secs(plan_s)]
        if applier:
            writes = applier_s - fixed if applier_s is not None and fixed is not None and n != smallest else None
            cells += [secs(applier_s), secs(writes)]
        cells += [secs(rest_s), secs(raw), f"{plan_s / raw:.1f}x" if plan_s and raw else "–"]
        if applier:
            cells.append(f"{applier_s / raw:.1f}x" if applier_s and raw else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def push_breakdown(doc: dict[str, Any]) -> str:
    rows = by_measure(doc["results"], "push-to-live (agent)")
    lines = [
        "| size | push-to-live median | max | the agent's reconcile, median (its log) | pushes |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, r in sorted(rows.items()):
        d = r.get("detail") or {}
        agent = sorted(d.get("agent_reconcile_s") or [])
        lines.append(
            f"| {size_name(n)} | {secs(r['reconciler_s'])} | {secs(d.get('max_s'))} "
            f"| {secs(agent[len(agent) // 2]) if agent else '–'} | {len(r.get('samples') or [])} |"
        )
    return "\n".join(lines)


def _short(function: str) -> str:
    if function == "apply.Applier.apply":
        return "Applier.apply"
    if function.startswith("(rest"):
        return "rest"
    for prefix in ("engine.", "apply.Applier.", "apply.", "validate.", "desired.", "parsecache.", "models."):
        if function.startswith(prefix):
            return function[len(prefix) :]
    return function


def stage_text(stages: dict[str, Any], floor: float = 0.01) -> str:
    """The in-process stages of one ``engine.apply`` (bench/stages.py): a tree of the ones over ``floor``."""
    funcs = stages["apply"]["functions"]

    def node(i: int) -> tuple[str, int]:
        """(text of funcs[i] with its children, index after its subtree)."""
        f = funcs[i]
        j = i + 1
        children = []
        while j < len(funcs) and funcs[j]["depth"] > f["depth"]:
            text, after = node(j)
            if funcs[j]["seconds"] >= floor:
                children.append(text)
            j = after
        own = f"{_short(f['function'])} {secs(f['seconds'])}"
        return own + (f" ({', '.join(children)})" if children else ""), j

    parts = []
    i = 0
    while i < len(funcs):
        text, after = node(i)
        if funcs[i]["seconds"] >= floor:
            parts.append(text)
        i = after
    return "; ".join(parts)


def apply_breakdown(doc: dict[str, Any]) -> str:
    """Per size: the one-mailbox apply command, push-to-live, and the in-process stages of engine.apply."""
    applies = by_measure(doc["results"], "one-mailbox apply")
    pushes = by_measure(doc["results"], "push-to-live (agent)")
    lines = [
        "| size | one-mailbox `apply` | push-to-live median | interpreter + imports | `engine.apply` in-process "
        "| in-process stages ≥ 10 ms |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for key, g in doc.get("generated", {}).items():
        stages = g.get("apply_stages") if key != "map" else None
        if not stages:
            continue
        n = int(key)
        a, p = applies.get(n), pushes.get(n)
        lines.append(
            f"| {size_name(n)} | {secs(median(a)) if a else '–'} | {secs(p['reconciler_s']) if p else '–'} "
            f"| {secs(stages['process_start_and_imports_seconds'])} | {secs(stages['apply']['engine_apply_seconds'])} "
            f"| {stage_text(stages)} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def map_breakdown(doc: dict[str, Any]) -> str:
    rows = [r for r in doc["results"] if r["measure"] == "map rebuild, one line changed"]
    stages = doc.get("generated", {}).get("map", {}).get("apply_stages")
    if not rows:
        return ""
    r = rows[0]
    d = r.get("detail") or {}
    text = (
        f"{r['label']}, one changed line: `apply` {secs(r['reconciler_s'])} against {secs(r['raw_s'])} for "
        f"`postmap` of the same file (plan {secs(d.get('plan_s'))}, applier {secs(d.get('applier_s'))}, "
        f"the rest {secs(d.get('rest_s'))})."
    )
    if stages:
        text += (
            f" In-process, one more changed line took {secs(stages['apply']['engine_apply_seconds'])}: "
            f"{stage_text(stages, 0.05)}."
        )
    return text


def commit_text(commit: str) -> str:
    """``abc1234 (what happened during the run)`` -> "Repository at commit `abc1234` (...)."."""
    head, _, rest = commit.partition(" ")
    return f"Repository at commit `{head}`" + (f" {rest}" if rest else "") + "."


def generated_text(doc: dict[str, Any]) -> str:
    parts = []
    for key, g in doc.get("generated", {}).items():
        if key == "map":
            parts.append(
                f"the map host (1k mailboxes): `postfix/canonical` plus {g['map_lines']:,} lines "
                f"({g['map_bytes'] / 1e6:.1f} MB)"
            )
        else:
            parts.append(
                f"{size_name(int(key))}: {g['domains']} domain files, {g['repo_bytes'] / 1e6:.1f} MB of YAML, "
                f"{g['mailboxes']:,} mailboxes, {g['aliases']:,} alias rows"
            )
    return "; ".join(parts)


def section(doc: dict[str, Any], png: Path, md: Path) -> str:
    argv = " ".join(doc.get("argv") or [])
    command = ".venv/bin/python bench/run" + (f" {argv}" if argv else "")
    target_table, missed = targets(doc)
    try:
        rel = png.resolve().relative_to(md.resolve().parent)
    except ValueError:
        rel = png
    out = [
        BEGIN,
        "<!-- written by bench/report.py from bench/out/results.json; edits between the markers are lost -->",
        "",
        "## Results",
        "",
        machine_text(doc),
        commit_text(str(doc.get("commit", "unknown"))),
        "",
        f"`{command}`, finished {doc.get('finished', '?')}, {doc['total_seconds']:.0f} s in total. "
        f"Generated: {generated_text(doc)}.",
        "",
        "Time is wall-clock, one run per measure unless the notes say otherwise. Peak RSS is the largest "
        "single process of the command's tree (`wait4()` in `bench/rusage.py`); for push-to-live the "
        "agent's over the whole session. Where the sampled sum of a command's processes (parse workers "
        "beside the main process) is notably larger, the notes say so.",
        "",
        table(doc["results"]),
        "",
        f"![time against mailboxes, log-log]({rel})",
        "",
        "### Targets",
        "",
        target_table,
        "",
    ]
    if missed:
        out += [
            "### Where the time goes, for the targets missed",
            "",
            "From each command's own figures: `plan.done` seconds (its log) and the applier's seconds (its "
            "summary line); the rest is the process around them. For push-to-live, the agent's own "
            "`reconcile.done` seconds.",
            "",
        ]
    for name, measure in (
        ("cold `apply` ≤ 3x the raw load", "cold apply"),
        ("no-op `diff` ≤ 3x the raw dump", "no-op diff"),
        ("one-mailbox `apply` < 1 s at every size (median)", "one-mailbox apply"),
    ):
        if name in missed:
            out += [breakdown(doc, measure), ""]
    if "push-to-live median < 500 ms at every size" in missed:
        out += [push_breakdown(doc), ""]
    one = apply_breakdown(doc)
    if one:
        out += [
            "### One-mailbox change: where the time goes",
            "",
            "One more added mailbox applied by `bench/stages.py` in one process, timers around the "
            "pipeline's functions (inclusive). The agent runs the same `engine.apply` for a push, without "
            "the interpreter start; push-to-live adds the inotify trigger and Postfix's next lookup.",
            "",
            one,
            "",
        ]
    m = map_breakdown(doc)
    if m:
        out += ["### Map rebuild: where the time goes", "", m, ""]
    out.append(END)
    return "\n".join(out)


def rewrite(md: Path, text: str) -> None:
    old = md.read_text(encoding="utf-8") if md.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        new = head + text + tail
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    md.write_text(new, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", default=str(ROOT / "bench" / "out" / "results.json"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--png", default=str(ROOT / "docs" / "benchmarks.png"))
    args = parser.parse_args()
    doc = json.loads(Path(args.results).read_text(encoding="utf-8"))
    png, md = Path(args.png), Path(args.doc)
    try:
        import matplotlib  # noqa: F401 - only checking that the bench extra is installed
    except ImportError:
        print("bench/report.py needs matplotlib: .venv/bin/pip install -e '.[bench]'", file=sys.stderr)
        return 2
    plot(doc, png)
    rewrite(md, section(doc, png, md))
    _, missed = targets(doc)
    print(f"written: {png}, {md}" + (f"; targets missed: {', '.join(missed)}" if missed else "; all targets met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
