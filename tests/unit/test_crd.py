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
        for bound in ("minimum", "maximum"):  # the API server refuses a bound that is not a number
            if bound in node:
                assert isinstance(node[bound], (int, float)) and not isinstance(node[bound], bool), (path, bound)


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


def _alias_fields(model: type) -> dict[str, object]:
    return {(f.alias or n): f for n, f in model.model_fields.items()}


def test_every_spec_field_has_exactly_one_edit_policy():
    """A field added to the spec without saying what an edit of it does fails here (and a path that
    names no field): LIVE, WHILE_SUSPENDED and IMMUTABLE cover the spec once, with no overlap."""
    paths = [*api.LIVE, *api.WHILE_SUSPENDED, *api.IMMUTABLE]
    assert len(paths) == len(set(paths))
    covered = set(paths)
    for name, field in _alias_fields(api.ReasoningRunSpec).items():
        if name in covered:
            assert not any(p.startswith(f"{name}.") for p in covered), name
            continue
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, api.BaseModel), f"spec.{name} has no edit policy"
        for sub in _alias_fields(model):
            assert f"{name}.{sub}" in covered, f"spec.{name}.{sub} has no edit policy"
    for path in covered:  # every path names a field
        model = api.ReasoningRunSpec
        for key in path.split("."):
            field = _alias_fields(model)[key]
            model = field.annotation


def test_the_crd_says_each_fields_edit_policy_for_kubectl_explain():
    spec = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = {r["fieldPath"]: r for r in spec["x-kubernetes-validations"] if "oldSelf" in r["rule"]}
    for paths, note in ((api.IMMUTABLE, "Immutable once the run exists"), (api.WHILE_SUSPENDED, "only while the run is suspended")):
        for path in paths:
            node = spec
            for key in path.split("."):
                node = node["properties"][key]
            assert note in node["description"], path
            assert f".{path}" in rules and f"oldSelf.{path}" in rules[f".{path}"]["rule"], path
    for path in api.LIVE:
        assert f".{path}" not in rules or path == "rollout.replicas", path  # (fixed only under Kueue)
