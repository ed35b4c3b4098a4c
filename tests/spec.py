"""Validation of what the tests receive against the TAMS 8.2 JSON schemas (``tams-api/schemas``).

``validate(instance, "flow-get.json")`` raises ``jsonschema.ValidationError`` on a mismatch;
``$ref``s between the schema files are resolved. ``validate_list`` checks each item of a list.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry
from referencing.jsonschema import DRAFT202012

__all__ = ["SCHEMA_DIR", "validate", "validate_list"]

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "tams-api" / "schemas"


@functools.cache
def _registry() -> Registry:
    return Registry().with_resources(
        (
            path.name,
            DRAFT202012.create_resource(json.loads(path.read_text(encoding="utf-8"))),
        )
        for path in sorted(SCHEMA_DIR.glob("*.json"))
    )


@functools.cache
def _validator(schema_file: str) -> Draft202012Validator:
    if not (SCHEMA_DIR / schema_file).is_file():
        raise FileNotFoundError(f"no schema {schema_file} in {SCHEMA_DIR}")
    return Draft202012Validator({"$ref": schema_file}, registry=_registry(), format_checker=FormatChecker())


def validate(instance: Any, schema_file: str) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``instance`` matches ``schema_file``."""
    _validator(schema_file).validate(instance)


def validate_list(instance: Any, item_schema_file: str) -> None:
    """Check that ``instance`` is a list whose every item matches ``item_schema_file``."""
    if not isinstance(instance, list):
        raise TypeError(f"expected a JSON list, got {type(instance).__name__}")
    for item in instance:
        validate(item, item_schema_file)
