"""The local validator rejects each bad manifest naming the field, and accepts the examples."""

from __future__ import annotations

import pytest

from tests.bad_manifests import CASES, Case
from tests.conftest import EXAMPLES, minimal_manifest
from zeroth import api, validation


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_manifest_names_the_field(case: Case):
    with pytest.raises(validation.ManifestError) as err:
        validation.validate(case.manifest())
    paths = [e.path for e in err.value.errors]
    assert case.path in paths, f"expected an error on {case.path}, got {err.value.errors}"


def test_there_are_enough_cases():
    assert len({c.id for c in CASES}) == len(CASES) >= 25


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_valid(path):
    run = validation.load(path)
    assert run.metadata.name == path.read_text().split("name:", 1)[1].split()[0]


def test_defaults_are_filled():
    run = validation.validate(minimal_manifest())
    assert run.spec.algorithm == api.AlgorithmSpec()
    assert run.spec.rollout.replicas == api.RolloutSpec.model_fields["replicas"].default


def test_null_is_an_absent_field_as_on_the_server():
    m = minimal_manifest()
    m["spec"]["algorithm"] = {"groupSize": None}
    assert validation.validate(m).spec.algorithm.group_size == api.AlgorithmSpec().group_size


def test_every_error_is_reported_at_once():
    m = minimal_manifest()
    m["spec"]["algorithm"] = {"groupSize": 1, "lossType": "ppo"}
    with pytest.raises(validation.ManifestError) as err:
        validation.validate(m)
    assert {e.path for e in err.value.errors} >= {"spec.algorithm.groupSize", "spec.algorithm.lossType"}


def test_wrong_kind_and_version():
    m = minimal_manifest()
    m["apiVersion"] = "zeroth.dev/v1"
    m["kind"] = "Job"
    with pytest.raises(validation.ManifestError) as err:
        validation.validate(m)
    assert {e.path for e in err.value.errors} == {"apiVersion", "kind"}


def test_load_reports_yaml_errors(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("spec: [unclosed\n")
    with pytest.raises(validation.ManifestError, match="broken.yaml"):
        validation.load(p)
