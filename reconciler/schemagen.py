"""Generates the published schemas in ``schemas/`` from the pydantic models and the packaged DDL.

Run ``python -m reconciler.schemagen [OUTDIR]`` after changing a model; ``tests/test_schemas.py``
fails when the committed files differ from what this prints.
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

from pydantic import BaseModel

from reconciler.models import AgentConfig, DomainFile, HostFile
from reconciler.status import Status


def _schema(model: type[BaseModel]) -> str:
    schema = model.model_json_schema(mode="validation")
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"


def generated() -> dict[str, str]:
    """File name -> content of every generated schema file."""
    return {
        "domain.schema.json": _schema(DomainFile),
        "host.schema.json": _schema(HostFile),
        "config.schema.json": _schema(AgentConfig),
        "status.schema.json": _schema(Status),
        "mysql.sql": resources.files("reconciler").joinpath("sql/mysql.sql").read_text(encoding="utf-8"),
    }


def main(argv: list[str]) -> int:
    """Write every generated file into OUTDIR (default: ./schemas)."""
    out = Path(argv[0]) if argv else Path("schemas")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in generated().items():
        (out / name).write_text(text, encoding="utf-8")
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
