"""Access to the JSON Schemas shipped in schemas/ (or pandacead/_schemas in a wheel)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent


def schema_dir() -> Path:
    for candidate in (_HERE / "_schemas", _HERE.parent / "schemas"):
        if (candidate / "job.schema.json").is_file():
            return candidate
    raise FileNotFoundError("pandacead's JSON schemas are missing from the installation")


@cache
def load_schema(name: str) -> dict[str, Any]:
    """`name` is "job" or "artifact"."""
    return json.loads((schema_dir() / f"{name}.schema.json").read_text("utf-8"))
