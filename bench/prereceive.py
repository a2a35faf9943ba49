#!/usr/bin/env python3
"""The pre-receive hook's verdict time on example-repo, end to end through ``git push``.

    python bench/prereceive.py [REPEAT]      # prints one JSON document

Builds a bare repository holding example-repo with deploy/install-pre-receive.sh's hook, then
pushes REPEAT (default 10) new commits from a clone, each changing one mailbox line (accepted), and
as many with a typo in main.cf (refused). Times whole ``git push`` commands (the pusher's wait:
git's own work plus the hook: interpreter start, quarantine, schemas, Postfix's checks on a staged
copy, deletion guard against the previous head) and, for the same revisions, the hook alone
(``reconciler pre-receive`` fed the line git would write). Needs git and Postfix's tools; no
database, no running Postfix.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RECONCILER = str(Path(sys.executable).parent / "reconciler")
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "RECONCILER_"))}
ENV["PATH"] = f"{ENV.get('PATH', '')}:/usr/sbin:/sbin"


def _git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["git", "-c", "user.name=Bench", "-c", "user.email=bench@example.net", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV, check=check)


def _summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(samples), 3),
        "best": round(min(samples), 3),
        "worst": round(max(samples), 3),
        "samples": [round(s, 3) for s in samples],
    }


def main() -> int:
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    base = Path(tempfile.mkdtemp(prefix="bench-prereceive-"))
    try:
        seed, bare, clone = base / "seed", base / "srv.git", base / "clone"
        shutil.copytree(ROOT / "example-repo", seed)
        _git(seed, "init", "-q", "-b", "main")
        _git(seed, "add", "-A")
        _git(seed, "commit", "-q", "-m", "initial")
        _git(base, "clone", "-q", "--bare", str(seed), str(bare))
        config = base / "config.toml"
        config.write_text(f'[source]\nurl = "{bare}"\nbranch = "main"\n[state]\ndir = "{base / "state"}"\n')
        subprocess.run(
            ["bash", str(ROOT / "deploy" / "install-pre-receive.sh"), str(bare), RECONCILER, str(config)],
            check=True,
            capture_output=True,
        )
        _git(base, "clone", "-q", str(bare), str(clone))
        accepted: list[float] = []
        refused: list[float] = []
        hook_only: list[float] = []
        domain = clone / "domains" / "example.net.yaml"
        main_cf = clone / "postfix" / "main.cf"
        for i in range(repeat):
            original = main_cf.read_text()
            main_cf.write_text(original + f"no_such_parameter_{i} = 1\n")
            _git(clone, "commit", "-qam", f"typo {i}")
            start = time.perf_counter()
            res = _git(clone, "push", "-q", "origin", "main", check=False)
            refused.append(time.perf_counter() - start)
            assert res.returncode != 0 and "refused" in res.stderr, res.stderr
            _git(clone, "reset", "-q", "--hard", "origin/main")

            domain.write_text(domain.read_text() + f"# change {i}\n")
            _git(clone, "commit", "-qam", f"change {i}")
            old = _git(clone, "rev-parse", "origin/main").stdout.strip()
            new = _git(clone, "rev-parse", "HEAD").stdout.strip()
            start = time.perf_counter()
            res = _git(clone, "push", "-q", "origin", "main", check=False)
            accepted.append(time.perf_counter() - start)
            assert res.returncode == 0, res.stderr
            start = time.perf_counter()
            subprocess.run(
                [RECONCILER, "--config", str(config), "--log-level", "warning", "pre-receive"],
                input=f"{old} {new} refs/heads/main\n",
                cwd=bare,
                capture_output=True,
                text=True,
                env=ENV,
                check=True,
            )
            hook_only.append(time.perf_counter() - start)
        doc = {
            "repeat": repeat,
            "git_push_accepted_s": _summary(accepted),
            "git_push_refused_s": _summary(refused),
            "hook_alone_s": _summary(hook_only),
        }
        print(json.dumps(doc, indent=2))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
