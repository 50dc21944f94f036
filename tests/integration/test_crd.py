"""The generated CRD on a real API server: examples apply, explain documents, printer columns, scale."""

from __future__ import annotations

import copy
import json
import re

import pytest
import yaml

from tests.conftest import EXAMPLES, Cluster, minimal_manifest
from zeroth import api
from zeroth import crd as crdgen

pytestmark = pytest.mark.cluster


def _squash(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_passes_server_side_dry_run(crd: Cluster, namespace: str, path):
    out = crd.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path)).stdout
    assert "created (server dry run)" in out


def test_server_fills_the_models_defaults(crd: Cluster, namespace: str):
    crd.apply(minimal_manifest("defaults"), "-n", namespace)
    stored = crd.get("rr/defaults", "-n", namespace)["spec"]
    expected = api.ReasoningRunSpec.model_validate(minimal_manifest()["spec"]).model_dump(by_alias=True, exclude_none=True, mode="json")
    assert stored == expected


def test_explain_prints_field_descriptions(crd: Cluster):
    out = _squash(crd.kubectl("explain", "reasoningrun.spec.algorithm").stdout)
    assert _squash(api.ReasoningRunSpec.model_fields["algorithm"].description) in out
    for name in ("clip_high", "max_staleness", "loss_type"):
        field = api.AlgorithmSpec.model_fields[name]
        assert field.alias in out
        assert _squash(field.description)[:60] in out, name


def test_explain_documents_volumes_the_model_cache_and_the_ttl(crd: Cluster):
    spec = _squash(crd.kubectl("explain", "reasoningrun.spec").stdout)
    for name in ("model_cache", "ttl_seconds_after_finished"):
        assert _squash(api.ReasoningRunSpec.model_fields[name].description)[:60] in spec, name
    mounts = _squash(crd.kubectl("explain", "reasoningrun.spec.trainer.volumeMounts").stdout)
    assert _squash(api.VolumeMount.model_fields["mount_path"].description) in mounts
    volumes = _squash(crd.kubectl("explain", "reasoningrun.spec.rollout.volumes").stdout)
    assert _squash(api.Volume.model_fields["persistent_volume_claim"].description) in volumes


def test_every_volume_source_passes_server_side_dry_run(crd: Cluster, namespace: str):
    m = minimal_manifest("vols")
    m["spec"]["modelCache"] = {"volumeClaimName": "hf-models", "path": "/models"}
    m["spec"]["trainer"] = {"volumes": [
        {"name": "a", "persistentVolumeClaim": {"claimName": "data", "readOnly": True}},
        {"name": "b", "configMap": {"name": "cm", "items": [{"key": "k", "path": "k.txt", "mode": 0o444}], "optional": True}},
        {"name": "c", "secret": {"secretName": "s", "defaultMode": 0o400}},
        {"name": "d", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
        {"name": "e", "nfs": {"server": "nfs.example", "path": "/x"}},
        {"name": "f", "csi": {"driver": "example.csi"}},
        {"name": "g", "ephemeral": {"volumeClaimTemplate": {"spec": {"accessModes": ["ReadWriteOnce"]}}}},
    ], "volumeMounts": [{"name": n, "mountPath": f"/mnt/{n}"} for n in "abcdefg"]}
    out = crd.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(m)).stdout
    assert "created (server dry run)" in out


def test_short_name_and_category(crd: Cluster, namespace: str):
    assert "ReasoningRun" in crd.kubectl("explain", "rr").stdout
    crd.apply(minimal_manifest("by-category"), "-n", namespace)
    assert crd.kubectl("get", "zeroth", "-n", namespace, "-o", "name").stdout.split() == ["reasoningrun.zeroth.dev/by-category"]


def test_get_shows_printer_columns(crd: Cluster, namespace: str):
    crd.apply(minimal_manifest("columns"), "-n", namespace)
    status = {"phase": "Running", "trainer": {"desired": 2, "ready": 2}, "rollout": {"desired": 3, "ready": 1},
              "progress": {"step": 17, "rewardMean": 0.4375, "accuracy": 0.25}}
    crd.kubectl("patch", "rr/columns", "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}))
    lines = crd.kubectl("get", "rr", "columns", "-n", namespace).stdout.splitlines()
    header = re.split(r"\s{2,}", lines[0].strip())
    assert header == ["NAME"] + [c["name"].upper() for c in crdgen.printer_columns() if c.get("priority", 0) == 0]
    row = dict(zip(header, re.split(r"\s{2,}", lines[1].strip())))
    assert row["PHASE"] == "Running"
    assert row["STEP"] == "17"
    assert row["MAX STEPS"] == str(api.AlgorithmSpec().max_steps)
    assert float(row["REWARD"]) == pytest.approx(0.4375)
    assert float(row["ACCURACY"]) == pytest.approx(0.25)
    assert (row["TRAINERS"], row["ROLLOUTS"]) == ("2", "1")


def test_kubectl_scale_sets_rollout_replicas(crd: Cluster, namespace: str):
    crd.apply(minimal_manifest("scaled"), "-n", namespace)
    crd.kubectl("scale", "rr/scaled", "-n", namespace, "--replicas=3")
    assert crd.get("rr/scaled", "-n", namespace)["spec"]["rollout"]["replicas"] == 3
    # the scale subresource honours the schema's bounds too
    proc = crd.kubectl("scale", "rr/scaled", "-n", namespace, "--replicas=0", check=False)
    assert proc.returncode != 0 and "spec.rollout.replicas" in proc.stderr
    assert crd.get("rr/scaled", "-n", namespace)["spec"]["rollout"]["replicas"] == 3


def test_a_queued_runs_fleet_size_is_fixed(crd: Cluster, namespace: str):
    """Kueue admits a run's pods as one pod group of a fixed size, so scaling a queued run is refused."""
    m = minimal_manifest("queued")
    m["spec"]["queueName"] = "team-a"
    crd.apply(m, "-n", namespace)
    proc = crd.kubectl("scale", "rr/queued", "-n", namespace, "--replicas=3", check=False)
    assert proc.returncode != 0 and "spec.rollout.replicas" in proc.stderr and "queueName" in proc.stderr
    assert crd.get("rr/queued", "-n", namespace)["spec"]["rollout"]["replicas"] == 1


def test_model_is_immutable(crd: Cluster, namespace: str):
    m = minimal_manifest("immutable")
    crd.apply(m, "-n", namespace)
    changed = copy.deepcopy(m)
    changed["spec"]["model"]["name"] = "Qwen/Qwen2.5-3B"
    proc = crd.apply(changed, "-n", namespace, check=False)
    assert proc.returncode != 0 and "spec.model" in proc.stderr and "immutable" in proc.stderr
    # other fields still change
    changed = copy.deepcopy(m)
    changed["spec"]["suspend"] = True
    crd.apply(changed, "-n", namespace)
    assert crd.get("rr/immutable", "-n", namespace)["spec"]["suspend"] is True


def test_crd_file_is_the_installed_schema(crd: Cluster):
    installed = crd.get("crd/reasoningruns.zeroth.dev")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    generated = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert installed == generated
