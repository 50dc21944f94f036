"""StatusWriter against the real API server, as trainer rank 0 runs it: in-cluster config read from a
ServiceAccount token directory, and the run's Role of docs/operator.md (`get`, `patch` on its own
`reasoningruns/status`). It writes progress, and the same token can do nothing else.

An operator may be reconciling the same runs (another test's, watching all namespaces): the
identity here has a name of its own, and what the writer touched is read from managedFields."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.conftest import Cluster, minimal_manifest
from tests.speed import scaled
from zeroth import api
from zeroth.trainer.status import StatusWriter, api_client

pytestmark = pytest.mark.cluster


def _identity(name: str, run: str, namespace: str) -> list[dict]:
    """A ServiceAccount, Role and RoleBinding with the rights docs/operator.md gives run `run`'s."""
    meta = {"name": name, "namespace": namespace}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
         "rules": [{"apiGroups": [api.GROUP], "resources": [f"{api.PLURAL}/status"], "resourceNames": [run],
                    "verbs": ["get", "patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
    ]


def _token_dir(cluster: Cluster, sa: str, namespace: str, where: Path) -> Path:
    """A directory laid out like /var/run/secrets/kubernetes.io/serviceaccount."""
    kubeconfig = json.loads(cluster.kubeconfig.read_text())
    where.mkdir()
    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=10m").stdout.strip()
    (where / "token").write_text(token)
    shutil.copy(kubeconfig["clusters"][0]["cluster"]["certificate-authority"], where / "ca.crt")
    (where / "namespace").write_text(namespace)
    return where


def _pod_environment(cluster: Cluster, run: str, namespace: str) -> dict[str, str]:
    server = urlparse(json.loads(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"])
    return {"ZEROTH_RUN": run, "ZEROTH_NAMESPACE": namespace,
            "KUBERNETES_SERVICE_HOST": server.hostname, "KUBERNETES_SERVICE_PORT": str(server.port)}


def _until_accepted(writer: StatusWriter, **fields) -> None:
    """RBAC objects reach the API server's authorizer cache a moment after they are created."""
    deadline = time.monotonic() + scaled(20)
    while not writer.update(force=True, **fields):
        assert time.monotonic() < deadline, f"patch never accepted: {writer.last_error}"
        time.sleep(0.2)


def test_rank0_writes_its_runs_progress_and_nothing_else(crd: Cluster, namespace: str, tmp_path):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    crd.apply([minimal_manifest("writer"), minimal_manifest("other")], "-n", namespace)
    # the first write of a status fills in the schema's defaults, owned by that writer: let it be someone else
    crd.kubectl("patch", "rr/writer", "-n", namespace, "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": {"message": "created"}}))
    crd.apply(_identity("writer-rank0", "writer", namespace))
    env = _pod_environment(crd, "writer", namespace)
    token_dir = _token_dir(crd, "writer-rank0", namespace, tmp_path / "serviceaccount")

    writer = StatusWriter.from_environment(env, token_dir=token_dir)
    assert writer is not None
    _until_accepted(writer, step=7, maxSteps=200, rewardMean=0.4375, accuracy=0.25, tokensPerSecond=812.5,
                    lastCheckpointStep=5, weightsVersion=7)

    lines = crd.kubectl("get", "rr", "writer", "-n", namespace).stdout.splitlines()
    row = dict(zip(re.split(r"\s{2,}", lines[0].strip()), re.split(r"\s{2,}", lines[1].strip())))
    assert row["STEP"] == "7"
    assert float(row["REWARD"]) == pytest.approx(0.4375)
    stored = crd.get("rr/writer", "-n", namespace, "--show-managed-fields")
    assert stored["status"]["progress"] == {"step": 7, "maxSteps": 200, "rewardMean": 0.4375, "accuracy": 0.25,
                                            "tokensPerSecond": 812.5, "lastCheckpointStep": 5, "weightsVersion": 7}
    # the writer owns status.progress and nothing else of the run
    mine = [m for m in stored["metadata"]["managedFields"] if m["manager"] == "zeroth-trainer"]
    assert [(m["operation"], m.get("subresource")) for m in mine] == [("Update", "status")]
    assert list(mine[0]["fieldsV1"]) == ["f:status"] and list(mine[0]["fieldsV1"]["f:status"]) == ["f:progress"]

    # a later patch merges into progress
    assert writer.update(force=True, step=8, weightsVersion=8)
    assert crd.get("rr/writer", "-n", namespace)["status"]["progress"]["step"] == 8

    # another run's status: refused, and the writer only logs it
    other = StatusWriter("other", namespace, writer.api)
    assert not other.update(force=True, step=99)
    assert other.last_error.status == 403
    untouched = crd.get("rr/other", "-n", namespace, "--show-managed-fields")
    assert untouched.get("status", {}).get("progress", {}).get("step") != 99
    assert "zeroth-trainer" not in [m["manager"] for m in untouched["metadata"]["managedFields"]]

    # nothing beyond its own status: not the run itself, not pods
    kube = api_client(token_dir, env)
    custom = client.CustomObjectsApi(kube)
    assert custom.get_namespaced_custom_object_status(api.GROUP, api.VERSION, namespace, api.PLURAL, "writer")["status"][
        "progress"]["step"] == 8
    for call in (
        lambda: client.CoreV1Api(kube).list_namespaced_pod(namespace),
        lambda: custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, "writer"),
        lambda: custom.patch_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, "writer",
                                                      {"spec": {"suspend": True}}),
    ):
        with pytest.raises(ApiException) as refused:
            call()
        assert refused.value.status == 403
