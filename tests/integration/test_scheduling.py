"""The real scheduler places GPU pods only on GPU kwok nodes, honouring selectors and taints."""

from __future__ import annotations

import time

import pytest

from tests.conftest import Cluster
from tests.speed import scaled

pytestmark = pytest.mark.cluster

GPU_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def pod(name: str, gpus: int = 0, selector: dict | None = None, tolerations: list | None = None) -> dict:
    """A pod that passes Pod Security "restricted"."""
    resources = {"requests": {"cpu": "100m"}}
    if gpus:
        resources["limits"] = {"nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "main",
                "image": "zeroth:test",
                "resources": resources,
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }],
            "nodeSelector": selector or {},
            "tolerations": tolerations or [],
        },
    }


def wait_pod(cluster: Cluster, ns: str, name: str, check, timeout: float = 60) -> dict:
    deadline = time.monotonic() + scaled(timeout)  # `timeout`: reference seconds
    while True:
        obj = cluster.get(f"pod/{name}", "-n", ns)
        if check(obj):
            return obj
        if time.monotonic() > deadline:
            raise AssertionError(f"pod {name} never got there: {obj.get('status')}")
        time.sleep(0.2)


def gpu_nodes(cluster: Cluster) -> set[str]:
    nodes = cluster.get("nodes", "-l", "nvidia.com/gpu.present=true")["items"]
    return {n["metadata"]["name"] for n in nodes}


def test_gpu_pods_land_only_on_gpu_nodes_and_run(cluster: Cluster, namespace: str):
    gpus = gpu_nodes(cluster)
    assert len(gpus) >= 4
    names = [f"gpu-worker-{i}" for i in range(6)]
    cluster.apply([pod(n, gpus=4, selector=GPU_SELECTOR, tolerations=[GPU_TOLERATION]) for n in names], "-n", namespace)
    for name in names:
        obj = wait_pod(cluster, namespace, name, lambda o: o["status"].get("phase") == "Running")
        assert obj["spec"]["nodeName"] in gpus
    # 8 GPUs a node, 4 a pod: no node holds more than two of them
    placed = [cluster.get(f"pod/{n}", "-n", namespace)["spec"]["nodeName"] for n in names]
    assert max(placed.count(n) for n in set(placed)) <= 2


def test_cpu_pods_avoid_tainted_gpu_nodes(cluster: Cluster, namespace: str):
    cluster.apply([pod(f"cpu-worker-{i}") for i in range(4)], "-n", namespace)
    for i in range(4):
        obj = wait_pod(cluster, namespace, f"cpu-worker-{i}", lambda o: o["spec"].get("nodeName"))
        assert obj["spec"]["nodeName"] not in gpu_nodes(cluster)


def test_gpu_pod_without_toleration_stays_pending(cluster: Cluster, namespace: str):
    cluster.apply(pod("untolerated", gpus=1, selector=GPU_SELECTOR), "-n", namespace)
    obj = wait_pod(cluster, namespace, "untolerated",
                   lambda o: any(c["type"] == "PodScheduled" and c["status"] == "False" for c in o["status"].get("conditions", [])))
    assert "nodeName" not in obj["spec"]
    reason = next(c for c in obj["status"]["conditions"] if c["type"] == "PodScheduled")
    assert reason["reason"] == "Unschedulable" and "taint" in reason["message"]


def test_gpu_request_beyond_any_node_stays_pending(cluster: Cluster, namespace: str):
    cluster.apply(pod("too-big", gpus=9, selector=GPU_SELECTOR, tolerations=[GPU_TOLERATION]), "-n", namespace)
    obj = wait_pod(cluster, namespace, "too-big",
                   lambda o: any(c["type"] == "PodScheduled" and c["status"] == "False" for c in o["status"].get("conditions", [])))
    assert "Insufficient nvidia.com/gpu" in next(c for c in obj["status"]["conditions"] if c["type"] == "PodScheduled")["message"]


def test_restricted_namespace_rejects_a_privileged_pod(cluster: Cluster, namespace: str):
    bad = pod("root")
    bad["spec"].pop("securityContext")
    proc = cluster.apply(bad, "-n", namespace, check=False)
    assert proc.returncode != 0 and 'violates PodSecurity "restricted' in proc.stderr
