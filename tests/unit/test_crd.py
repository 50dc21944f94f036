"""The checked-in CRD is what the API model generates, and it is a structural schema."""

from __future__ import annotations

from typing import Any

import yaml

from tests.conftest import CRD_PATH
from zeroth import api, crd


def test_checked_in_crd_matches_the_model():
    assert CRD_PATH.read_text() == crd.render(), "the CRD drifted from zeroth/api.py: run `make crd`"


def _walk(node: dict[str, Any], path: str = ""):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}.*")


def test_schema_is_structural():
    schema = yaml.safe_load(CRD_PATH.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "oneOf" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if isinstance(node.get("exclusiveMinimum"), bool):
            assert "minimum" in node, path


def test_every_spec_field_is_described():
    schema = crd.structural_schema(api.ReasoningRunSpec)
    undocumented = [p for p, n in _walk(schema) if p and not p.endswith("[]") and not p.endswith(".*") and not n.get("description")]
    assert undocumented == []


def test_defaults_are_the_models_defaults():
    """Each leaf default in the CRD equals the pydantic default, so both sides fill the same values."""
    schema = crd.structural_schema(api.ReasoningRunSpec)
    defaults = api.AlgorithmSpec().model_dump(by_alias=True)
    algo = schema["properties"]["algorithm"]["properties"]
    for name, value in defaults.items():
        if isinstance(value, dict):
            continue
        assert algo[name].get("default") == value, name


def test_cel_rules_are_in_the_schema():
    schema = crd.structural_schema(api.ReasoningRunSpec)
    rules = [r["rule"] for _, n in _walk(schema) for r in n.get("x-kubernetes-validations", [])]
    for model in (api.AlgorithmSpec, api.RolloutSpec, api.DeepSpeedSpec, api.ReasoningRunSpec):
        for rule in model.cel_rules:
            assert rule.rule in rules


def test_scale_subresource_points_at_rollout_replicas():
    version = crd.crd()["spec"]["versions"][0]
    scale = version["subresources"]["scale"]
    assert scale["specReplicasPath"] == ".spec.rollout.replicas"
    assert "replicas" in version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["rollout"]["properties"]
