"""Validation of request bodies against the TAMS 8.2 JSON schemas in ``tams-api/schemas``.

The schema files refer to each other by file name. They hold no cycles, so each schema is
loaded once with every ``$ref`` replaced by an ``allOf`` of the referenced schema (equivalent
under draft 2020-12, where ``$ref`` is an in-place applicator like ``allOf``). Validation then
needs no reference lookups, which matters for segment POSTs at a thousand a second.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from .errors import BadRequest

__all__ = ["SCHEMA_DIR", "check", "warm_up"]

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "tams-api" / "schemas"


@functools.cache
def _raw(schema_file: str) -> Any:
    return json.loads((SCHEMA_DIR / schema_file).read_text(encoding="utf-8"))


# Keywords whose values map names to schemas: their keys are property names, not keywords, so a
# property called "description" is kept (only the annotation keywords are dropped elsewhere).
_NAME_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})


def _inline(node: Any, seen: tuple[str, ...], names: bool = False) -> Any:
    if isinstance(node, list):
        return [_inline(item, seen) for item in node]
    if not isinstance(node, dict):
        return node
    if names:
        return {k: _inline(v, seen) for k, v in node.items()}
    result = {k: _inline(v, seen, k in _NAME_MAPS) for k, v in node.items() if k not in ("$ref", "description", "examples")}
    ref = node.get("$ref")
    if isinstance(ref, str):
        if not ref.endswith(".json") or "#" in ref or ref in seen:
            raise ValueError(f"cannot inline $ref {ref!r}")
        target = _inline(_raw(ref), (*seen, ref))
        result["allOf"] = [target, *result.get("allOf", [])]
    return result


@functools.cache
def _validator(schema_file: str) -> Draft202012Validator:
    schema = _inline(_raw(schema_file), (schema_file,))
    return Draft202012Validator(schema)


def warm_up() -> None:
    """Build the validators used per request now, not on the first request."""
    for name in (
        "flow-put.json",
        "flow-segment-post.json",
        "flow-storage-post.json",
        "service-post.json",
    ):
        _validator(name)


def check(instance: Any, schema_file: str, what: str) -> None:
    """Raise ``BadRequest`` naming the most relevant problem if ``instance`` does not match."""
    validator = _validator(schema_file)
    try:
        if validator.is_valid(instance):
            return
        error = best_match(validator.iter_errors(instance))
    except RecursionError as exc:
        raise BadRequest(f"Invalid {what}: nested too deeply") from exc
    where = "/".join(str(p) for p in error.absolute_path) if error is not None else ""
    location = f" at {where}" if where else ""
    message = error.message[:300] if error is not None else "does not match the schema"
    raise BadRequest(f"Invalid {what}{location}: {message}")
