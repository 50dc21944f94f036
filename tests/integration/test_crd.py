"""The generated CRD on a real API server: examples apply, explain documents, printer columns, scale."""

from __future__ import annotations

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


def test_a_queued_runs_fleet_size_is_fixed_until_it_is_suspended(crd: Cluster, namespace: str):
    """Kueue admits a run's pods as one pod group of a fixed size, so scaling a running queued run is
    refused; a suspended one may be scaled, since its resume forms a new group."""
    m = minimal_manifest("queued")
    m["spec"]["queueName"] = "team-a"
    crd.apply(m, "-n", namespace)
    proc = crd.kubectl("scale", "rr/queued", "-n", namespace, "--replicas=3", check=False)
    assert proc.returncode != 0 and "spec.rollout.replicas" in proc.stderr and "queueName" in proc.stderr
    assert crd.get("rr/queued", "-n", namespace)["spec"]["rollout"]["replicas"] == 1
    crd.kubectl("patch", "rr/queued", "-n", namespace, "--type=merge", "-p", '{"spec": {"suspend": true}}')
    crd.kubectl("scale", "rr/queued", "-n", namespace, "--replicas=3")
    assert crd.get("rr/queued", "-n", namespace)["spec"]["rollout"]["replicas"] == 3


# A new value for every field a user may try to edit (each differs from minimal_manifest's): the
# test below covers api.IMMUTABLE, api.WHILE_SUSPENDED and api.LIVE whole, so a field added to one of
# them without a value here fails it.
EDITS = {
    "model": {"name": "Qwen/Qwen2.5-0.5B"}, "dataset": {"evalSize": 100},
    "verifiers": [{"name": "countdown", "weight": 2.0}], "algorithm": {"learningRate": 2e-6},
    "checkpoint": {"everySteps": 10}, "export": {"which": "all"},
    "trainer.replicas": 2, "trainer.gpusPerReplica": 0, "trainer.microBatchSize": 2,
    "trainer.deepspeed": {"zeroStage": 3}, "rollout.gpusPerReplica": 2, "rollout.engine": "hf",
    "rollout.tensorParallelSize": 2, "rollout.gpuMemoryUtilization": 0.5, "rollout.stop": ["</answer>"],
    **{f"{role}.{field}": value for role in ("trainer", "rollout") for field, value in {
        "image": "example.com/zeroth:2", "imagePullPolicy": "Always", "resources": {"requests": {"cpu": "2"}},
        "nodeSelector": {"pool": "a"}, "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"podAntiAffinity": {}}, "gpuNodeSelector": {}, "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
        "envFrom": [{"secretRef": {"name": "hf"}}], "labels": {"team": "a"}, "annotations": {"note": "x"},
        "terminationGracePeriodSeconds": 120, "volumes": [{"name": "extra", "emptyDir": {}}],
        "volumeMounts": [{"name": "extra", "mountPath": "/extra"}]}.items()},
    "modelCache": {"volumeClaimName": "hf-cache"}, "ttlSecondsAfterFinished": 600,
    "rollout.runtimeClassName": "gvisor", "trainer.peakTflopsPerGpu": 989.0, "queueName": "team-a",
    "priorityClassName": "high",
    "imagePullSecrets": ["regcred"], "cost": {"pricePerGpuHour": 2.5}, "eval": {"everySteps": 10},
    "suspend": True, "rollout.replicas": 3, "backoffLimit": 5, "failOnExitCodes": [3],
    "startupDeadlineSeconds": 600, "activeDeadlineSeconds": 3600,
}


def _at(path: str, value) -> dict:
    """A merge patch setting spec.`path` to `value`."""
    patch = value
    for key in reversed(path.split(".")):
        patch = {key: patch}
    return {"spec": patch}


def _patch(crd: Cluster, namespace: str, name: str, patch: dict):
    return crd.kubectl("patch", f"rr/{name}", "-n", namespace, "--type=merge", "-p", json.dumps(patch), check=False)


def test_each_field_edits_as_its_policy_says(crd: Cluster, namespace: str):
    """Immutable fields are refused at any time, naming the field; pod settings are refused while
    the run runs and accepted while it is suspended; the rest is accepted at any time."""
    m = minimal_manifest("edits")
    crd.apply(m, "-n", namespace)
    wrong = []
    for path in api.IMMUTABLE:
        proc = _patch(crd, namespace, "edits", _at(path, EDITS[path]))
        if proc.returncode == 0 or f"spec.{path}" not in proc.stderr or "immutable" not in proc.stderr:
            wrong.append((path, "immutable", proc.stderr.strip()[-300:]))
    for path in api.WHILE_SUSPENDED:
        proc = _patch(crd, namespace, "edits", _at(path, EDITS[path]))
        if proc.returncode == 0 or f"spec.{path}" not in proc.stderr or "only while the run is suspended" not in proc.stderr:
            wrong.append((path, "refused while running", proc.stderr.strip()[-300:]))
    stored = crd.get("rr/edits", "-n", namespace)
    assert stored["metadata"]["generation"] == 1  # nothing got through
    assert _patch(crd, namespace, "edits", {"spec": {"suspend": True}}).returncode == 0
    for path in (*api.LIVE, *api.WHILE_SUSPENDED):
        proc = _patch(crd, namespace, "edits", _at(path, EDITS[path]))
        if proc.returncode != 0:
            wrong.append((path, "accepted while suspended", proc.stderr.strip()[-300:]))
    for path in api.IMMUTABLE:  # a suspension changes nothing for these
        proc = _patch(crd, namespace, "edits", _at(path, EDITS[path]))
        if proc.returncode == 0:
            wrong.append((path, "immutable while suspended", proc.stdout))
    assert wrong == [], "\n".join(map(str, wrong))
    # and in the edit that suspends a running run (the pods go, the new value waits for the resume)
    crd.apply(minimal_manifest("both"), "-n", namespace)
    patch = _at("trainer.image", "example.com/zeroth:3")
    patch["spec"]["suspend"] = True
    assert _patch(crd, namespace, "both", patch).returncode == 0
    proc = _patch(crd, namespace, "both", {"spec": {"suspend": False, "trainer": {"image": "example.com/zeroth:4"}}})
    assert proc.returncode == 0, proc.stderr  # an edit with the resume: it acts on the resume
    stored = crd.get("rr/both", "-n", namespace)["spec"]
    assert stored["trainer"]["image"] == "example.com/zeroth:4" and stored["suspend"] is False
    live = _patch(crd, namespace, "both", {"spec": {"backoffLimit": 9, "rollout": {"replicas": 2}}})
    assert live.returncode == 0, live.stderr


def test_kubectl_explain_says_how_a_field_may_change(crd: Cluster):
    model = _squash(crd.kubectl("explain", "reasoningrun.spec.model").stdout)
    assert "Immutable once the run exists" in model
    image = _squash(crd.kubectl("explain", "reasoningrun.spec.trainer.image").stdout)
    assert "Can change only while the run is suspended" in image


def test_crd_file_is_the_installed_schema(crd: Cluster):
    installed = crd.get("crd/reasoningruns.zeroth.dev")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    generated = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert installed == generated
