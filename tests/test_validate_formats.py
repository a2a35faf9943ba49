"""`reconciler validate --format json|github`, and the CI examples in deploy/ci/ that run it.

The end-to-end cases run the real command with Postfix's tools on a copy of example-repo; the
escaping and the CI examples are pure units.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mailhost import EXAMPLE

from reconciler.cli import build_parser
from reconciler.errors import Problem
from reconciler.render import github_escape_data, github_escape_property, problems_github

ROOT = Path(__file__).resolve().parent.parent


def _validate(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RECONCILER_CONFIG"}
    env["PATH"] = f"{env.get('PATH', '')}:/usr/sbin:/sbin"
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "--log-level", "warning", "validate", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


@pytest.fixture
def broken_checkout(tmp_path: Path, postfix_tools_available: dict[str, str]) -> Path:
    """A CI checkout holding example-repo under mail/, with a misspelled parameter on main.cf's last line."""
    repo = tmp_path / "mail"
    shutil.copytree(EXAMPLE, repo)
    with (repo / "postfix" / "main.cf").open("a") as fh:
        fh.write("smtpd_tls_security_levle = may\n")
    return tmp_path


def test_github_format_annotates_the_line_relative_to_the_checkout(broken_checkout: Path) -> None:
    """Each problem is one ::error workflow command naming the file from the checkout's root and its line."""
    repo = broken_checkout / "mail"
    last = len((repo / "postfix" / "main.cf").read_text().splitlines())
    res = _validate(broken_checkout, "--repo", "mail", "--format", "github")
    assert res.returncode == 1, res.stderr
    assert res.stdout.splitlines() == [
        f"::error file=mail/postfix/main.cf,line={last}::unused parameter smtpd_tls_security_levle: "
        "Postfix ignores it (misspelled or obsolete?)"
    ]
    inside = _validate(repo, "--format", "github")
    assert inside.stdout.startswith(f"::error file=postfix/main.cf,line={last}::")


def test_json_format_is_one_document(broken_checkout: Path) -> None:
    """--format json prints one JSON document with every problem, and valid: false; a good tree gives valid: true."""
    repo = broken_checkout / "mail"
    res = _validate(broken_checkout, "--repo", str(repo), "--format", "json")
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert doc["valid"] is False and doc["revision"] is None
    assert [(p["path"], p["message"].split(":")[0]) for p in doc["problems"]] == [
        ("postfix/main.cf", "unused parameter smtpd_tls_security_levle")
    ]
    assert isinstance(doc["problems"][0]["line"], int)
    good = _validate(broken_checkout, "--repo", str(EXAMPLE), "--format", "json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["problems"] == [] and json.loads(good.stdout)["valid"] is True


def test_github_escaping_follows_the_toolkit_rules() -> None:
    """%, CR and LF are escaped in messages; properties also escape ':' and ','; a message cannot end the command."""
    assert github_escape_data("50% done\r\nnext") == "50%25 done%0D%0Anext"
    assert github_escape_property("a,b:c%\n") == "a%2Cb%3Ac%25%0A"
    out = problems_github([Problem("domains/x,y:z.yaml", None, "bad\n::error::forged")])
    assert out == "::error file=domains/x%2Cy%3Az.yaml::bad%0A::error::forged\n"
    assert len(out.splitlines()) == 1


@pytest.mark.parametrize("name", ["github-actions.yml", "gitlab-ci.yml"])
def test_ci_examples_install_postfix_from_debian_and_run_valid_commands(name: str) -> None:
    """The CI examples are YAML, install Debian's postfix and postfix-mysql, and call reconciler with arguments it accepts."""
    text = (ROOT / "deploy" / "ci" / name).read_text()
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    assert "apt-get install" in text and " postfix postfix-mysql " in text
    calls = []
    for line in text.splitlines():
        words = shlex.split(line.split(" #")[0].strip().lstrip("- "), comments=True) if "reconciler " in line else []
        if "reconciler" in words:
            args = words[words.index("reconciler") + 1 :]
            args = args[: next((i for i, a in enumerate(args) if a in (">", "||", "|")), len(args))]
            calls.append(build_parser().parse_args(args))
    assert any(c.command == "validate" for c in calls), calls
    wanted = "github" if name.startswith("github") else "json"
    assert any(getattr(c, "format", None) == wanted for c in calls)
