"""The published schemas in schemas/ are exactly what the models generate."""

from pathlib import Path

import pytest

from reconciler.schemagen import generated

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(generated()))
def test_schema_is_current(name: str) -> None:
    """A stale schema file fails: run `python -m reconciler.schemagen` after changing a model."""
    committed = (ROOT / "schemas" / name).read_text(encoding="utf-8")
    assert committed == generated()[name], f"schemas/{name} is stale: run python -m reconciler.schemagen"


def test_domain_files_carry_modeline() -> None:
    """Every domain file of example-repo names the schema for editors (yaml-language-server)."""
    files = sorted((ROOT / "example-repo" / "domains").glob("*.yaml"))
    assert files, "example-repo has no domain files"
    for path in files:
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first == "# yaml-language-server: $schema=../../schemas/domain.schema.json", path
