"""The role-wrapper contract: what the roles publish (``pulih_backup_results``,
``pulih_verify_results``, ``pulih_restore_results``, ``pulih_register_drift``) checked against
``schemas/role_results.schema.json`` before the wrapper reads a field of it, so that a role
that publishes something else fails its host with the field named instead of a report that
silently lacks it."""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema

from pulih import runner

SCHEMA_FILE = "schemas/role_results.schema.json"
_MAX_PROBLEMS = 5


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads((runner.project_dir() / SCHEMA_FILE).read_text(encoding="utf-8"))
    return jsonschema.Draft7Validator(schema)


def _where(error: jsonschema.ValidationError) -> str:
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "the facts"


def problems(name: str, value: Any) -> list[str]:
    """Why the published fact `name` breaks the contract (empty when it keeps it)."""
    errors = sorted(_validator().iter_errors({name: value}), key=lambda e: list(e.absolute_path))
    found = [f"{_where(error)}: {error.message}" for error in errors[:_MAX_PROBLEMS]]
    if len(errors) > _MAX_PROBLEMS:
        found.append(f"and {len(errors) - _MAX_PROBLEMS} more")
    return found
