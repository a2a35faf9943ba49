"""The pure stages load without a database driver, git or the process tools, at run time too.

import-linter's forbidden contract (pyproject.toml) checks the import statements; this checks what a
fresh interpreter actually loads, package ``__init__`` modules included.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = ["reconciler.plan", "reconciler.render", "reconciler.models", "reconciler.desired.render", "reconciler.rows"]


@pytest.mark.parametrize("module", PURE)
def test_pure_stage_loads_no_driver_and_no_git(module: str) -> None:
    probe = f"import sys, {module}; print(sorted(m for m in ('pymysql', 'pygit2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", f"{module} loads {out.stdout.strip()}"
