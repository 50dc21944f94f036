"""Generates the `ReasoningRun` CustomResourceDefinition from the API model (`make crd`).

pydantic writes JSON Schema 2020-12; the API server wants a *structural* OpenAPI v3.0 schema: no
`$ref`, a `type` on every node, `nullable` instead of `null` branches, boolean `exclusiveMinimum`.
`structural_schema` does that translation; nothing else here knows about the fields.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from pydantic import BaseModel

from zeroth import api

_DROP = {"title", "$defs"}


def structural_schema(model: type[api.BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model, every `$ref` inlined."""
    root = model.model_json_schema(by_alias=True, mode="validation")
    defs = root.get("$defs", {})
    return _convert(root, defs, model)


def _factory_default(model: type[BaseModel] | None, alias: str) -> Any:
    """The default of a field whose default is a factory: of a nested model, the whole defaulted
    object (the API server checks defaults against CEL rules as they are, unfilled); of a list or a
    map, the empty one."""
    if model is None:
        return None
    field = next((f for n, f in model.model_fields.items() if (f.alias or n) == alias), None)
    if field is None or field.default_factory is None:
        return None
    value = field.default_factory()
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_none=True, mode="json")
    if isinstance(value, list | dict):  # an empty list or map: stored as the local model has it
        return value
    return None


def _convert(node: dict[str, Any], defs: dict[str, Any], model: type[BaseModel] | None = None) -> dict[str, Any]:
    node = dict(node)
    if "$ref" in node:
        name = node.pop("$ref").rsplit("/", 1)[-1]
        model = getattr(api, name, None)
        node = {**defs[name], **node}  # the field's own description/default win over the model's
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"unions other than Optional are not structural: {branches}")
        inner = _convert(branches[0], defs, model)
        node = {**inner, **{k: v for k, v in node.items() if k != "default" or v is not None}}
    if node.get("x-kubernetes-int-or-string"):
        node.pop("anyOf", None)
        node.pop("type", None)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {}
            for name, sub in value.items():
                converted = _convert(sub, defs)
                default = _factory_default(model, name)
                if default is not None and "default" not in converted:
                    converted["default"] = default
                out[key][name] = converted
        elif key == "items":
            out[key] = _convert(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict) and value:
                out[key] = _convert(value, defs)
            elif value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            # False: unknown fields are pruned, and rejected by kubectl's strict field validation
        elif key == "description":
            out[key] = " ".join(value.split())  # docstrings wrap; kubectl explain re-wraps
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            # JSON Schema's bound, as OpenAPI v3's bound and flag (a node converted twice, as a
            # nullable field's is, already has them)
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = value
    if "properties" in out and "type" not in out:
        out["type"] = "object"
    if out.get("type") == "object" and not out.get("x-kubernetes-preserve-unknown-fields") and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("format") == "date-time":
        out["type"] = "string"
    return out


def printer_columns() -> list[dict[str, Any]]:
    return [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
        {"name": "Max Steps", "type": "integer", "jsonPath": ".spec.algorithm.maxSteps"},
        {"name": "Reward", "type": "number", "jsonPath": ".status.progress.rewardMean"},
        {"name": "Accuracy", "type": "number", "jsonPath": ".status.progress.accuracy"},
        {"name": "Trainers", "type": "integer", "jsonPath": ".status.trainer.ready", "description": "Ready trainer pods"},
        {"name": "Rollouts", "type": "integer", "jsonPath": ".status.rollout.ready", "description": "Ready rollout pods"},
        {"name": "GPU Seconds", "type": "number", "jsonPath": ".status.compute.gpuSeconds", "priority": 1,
         "description": "GPU-seconds the run's pods held"},
        {"name": "Cost", "type": "number", "jsonPath": ".status.compute.cost", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
    ]


def _note_edits(spec: dict[str, Any]) -> dict[str, Any]:
    """Each field's edit policy (api.IMMUTABLE, api.WHILE_SUSPENDED) at the end of its description,
    for `kubectl explain`."""
    for paths, note in ((api.IMMUTABLE, api.EDIT_NOTES["immutable"]), (api.WHILE_SUSPENDED, api.EDIT_NOTES["suspended"])):
        for path in paths:
            node = spec
            for key in path.split("."):
                node = node["properties"][key]
            node["description"] = f"{node.get('description', '')} {note}".strip()
    return spec


def crd() -> dict[str, Any]:
    spec = _note_edits(structural_schema(api.ReasoningRunSpec))
    status = structural_schema(api.ReasoningRunStatus)
    root = {
        "type": "object",
        "description": "A reinforcement-learning run that trains a reasoning model by GRPO from verifier rewards.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [api.NAME_RULE.as_schema()],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.rollout.replicas",
                            "statusReplicasPath": ".status.rollout.ready",
                            "labelSelectorPath": ".status.rollout.selector",
                        },
                    },
                    "additionalPrinterColumns": printer_columns(),
                }
            ],
        },
    }


HEADER = "# Generated by `make crd` from zeroth/api.py: do not edit by hand.\n"


def render() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=100)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
