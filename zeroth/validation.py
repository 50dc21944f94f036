"""Local validation of `ReasoningRun` manifests, the same rules the API server applies.

Types, bounds, enums, required and unknown fields come from the pydantic models in `zeroth.api`;
cross-field rules are the very CEL expressions the CRD carries, evaluated with cel-python. Every
error names the field path the way the API server does (`spec.verifiers[0].weight`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Iterator

import celpy
import pydantic
import yaml

from zeroth import api


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ManifestError(ValueError):
    """A manifest that the API server would reject; `errors` names each offending field."""

    def __init__(self, source: str, errors: list[FieldError]):
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  {e}" for e in errors)
        super().__init__(f"{source}: invalid ReasoningRun:\n{lines}")


def load(path: str | Path) -> api.ReasoningRun:
    """Reads and validates a manifest file (one YAML document)."""
    text = Path(path).read_text()
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise ManifestError(str(path), [FieldError("<yaml>", str(e))]) from None
    if len(docs) != 1:
        raise ManifestError(str(path), [FieldError("<yaml>", f"expected one document, found {len(docs)}")])
    return validate(docs[0], source=str(path))


def validate(manifest: Any, source: str = "<manifest>") -> api.ReasoningRun:
    """The validated, defaulted run; raises `ManifestError` listing every offending field."""
    if not isinstance(manifest, dict):
        raise ManifestError(source, [FieldError("<root>", "must be a mapping")])
    try:
        run = api.ReasoningRun.model_validate(_drop_nulls(manifest))
    except pydantic.ValidationError as e:
        raise ManifestError(source, [FieldError(_path(err["loc"]), err["msg"]) for err in e.errors()]) from None
    errors = list(_rule_errors(run))
    if errors:
        raise ManifestError(source, errors)
    return run


def _drop_nulls(value: Any) -> Any:
    """Like the API server, treat `field: null` in an object as an absent field (then defaulted)."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _rule_errors(run: api.ReasoningRun) -> Iterator[FieldError]:
    root = {"metadata": {"name": run.metadata.name}}
    if not _evaluate(api.NAME_RULE.rule, root):
        yield FieldError("metadata.name", api.NAME_RULE.message)
    yield from _model_rule_errors(run.spec, "spec")


def _model_rule_errors(model: pydantic.BaseModel, path: str) -> Iterator[FieldError]:
    # Children first, like the API server: a broken nested field is reported on its own path.
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        child = f"{path}.{field.alias or name}"
        if isinstance(value, api.Spec):
            yield from _model_rule_errors(value, child)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, api.Spec):
                    yield from _model_rule_errors(item, f"{child}[{i}]")
    rules = type(model).__dict__.get("cel_rules", ())
    if not rules:
        return
    self_ = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    for rule in rules:
        if "oldSelf" in rule.rule:
            continue  # transition rules need the stored object: only the API server has it
        if not _evaluate(rule.rule, {"self": self_}, bind_self=False):
            yield FieldError(path + (rule.field_path or ""), rule.message)


@cache
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _evaluate(rule: str, obj: dict[str, Any], bind_self: bool = True) -> bool:
    activation = {"self": celpy.json_to_cel(obj)} if bind_self else {k: celpy.json_to_cel(v) for k, v in obj.items()}
    result = _program(rule).evaluate(activation)
    if isinstance(result, Exception):
        raise result
    return bool(result)
