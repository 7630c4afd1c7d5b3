"""Result records: one strict-JSON file per run."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_record(record: dict, path: str | os.PathLike) -> Path:
    """Write a record atomically; NaN or infinity raises instead of writing bad JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(record, indent=1, sort_keys=True, allow_nan=False))
    os.replace(partial, path)
    return path


def read_record(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


def partial_record_path(record_path: str | os.PathLike) -> Path:
    """Return where a run keeps its epochs so far: ``record.json`` -> ``record.partial.json``."""
    path = Path(record_path)
    return path.with_name(f"{path.stem}.partial{path.suffix}")
