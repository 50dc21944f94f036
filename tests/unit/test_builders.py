"""The operator's builders make what docs/operator.md promises: objects the API server accepts, pods
that pass Pod Security "restricted", the contract's names, labels, environment and commands.

Expected values are written out here, not computed with the builders' own helpers.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any

import kubernetes_validate
import pytest

from tests.conftest import EXAMPLES, minimal_manifest
from zeroth import api, validation
from zeroth.operator import builders

UID = "0b7c6a52-2f3e-4d8e-9a51-7d1e2c3b4a59"
TOKEN = "s3cret-token"
K8S = "1.36.0"
RUN_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "zeroth.dev/run")


def _merge(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _manifest(name: str = "minimal", namespace: str | None = None, **spec: Any) -> dict:
    m = _merge(minimal_manifest(name), {"spec": spec})
    if namespace:
        m["metadata"]["namespace"] = namespace
    return m


CPU = {"replicas": 2, "gpusPerReplica": 0}
CPU_ROLLOUT = {"replicas": 3, "gpusPerReplica": 0, "engine": "hf"}
AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-a"]}]}]}}}
DEDICATED = {"key": "dedicated", "operator": "Equal", "value": "rl", "effect": "NoExecute", "tolerationSeconds": 60}

VARIANTS = {
    "cpu": _manifest("cpu-run", trainer=CPU, rollout=CPU_ROLLOUT),
    "gpu": _manifest("gpu-run", "team-a", trainer={"replicas": 2, "gpusPerReplica": 1},
                     rollout={"replicas": 2, "gpusPerReplica": 2, "tensorParallelSize": 2}),
    "multi-gpu": _manifest("big", "team-b", trainer={"replicas": 3, "gpusPerReplica": 4},
                           rollout={"replicas": 1, "gpusPerReplica": 1}),
    "engines": _manifest("engines", rollout={"replicas": 1, "gpusPerReplica": 8, "tensorParallelSize": 2}),
    "queued": _manifest("queued", trainer={"replicas": 2, "gpusPerReplica": 1}, rollout={"replicas": 3},
                        queueName="gpu-queue", priorityClassName="training-high"),
    "claims": _manifest("claims", checkpoint={"volumeClaimName": "ckpt-pvc"},
                        export={"volumeClaimName": "export-pvc", "path": "/data/exports"}),
    "shared-path": _manifest("shared", checkpoint={"path": "/data"},
                             export={"path": "/data", "volumeClaimName": "data-pvc"}),
    "same-claim": _manifest("same-claim", checkpoint={"volumeClaimName": "data-pvc"},
                            export={"volumeClaimName": "data-pvc"}),
    "placement": _manifest(
        "placed",
        trainer={"gpusPerReplica": 2, "nodeSelector": {"pool": "a100"}, "tolerations": [DEDICATED],
                 "affinity": AFFINITY, "resources": {"requests": {"cpu": 4, "memory": "32Gi"}, "limits": {"memory": "48Gi"}},
                 "image": "registry.example/zeroth:dev", "imagePullPolicy": "Always"},
        rollout={"gpusPerReplica": 1, "nodeSelector": {"pool": "l4"}, "tolerations": [DEDICATED],
                 "runtimeClassName": "gvisor", "resources": {"requests": {"cpu": "2500m"}},
                 "image": "registry.example/zeroth:vllm"},
    ),
    "pod-options": _manifest(
        "options", imagePullSecrets=["regcred", "mirror"],
        trainer={"env": [{"name": "NCCL_DEBUG", "value": "INFO"},
                         {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}],
                 "envFrom": [{"configMapRef": {"name": "nccl"}, "prefix": "X_"}],
                 "labels": {"team": "rl", "example.com/cost-centre": "42"}, "annotations": {"example.com/note": "a b c"},
                 "terminationGracePeriodSeconds": 900},
        rollout={"env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}],
                 "envFrom": [{"secretRef": {"name": "s3", "optional": True}}], "labels": {"team": "rl-rollout"},
                 "annotations": {"sidecar.istio.io/inject": "false"}, "terminationGracePeriodSeconds": 60},
    ),
    "volumes": _manifest(
        "vols", modelCache={"volumeClaimName": "hf-cache"},
        trainer={"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}},
                             {"name": "ca", "configMap": {"name": "ca-bundle", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                             {"name": "scratch", "emptyDir": {"sizeLimit": "50Gi"}}],
                 "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True},
                                  {"name": "ca", "mountPath": "/etc/ssl/extra", "subPath": "certs"},
                                  {"name": "scratch", "mountPath": "/scratch"}]},
        rollout={"volumes": [{"name": "keys", "secret": {"secretName": "api-keys", "defaultMode": 0o400}},
                             {"name": "fast", "ephemeral": {"volumeClaimTemplate": {"spec": {
                                 "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}}}},
                             {"name": "driver", "csi": {"driver": "secrets-store.csi.k8s.io", "readOnly": True}}],
                 "volumeMounts": [{"name": "keys", "mountPath": "/keys", "readOnly": True},
                                  {"name": "fast", "mountPath": "/fast"}, {"name": "driver", "mountPath": "/mnt/csi"}]},
    ),
}
CASES = {**{p.stem: validation.load(p) for p in EXAMPLES}, **{k: validation.validate(v) for k, v in VARIANTS.items()}}


def _children(run: api.ReasoningRun, attempt: int = 0) -> list[dict]:
    return builders.children(run, UID, token=TOKEN, attempt=attempt, pod_monitor=True)


def _pods(run: api.ReasoningRun) -> list[dict]:
    return [o for o in _children(run) if o["kind"] == "Pod"]


def _by_name(objects: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def _env(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


cases = pytest.mark.parametrize("case", list(CASES))


# ------------------------------------------------------------------------------ every object


@cases
def test_every_object_validates_against_the_kubernetes_schemas(case):
    for obj in _children(CASES[case]):
        if obj["kind"] != "PodMonitor":
            kubernetes_validate.validate(obj, K8S, strict=True)
        json.dumps(obj)  # plain data, nothing a client would have to convert


@cases
def test_pod_monitor_shape(case):
    run = CASES[case]
    name = run.metadata.name
    (monitor,) = [o for o in _children(run) if o["kind"] == "PodMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert monitor["spec"]["selector"] == {"matchLabels": {"zeroth.dev/run": name}}
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert {e["path"] for e in endpoints} == {"/metrics"}
    # every pod's metrics ports are scraped, and no endpoint names a port no pod has
    ports = {p["name"]: p["containerPort"] for pod in _pods(run) for c in pod["spec"]["containers"]
             for p in c.get("ports", []) if p["name"].startswith("metrics")}
    assert {e["port"] for e in endpoints} == set(ports)
    # a rollout pod: one port per rollout actor (engine), the range its actors are told to bind in
    rollout = run.spec.rollout
    engines = rollout.gpus_per_replica // rollout.tensor_parallel_size if rollout.gpus_per_replica else 1
    for pod in _pods(run):
        if pod["metadata"]["labels"]["zeroth.dev/role"] != "rollout":
            continue
        (c,) = pod["spec"]["containers"]
        mine = sorted(p["containerPort"] for p in c["ports"] if p["name"].startswith("metrics"))
        assert len(mine) == engines and mine == list(range(mine[0], mine[0] + engines))
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["ZEROTH_METRICS_PORTS"] == f"{mine[0]}-{mine[-1]}" and env["ZEROTH_METRICS_ADDR"] == "0.0.0.0"


def test_a_runs_pod_monitor_carries_the_labels_the_clusters_prometheus_selects_by():
    from zeroth.operator import handlers

    run = CASES["countdown-tiny"]
    chart = handlers.pod_monitor_labels('{"release": "kube-prometheus-stack", "zeroth.dev/run": "other"}')
    objects = builders.support_objects(run, UID, token=TOKEN, pod_monitor=True, pod_monitor_labels=chart)
    (monitor,) = [o for o in objects if o["kind"] == "PodMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # the run's own labels stay: the operator finds its children by them
    assert monitor["metadata"]["labels"]["zeroth.dev/run"] == run.metadata.name
    (plain,) = [o for o in _children(run) if o["kind"] == "PodMonitor"]
    assert "release" not in plain["metadata"]["labels"]
    assert handlers.pod_monitor_labels(None) == handlers.pod_monitor_labels("") == {}
    with pytest.raises(SystemExit, match="ZEROTH_POD_MONITOR_LABELS must be a JSON object.*metrics.podMonitor.labels"):
        handlers.pod_monitor_labels('["release"]')


@cases
def test_every_object_has_the_run_labels_and_one_controller_owner(case):
    run = CASES[case]
    name, ns = run.metadata.name, run.metadata.namespace
    for obj in _children(run):
        meta = obj["metadata"]
        assert meta["namespace"] == ns
        assert {k: meta["labels"][k] for k in RUN_LABELS} == {
            "app.kubernetes.io/name": "zeroth", "app.kubernetes.io/instance": name,
            "app.kubernetes.io/managed-by": "zeroth-operator", "zeroth.dev/run": name}, obj["kind"]
        assert meta["ownerReferences"] == [{"apiVersion": "zeroth.dev/v1alpha1", "kind": "ReasoningRun", "name": name,
                                            "uid": UID, "controller": True, "blockOwnerDeletion": True}]


def test_children_of_the_tiny_example():
    objects = _children(CASES["countdown-tiny"], attempt=3)
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("ConfigMap", "countdown-tiny-config"), ("Secret", "countdown-tiny-ray-token-0b7c6a52"),
        ("ServiceAccount", "countdown-tiny"), ("Role", "countdown-tiny"), ("RoleBinding", "countdown-tiny"),
        ("Service", "countdown-tiny-trainer"), ("Service", "countdown-tiny-ray-head"),
        ("NetworkPolicy", "countdown-tiny"), ("PodMonitor", "countdown-tiny"),
        ("Pod", "countdown-tiny-ray-head"), ("Pod", "countdown-tiny-rollout-0"), ("Pod", "countdown-tiny-rollout-1"),
        ("Pod", "countdown-tiny-trainer-0-3"), ("Pod", "countdown-tiny-trainer-1-3"),
    ]
    without = builders.children(CASES["countdown-tiny"], UID, token=TOKEN, attempt=3, pod_monitor=False)
    assert "PodMonitor" not in [o["kind"] for o in without] and len(without) == len(objects) - 1


def test_pod_labels_per_role():
    pods = _by_name(_children(CASES["countdown-tiny"], attempt=3))
    extra = {name: {k: v for k, v in pod["metadata"]["labels"].items() if k not in RUN_LABELS}
             for (kind, name), pod in pods.items() if kind == "Pod"}
    assert extra == {
        "countdown-tiny-ray-head": {"zeroth.dev/role": "ray-head"},
        "countdown-tiny-rollout-0": {"zeroth.dev/role": "rollout", "zeroth.dev/index": "0"},
        "countdown-tiny-rollout-1": {"zeroth.dev/role": "rollout", "zeroth.dev/index": "1"},
        "countdown-tiny-trainer-0-3": {"zeroth.dev/role": "trainer", "zeroth.dev/rank": "0", "zeroth.dev/attempt": "3"},
        "countdown-tiny-trainer-1-3": {"zeroth.dev/role": "trainer", "zeroth.dev/rank": "1", "zeroth.dev/attempt": "3"},
    }
    assert builders.rollout_selector("countdown-tiny") == "zeroth.dev/run=countdown-tiny,zeroth.dev/role=rollout"


# ---------------------------------------------------------------------------- Pod Security


ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


def _restricted_violations(pod: dict) -> list[str]:
    """pod-security-admission's baseline and restricted checks that a pod spec can fail."""
    spec = pod["spec"]
    psc = spec.get("securityContext", {})
    out = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            out.append(flag)
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            out.append(f"volume {volume['name']}: {kinds}")
    if psc.get("sysctls"):
        out.append("sysctls")
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c.get("securityContext", {})
        where = f"container {c['name']}"
        if sc.get("privileged"):
            out.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}: allowPrivilegeEscalation")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            out.append(f"{where}: capabilities.drop")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{where}: capabilities.add")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            out.append(f"{where}: runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.append(f"{where}: runAsUser 0")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{where}: seccompProfile")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"{where}: hostPort")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{where}: procMount")
    return out


def test_the_restricted_check_can_fail():
    pod = copy.deepcopy(_pods(CASES["countdown-tiny"])[0])
    pod["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    pod["spec"]["containers"][0]["securityContext"] = {"privileged": True, "runAsUser": 0}
    pod["spec"]["containers"][0]["ports"] = [{"containerPort": 6379, "hostPort": 6379}]
    pod["spec"]["hostNetwork"] = True
    del pod["spec"]["securityContext"]["seccompProfile"]
    del pod["spec"]["securityContext"]["runAsNonRoot"]
    where = "container ray-head"
    assert _restricted_violations(pod) == [
        "hostNetwork", "volume host: {'hostPath'}", f"{where}: privileged", f"{where}: allowPrivilegeEscalation",
        f"{where}: capabilities.drop", f"{where}: runAsNonRoot", f"{where}: runAsUser 0", f"{where}: seccompProfile",
        f"{where}: hostPort",
    ]


@cases
def test_every_pod_is_restricted(case):
    for pod in _pods(CASES[case]):
        spec = pod["spec"]
        assert _restricted_violations(pod) == [], pod["metadata"]["name"]
        assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                                           "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in spec["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
            assert mounts["/tmp"]["emptyDir"] == {}
            assert mounts["/dev/shm"]["emptyDir"] == {"medium": "Memory"}
            assert _env(c)["HOME"] == "/tmp"
            assert _env(c)["RAY_AUTH_MODE"] == "token"
            assert _env(c)["RAY_AUTH_TOKEN"] == {"secretKeyRef": {"name": f"{CASES[case].metadata.name}-ray-token-0b7c6a52", "key": "token"}}


@cases
def test_only_trainer_rank_zero_mounts_an_api_token(case):
    run = CASES[case]
    tokens = {p["metadata"]["name"]: p["spec"]["automountServiceAccountToken"] for p in _pods(run)}
    assert tokens.pop(f"{run.metadata.name}-trainer-0") is True
    assert set(tokens.values()) == {False}
    assert all(p["spec"]["serviceAccountName"] == run.metadata.name for p in _pods(run))
    (sa,) = [o for o in _children(run) if o["kind"] == "ServiceAccount"]
    assert sa["automountServiceAccountToken"] is False


# ---------------------------------------------------------------------------- the trainer gang


def _trainer_env(run: api.ReasoningRun, rank: int) -> dict:
    env = _env(builders.trainer_pod(run, UID, rank, attempt=0)["spec"]["containers"][0])
    return {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "HOME")}


def test_trainer_env_one_process_per_pod():
    run = CASES["countdown-tiny"]
    common = {"MASTER_ADDR": "countdown-tiny-trainer-0.countdown-tiny-trainer.default.svc", "MASTER_PORT": "29500",
              "WORLD_SIZE": "2", "LOCAL_RANK": "0", "NNODES": "2", "NPROC_PER_NODE": "1",
              "RAY_ADDRESS": "countdown-tiny-ray-head.default.svc:6379",
              "ZEROTH_RUN": "countdown-tiny", "ZEROTH_NAMESPACE": "default"}
    assert _trainer_env(run, 0) == {**common, "RANK": "0", "NODE_RANK": "0"}
    assert _trainer_env(run, 1) == {**common, "RANK": "1", "NODE_RANK": "1"}


def test_trainer_env_several_gpus_per_pod():
    run = CASES["multi-gpu"]
    env = _trainer_env(run, 2)
    assert env == {"MASTER_ADDR": "big-trainer-0.big-trainer.team-b.svc", "MASTER_PORT": "29500", "WORLD_SIZE": "12",
                   "RANK": "8", "LOCAL_RANK": "0", "NODE_RANK": "2", "NNODES": "3", "NPROC_PER_NODE": "4",
                   "RAY_ADDRESS": "big-ray-head.team-b.svc:6379", "ZEROTH_RUN": "big", "ZEROTH_NAMESPACE": "team-b"}


def test_trainer_commands():
    tail = ["-m", "zeroth.trainer.main", "--config", "/etc/zeroth/run.json", "--run-dir", f"/checkpoints/big/{UID}",
            "--export-dir", f"/exports/big/{UID}", "--metrics-addr", "0.0.0.0", "--metrics-port", "9400"]
    big = builders.trainer_pod(CASES["multi-gpu"], UID, 1, attempt=0)["spec"]["containers"][0]["command"]
    assert big == ["torchrun", "--nnodes", "3", "--nproc-per-node", "4", "--node-rank", "1",
                   "--master-addr", "big-trainer-0.big-trainer.team-b.svc", "--master-port", "29500", *tail]
    tiny = builders.trainer_pod(CASES["countdown-tiny"], UID, 1, attempt=0)["spec"]["containers"][0]["command"]
    assert tiny == ["python", "-m", "zeroth.trainer.main", "--config", "/etc/zeroth/run.json",
                    "--run-dir", f"/checkpoints/countdown-tiny/{UID}", "--export-dir", f"/exports/countdown-tiny/{UID}",
                    "--metrics-addr", "0.0.0.0", "--metrics-port", "9400"]
    shared = builders.trainer_pod(CASES["shared-path"], UID, 0, attempt=0)["spec"]["containers"][0]["command"]
    assert shared[shared.index("--run-dir") + 1] == f"/data/shared/{UID}" == shared[shared.index("--export-dir") + 1]


def test_trainer_pod_identity():
    pod = builders.trainer_pod(CASES["gpu"], UID, 1, attempt=2)
    spec, (c,) = pod["spec"], pod["spec"]["containers"]
    # a later attempt's pod is named after its attempt; its host name (DNS through the headless
    # Service) is the rank's, whatever the attempt
    assert (pod["metadata"]["name"], spec["hostname"], spec["subdomain"]) == ("gpu-run-trainer-1-2", "gpu-run-trainer-1", "gpu-run-trainer")
    assert builders.trainer_pod(CASES["gpu"], UID, 1, attempt=0)["metadata"]["name"] == "gpu-run-trainer-1"
    assert spec["restartPolicy"] == "Never"
    assert c["ports"] == [{"name": "rendezvous", "containerPort": 29500, "protocol": "TCP"},
                          {"name": "metrics", "containerPort": 9400, "protocol": "TCP"}]
    assert (c["image"], c["imagePullPolicy"]) == ("ghcr.io/zeroth-dev/zeroth:0.1.0-cuda", "IfNotPresent")
    with pytest.raises(ValueError):
        builders.trainer_pod(CASES["gpu"], UID, 2, attempt=0)


def test_one_default_image_a_run():
    """Unset images default to this version's image, one flavour for every pod of the run: CUDA
    when any pod has GPUs (the CPU-only Ray head included), else CPU; an image that is set wins."""
    def images(run):
        return [p["spec"]["containers"][0]["image"] for p in
                (builders.trainer_pod(run, UID, 0, 0), builders.ray_head_pod(run, UID), builders.rollout_pod(run, UID, 0))]

    assert images(CASES["cpu"]) == ["ghcr.io/zeroth-dev/zeroth:0.1.0"] * 3
    assert images(CASES["gpu"]) == ["ghcr.io/zeroth-dev/zeroth:0.1.0-cuda"] * 3
    half = validation.validate(_manifest("half", trainer={**CPU, "gpusPerReplica": 1}, rollout=CPU_ROLLOUT))
    assert images(half) == ["ghcr.io/zeroth-dev/zeroth:0.1.0-cuda"] * 3
    mine = validation.validate(_manifest("mine", trainer={**CPU, "image": "me/t:1"}, rollout={**CPU_ROLLOUT, "image": "me/r:2"}))
    assert images(mine) == ["me/t:1", "me/r:2", "me/r:2"]


def _mounts(pod: dict) -> dict[str, dict]:
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    out = {}
    for m in pod["spec"]["containers"][0]["volumeMounts"]:
        source = {k: v for k, v in volumes[m["name"]].items() if k != "name"}
        out[m["mountPath"]] = {**source, **({"readOnly": True} if m.get("readOnly") else {})}
    return out


@pytest.mark.parametrize("case, data", [
    ("countdown-tiny", {"/checkpoints": {"emptyDir": {}}, "/exports": {"emptyDir": {}}}),
    ("claims", {"/checkpoints": {"persistentVolumeClaim": {"claimName": "ckpt-pvc"}},
                "/data/exports": {"persistentVolumeClaim": {"claimName": "export-pvc"}}}),
    ("shared-path", {"/data": {"persistentVolumeClaim": {"claimName": "data-pvc"}}}),
    ("same-claim", {"/checkpoints": {"persistentVolumeClaim": {"claimName": "data-pvc"}},
                    "/exports": {"persistentVolumeClaim": {"claimName": "data-pvc"}}}),
    ("volumes", {"/checkpoints": {"emptyDir": {}}, "/exports": {"emptyDir": {}},
                 "/cache/models": {"persistentVolumeClaim": {"claimName": "hf-cache"}},
                 "/data": {"persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}, "readOnly": True},
                 "/etc/ssl/extra": {"configMap": {"name": "ca-bundle", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                 "/scratch": {"emptyDir": {"sizeLimit": "50Gi"}}}),
])
def test_trainer_volumes(case, data):
    run = CASES[case]
    pod = builders.trainer_pod(run, UID, 0, attempt=0)
    assert _mounts(pod) == {"/tmp": {"emptyDir": {}}, "/dev/shm": {"emptyDir": {"medium": "Memory"}},
                            "/etc/zeroth": {"configMap": {"name": f"{run.metadata.name}-config"}, "readOnly": True}, **data}
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert len(claims) == len(set(claims)), "a claim is one volume, however many mounts"


# ------------------------------------------------------------------------------------ Ray pods


def test_ray_head_pod():
    run = CASES["placement"]
    pod = builders.ray_head_pod(run, UID)
    spec, (c,) = pod["spec"], pod["spec"]["containers"]
    assert c["command"] == ["ray", "start", "--head", "--port=6379", "--num-cpus=0", "--num-gpus=0",
                            "--include-dashboard=false", "--disable-usage-stats", "--block"]
    assert c["image"] == "registry.example/zeroth:vllm"
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}}
    assert c["ports"] == [{"name": "gcs", "containerPort": 6379, "protocol": "TCP"}]
    assert spec["tolerations"] == [DEDICATED]
    assert spec["restartPolicy"] == "Always"
    assert "nodeSelector" not in spec and "runtimeClassName" not in spec


@pytest.mark.parametrize("case, address, cpus, gpus, slots", [
    ("countdown-tiny", "countdown-tiny-ray-head.default.svc:6379", "1", "0", 1),
    ("gpu", "gpu-run-ray-head.team-a.svc:6379", "1", "2", 1),  # one engine over both GPUs (TP 2)
    ("engines", "engines-ray-head.default.svc:6379", "1", "8", 4),  # four engines of TP 2
    ("placement", "placed-ray-head.default.svc:6379", "3", "1", 1),
])
def test_rollout_command(case, address, cpus, gpus, slots):
    """One rollout slot, so one rollout actor, per engine: gpusPerReplica / tensorParallelSize."""
    (c,) = builders.rollout_pod(CASES[case], UID, 0)["spec"]["containers"]
    assert c["command"] == ["ray", "start", f"--address={address}", f"--num-cpus={cpus}", f"--num-gpus={gpus}",
                            '--resources={"zeroth-rollout": %d}' % slots, "--disable-usage-stats", "--block"]


@pytest.mark.parametrize("quantity, cpus", [
    (2, 2), ("2", 2), ("500m", 1), ("2500m", 3), ("1.5", 2), ("0.1", 1), ("4000m", 4), ("1k", 1000), ("100000u", 1),
])
def test_cpu_count(quantity, cpus):
    assert builders.cpu_count(quantity) == cpus


@pytest.mark.parametrize("quantity", ["", "two", "2x", "1.2.3", "m"])
def test_cpu_count_rejects_non_quantities(quantity):
    with pytest.raises(ValueError):
        builders.cpu_count(quantity)


def test_rollout_pod():
    pod = builders.rollout_pod(CASES["placement"], UID, 1)
    spec, (c,) = pod["spec"], pod["spec"]["containers"]
    assert pod["metadata"]["name"] == "placed-rollout-1"
    assert spec["runtimeClassName"] == "gvisor" and spec["restartPolicy"] == "Always"
    assert c["resources"] == {"requests": {"cpu": "2500m", "nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}
    assert spec["nodeSelector"] == {"pool": "l4", "nvidia.com/gpu.present": "true"}


def test_a_rollout_pod_waits_for_the_ray_head_before_ray_start():
    """`ray start` gives up (exit 1, a restart) on a head still starting; the init container waits."""
    pod = builders.rollout_pod(CASES["gpu"], UID, 0)
    (init,) = pod["spec"]["initContainers"]
    (c,) = pod["spec"]["containers"]
    assert init["command"][:2] == ["sh", "-c"]
    assert "until ray health-check --address=gpu-run-ray-head.team-a.svc:6379 " in init["command"][2]
    assert (init["image"], init["imagePullPolicy"]) == (c["image"], c["imagePullPolicy"])
    assert init["env"] == [e for e in c["env"] if not e["name"].startswith("ZEROTH_METRICS_")]  # the head asks for the run's token
    assert "nvidia.com/gpu" not in json.dumps(init["resources"])


# ----------------------------------------------------------------------------------- placement


def test_gpu_placement_is_merged_with_the_spec():
    pod = builders.trainer_pod(CASES["placement"], UID, 0, attempt=0)
    spec, (c,) = pod["spec"], pod["spec"]["containers"]
    assert c["resources"] == {"requests": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "2"},
                              "limits": {"memory": "48Gi", "nvidia.com/gpu": "2"}}
    assert spec["nodeSelector"] == {"pool": "a100", "nvidia.com/gpu.present": "true"}
    assert spec["tolerations"] == [DEDICATED, {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                   *NODE_LOST]
    assert spec["affinity"] == AFFINITY
    assert (c["image"], c["imagePullPolicy"]) == ("registry.example/zeroth:dev", "Always")


# a trainer pod leaves a node that stopped answering after 30 s, not Kubernetes' 300
NODE_LOST = [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
             {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]


def test_a_gpu_toleration_in_the_spec_is_not_doubled():
    for pod in _pods(CASES["arc-agi-1"]):
        role = pod["metadata"]["labels"]["zeroth.dev/role"]
        if role != "ray-head":
            assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                                  *(NODE_LOST if role == "trainer" else [])]


def test_cpu_pods_ask_for_no_gpu():
    for pod in _pods(CASES["cpu"]):
        text = json.dumps(pod)
        assert "nvidia.com" not in text, pod["metadata"]["name"]
        trainer = pod["metadata"]["labels"]["zeroth.dev/role"] == "trainer"
        assert "nodeSelector" not in pod["spec"] and pod["spec"].get("tolerations", []) == (NODE_LOST if trainer else [])


def test_a_role_that_tolerates_every_taint_keeps_doing_so_on_a_lost_node():
    run = validation.validate(_manifest("dedicated", trainer={"gpusPerReplica": 0, "tolerations": [{"operator": "Exists"}]}))
    assert builders.trainer_pod(run, UID, 0, attempt=0)["spec"]["tolerations"] == [{"operator": "Exists"}]
    only_no_schedule = validation.validate(_manifest("pool", trainer={"gpusPerReplica": 0, "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}]}))
    assert builders.trainer_pod(only_no_schedule, UID, 0, attempt=0)["spec"]["tolerations"] == [
        {"operator": "Exists", "effect": "NoSchedule"}, *NODE_LOST]


def test_a_roles_own_toleration_of_a_lost_node_wins():
    run = validation.validate(_manifest("patient", trainer={"tolerations": [
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]}))
    tolerations = builders.trainer_pod(run, UID, 0, attempt=0)["spec"]["tolerations"]
    assert [t for t in tolerations if t.get("effect") == "NoExecute"] == [
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5},
        NODE_LOST[0]]


# ------------------------------------------------------------------------------- Kueue, priority


def test_kueue_group_and_priority():
    pods = _pods(CASES["queued"])
    assert len(pods) == 6
    for pod in pods:
        meta = pod["metadata"]
        assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
        assert meta["labels"]["kueue.x-k8s.io/pod-group-name"] == "queued-0"
        assert meta["annotations"] == {"kueue.x-k8s.io/pod-group-total-count": "6"}
        assert pod["spec"]["priorityClassName"] == "training-high"
    # a resumed run's pods are a new group (the suspension ended the first one)
    run = CASES["queued"]
    resumed = [builders.ray_head_pod(run, UID, resumes=2), builders.rollout_pod(run, UID, 0, resumes=2),
               builders.trainer_pod(run, UID, 0, attempt=1, resumes=2)]
    assert {p["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] for p in resumed} == {"queued-2"}
    assert builders.end_kueue_group() == {"metadata": {"annotations": {"kueue.x-k8s.io/retriable-in-group": "false"}}}


def test_math_example_is_one_kueue_group():
    pods = _pods(CASES["math"])
    assert {p["metadata"]["annotations"]["kueue.x-k8s.io/pod-group-total-count"] for p in pods} == {"4"}


def test_no_queue_no_kueue_labels():
    for pod in _pods(CASES["gpu"]):
        assert not any(k.startswith("kueue.x-k8s.io/") for k in pod["metadata"]["labels"])
        assert "annotations" not in pod["metadata"] and "priorityClassName" not in pod["spec"]


# ----------------------------------------------------------------------- config, token, access


@cases
def test_run_json_round_trips(case):
    run = CASES[case]
    cm = builders.config_map(run, UID)
    assert cm["immutable"] is True and list(cm["data"]) == ["run.json"]
    doc = json.loads(cm["data"]["run.json"])
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    assert doc["metadata"] == {"name": run.metadata.name, "namespace": run.metadata.namespace}
    again = validation.validate(doc)
    assert again.spec == run.spec
    assert again.spec.model_dump() == run.spec.model_dump()


def test_run_json_keeps_defaults_and_drops_live_metadata():
    live = _merge(minimal_manifest("live"), {
        "metadata": {"namespace": "ns1", "uid": UID, "resourceVersion": "42", "generation": 3},
        "status": {"phase": "Running"},
    })
    doc = json.loads(builders.config_map(validation.validate(live), UID)["data"]["run.json"])
    assert doc["metadata"] == {"name": "live", "namespace": "ns1"}
    assert doc["spec"]["algorithm"]["groupSize"] == 8 and doc["spec"]["checkpoint"]["path"] == "/checkpoints"


def test_token_secret():
    secret = builders.ray_token_secret(CASES["countdown-tiny"], UID, TOKEN)
    assert secret["metadata"]["name"] == "countdown-tiny-ray-token-0b7c6a52"
    assert base64.b64decode(secret["data"]["token"]).decode() == TOKEN


def test_role_grants_only_its_own_status():
    run = CASES["gpu"]
    assert builders.role(run, UID)["rules"] == [{"apiGroups": ["zeroth.dev"], "resources": ["reasoningruns/status"],
                                                 "resourceNames": ["gpu-run"], "verbs": ["get", "patch"]}]
    binding = builders.role_binding(run, UID)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gpu-run"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "gpu-run", "namespace": "team-a"}]


def test_services_and_network_policy():
    run = CASES["gpu"]
    trainer = builders.trainer_service(run, UID)["spec"]
    assert trainer["clusterIP"] == "None" and trainer["publishNotReadyAddresses"] is True
    assert trainer["selector"] == {"zeroth.dev/run": "gpu-run", "zeroth.dev/role": "trainer"}
    head = builders.ray_head_service(run, UID)
    assert head["metadata"]["name"] == "gpu-run-ray-head"
    assert head["spec"]["selector"] == {"zeroth.dev/run": "gpu-run", "zeroth.dev/role": "ray-head"}
    assert head["spec"]["ports"] == [{"name": "gcs", "port": 6379, "targetPort": 6379, "protocol": "TCP"}]
    own = {"matchLabels": {"zeroth.dev/run": "gpu-run"}}
    assert builders.network_policy(run, UID)["spec"] == {
        "podSelector": own, "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": own}]}, {"ports": [{"protocol": "TCP", "port": 9400}]}],
    }


# ------------------------------------------------------------------------- names, determinism


DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def test_names_fit_for_the_longest_run_name():
    name = "r" * 40
    run = validation.validate(_manifest(name, trainer={"replicas": 1024}, rollout={"replicas": 1024}))
    objects = _children(run)
    assert len(objects) == 9 + 1 + 1024 + 1024
    for obj in objects:
        assert DNS_LABEL.match(obj["metadata"]["name"]) and len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
        for value in obj["metadata"]["labels"].values():
            assert len(value) <= 63
    pods = [o for o in objects if o["kind"] == "Pod"]
    assert max(len(o["metadata"]["name"]) for o in pods) == len(f"{name}-trainer-1023")


@cases
def test_builders_are_deterministic_and_leave_the_run_alone(case):
    run = CASES[case]
    before = run.model_dump()
    first = _children(run, attempt=1)
    assert _children(run, attempt=1) == first
    for obj in first:  # what a caller does to the output must not reach the run or the next build
        obj["metadata"]["labels"]["x"] = "y"
        spec = obj.get("spec", {})
        for key in ("affinity", "nodeSelector"):
            if isinstance(spec.get(key), dict):
                spec[key]["x"] = "y"
        for t in spec.get("tolerations", []):
            t["key"] = "mutated"
        for c in spec.get("containers", []):
            for section in c.get("resources", {}).values():
                section["x"] = "1"
    assert run.model_dump() == before
    assert _children(run, attempt=1) == json.loads(json.dumps(_children(run, attempt=1)))
    assert "mutated" not in json.dumps(_children(run, attempt=1))


# ------------------------------------------------------------------ what users pass in to pods


def test_a_roles_env_labels_annotations_and_grace_reach_its_pods_and_only_its_pods():
    pods = _by_name(_pods(CASES["pod-options"]))
    trainer, rollout, head = (pods[("Pod", n)] for n in ("options-trainer-0", "options-rollout-0", "options-ray-head"))

    t = trainer["spec"]["containers"][0]
    env = _env(t)
    assert env["NCCL_DEBUG"] == "INFO" and env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    assert [e["name"] for e in t["env"]][-2:] == ["NCCL_DEBUG", "HF_TOKEN"]  # after the operator's own
    assert env["RANK"] == "0" and env["MASTER_ADDR"].startswith("options-trainer-0.")  # the operator's still there
    assert t["envFrom"] == [{"configMapRef": {"name": "nccl", "optional": False}, "prefix": "X_"}]
    assert trainer["metadata"]["labels"]["team"] == "rl" and trainer["metadata"]["labels"]["example.com/cost-centre"] == "42"
    assert trainer["metadata"]["labels"]["zeroth.dev/role"] == "trainer"
    assert trainer["metadata"]["annotations"] == {"example.com/note": "a b c"}
    assert trainer["spec"]["terminationGracePeriodSeconds"] == 900

    r = rollout["spec"]["containers"][0]
    assert _env(r)["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}} and "NCCL_DEBUG" not in _env(r)
    assert r["envFrom"] == [{"secretRef": {"name": "s3", "optional": True}}]
    assert "envFrom" not in rollout["spec"]["initContainers"][0] and "HF_TOKEN" not in _env(rollout["spec"]["initContainers"][0])
    assert rollout["metadata"]["labels"]["team"] == "rl-rollout"
    assert rollout["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert rollout["spec"]["terminationGracePeriodSeconds"] == 60

    # the head runs no model and no verifier: the rollout's labels and grace, none of its secrets
    h = head["spec"]["containers"][0]
    assert "HF_TOKEN" not in _env(h) and "envFrom" not in h
    assert head["metadata"]["labels"]["team"] == "rl-rollout" and head["spec"]["terminationGracePeriodSeconds"] == 60

    for pod in (trainer, rollout, head):
        assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]


def test_pods_without_those_options_carry_none_of_them():
    for pod in _pods(CASES["cpu"]):
        assert not {"imagePullSecrets", "terminationGracePeriodSeconds"} & set(pod["spec"]), pod["metadata"]["name"]
        assert "annotations" not in pod["metadata"] and "envFrom" not in pod["spec"]["containers"][0]


def test_the_env_names_the_api_reserves_are_the_ones_the_operator_sets():
    """api.RESERVED_ENV (what a spec's env may not set) and the builders agree: every variable the
    operator sets in any pod is reserved, so no user value can silently replace one."""
    set_by_operator = set()
    for case in CASES.values():
        for pod in _pods(case):
            for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
                set_by_operator |= {e["name"] for e in c["env"]}
    user = {e.name for case in CASES.values() for p in (case.spec.trainer, case.spec.rollout) for e in p.env}
    operator_only = set_by_operator - user
    # HF_HOME and HF_HUB_CACHE are reserved where spec.modelCache is set (a CEL rule), the only runs where the operator sets them
    assert operator_only and all(n in api.RESERVED_ENV or n.startswith("ZEROTH_") or n in api.MODEL_CACHE_ENV
                                 for n in operator_only), operator_only


def test_torchrun_in_a_pod_gives_its_processes_the_pods_grace_period():
    """A pod with several GPUs runs torchrun, which kills its processes 30 s after passing SIGTERM on
    unless told otherwise: with a grace period set, they get all of it to checkpoint."""
    graceful = validation.validate(_manifest("graceful", trainer={"gpusPerReplica": 4, "terminationGracePeriodSeconds": 900}))
    command = builders.trainer_command(graceful, 0, UID)
    assert command[0] == "torchrun" and "--shutdown-timeout=900" in command
    assert command.index("--shutdown-timeout=900") < command.index("-m")  # torchrun's option, not the trainer's
    plain = builders.trainer_command(CASES["multi-gpu"], 0, UID)
    assert plain[0] == "torchrun" and not any(a.startswith("--shutdown-timeout") for a in plain)


def test_gpu_pods_follow_the_roles_gpu_node_selector_or_the_default():
    def selectors(**spec):
        run = validation.validate(_manifest("sel", **spec))
        return {p["metadata"]["labels"]["zeroth.dev/role"]: p["spec"].get("nodeSelector") for p in _pods(run)}

    gpu = {"gpusPerReplica": 1}
    assert selectors(trainer=gpu, rollout=gpu)["trainer"] == api.DEFAULT_GPU_NODE_SELECTOR
    gke = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    placed = selectors(trainer={**gpu, "gpuNodeSelector": gke, "nodeSelector": {"pool": "a"}}, rollout={**gpu, "gpuNodeSelector": {}})
    assert placed["trainer"] == {**gke, "pool": "a"}
    assert placed["rollout"] is None  # {}: the nvidia.com/gpu request alone places it
    assert placed["ray-head"] is None
    # the spec's own nodeSelector wins where both name a key
    assert selectors(trainer={**gpu, "nodeSelector": {"nvidia.com/gpu.present": "false"}})["trainer"] == {
        "nvidia.com/gpu.present": "false"}
    assert selectors(trainer={"gpusPerReplica": 0, "gpuNodeSelector": gke})["trainer"] is None  # CPU pods: no GPU selector


def test_the_operator_freezes_its_default_gpu_node_selector_where_a_run_sets_none():
    from zeroth.operator import handlers

    gke = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    run = validation.validate(_manifest("freeze", namespace="ns", trainer={"gpusPerReplica": 1},
                                        rollout={"gpusPerReplica": 1, "gpuNodeSelector": {"pool": "own"}}))
    frozen = builders.with_gpu_node_selector(run, gke)
    assert frozen.spec.trainer.gpu_node_selector == gke and frozen.spec.rollout.gpu_node_selector == {"pool": "own"}
    stored = json.loads(builders.config_map(frozen, UID)["data"][builders.CONFIG_KEY])
    assert stored["spec"]["trainer"]["gpuNodeSelector"] == gke  # a later default leaves this run as it started
    assert handlers.gpu_node_selector(None) == api.DEFAULT_GPU_NODE_SELECTOR
    assert handlers.gpu_node_selector("{}") == {}
    assert handlers.gpu_node_selector(json.dumps(gke)) == gke
    with pytest.raises(SystemExit, match="ZEROTH_GPU_NODE_SELECTOR must be a JSON object"):
        handlers.gpu_node_selector('{"a": 1}')


# ------------------------------------------------------------------------- edits of a live run


def test_an_edit_acts_by_its_fields_policy():
    """What acts now (api.LIVE) is taken from the live spec at once; pod settings only when the
    config is frozen again (with api.WHILE_SUSPENDED); the operator's GPU selector, frozen when
    the run started, stays where the live spec leaves it unset."""
    frozen = builders.with_gpu_node_selector(validation.validate(_manifest("edited")), {"pool": "gpu"})
    live = validation.validate(_manifest("edited", suspend=True, backoffLimit=7, rollout={"replicas": 3},
                                         trainer={"image": "example.com/zeroth:2", "env": [{"name": "A", "value": "1"}]},
                                         queueName="team-b", eval={"everySteps": 5}))
    now = builders.refrozen(frozen, live, api.LIVE)
    assert (now.spec.suspend, now.spec.backoff_limit, now.spec.rollout.replicas) == (True, 7, 3)
    assert now.spec.trainer.image is None and now.spec.trainer.env == [] and now.spec.queue_name is None
    assert now.spec.eval.every_steps == 50
    again = builders.refrozen(frozen, live, api.LIVE + api.WHILE_SUSPENDED)
    assert again.spec.trainer.image == "example.com/zeroth:2" and again.spec.queue_name == "team-b"
    assert [e.name for e in again.spec.trainer.env] == ["A"] and again.spec.eval.every_steps == 5
    assert again.spec.trainer.gpu_node_selector == {"pool": "gpu"} == again.spec.rollout.gpu_node_selector
    unchanged = builders.refrozen(frozen, validation.validate(_manifest("edited")), api.LIVE + api.WHILE_SUSPENDED)
    assert unchanged.spec == frozen.spec
    overridden = validation.validate(_manifest("edited", trainer={"gpuNodeSelector": {}}))
    assert builders.refrozen(frozen, overridden, api.WHILE_SUSPENDED).spec.trainer.gpu_node_selector == {}


def test_a_trainer_pod_reads_the_config_it_is_given():
    run = CASES["countdown-tiny"]
    first = builders.trainer_pod(run, UID, 0, attempt=0)["spec"]["volumes"]
    later = builders.trainer_pod(run, UID, 0, attempt=0, config=builders.config_map_name(run.metadata.name, 7))["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": "countdown-tiny-config"}} in first
    assert {"name": "config", "configMap": {"name": "countdown-tiny-config-7"}} in later
    assert builders.config_map(run, UID, "countdown-tiny-config-7")["metadata"]["name"] == "countdown-tiny-config-7"


# -------------------------------------------------------------------- volumes and the model cache


def test_a_roles_volumes_reach_its_pods_and_only_its_pods():
    pods = _by_name(_pods(CASES["volumes"]))
    trainer, rollout, head = (pods[("Pod", n)] for n in ("vols-trainer-0", "vols-rollout-0", "vols-ray-head"))
    r = rollout["spec"]["containers"][0]
    volumes = {v["name"]: v for v in rollout["spec"]["volumes"]}
    assert {m["mountPath"]: (m["name"], m.get("readOnly"), m.get("subPath")) for m in r["volumeMounts"]} == {
        "/tmp": ("tmp", None, None), "/dev/shm": ("shm", None, None), "/cache/models": ("model-cache", None, None),
        "/keys": ("keys", True, None), "/fast": ("fast", None, None), "/mnt/csi": ("driver", None, None)}
    assert volumes["keys"] == {"name": "keys", "secret": {"secretName": "api-keys", "defaultMode": 256}}
    assert volumes["driver"] == {"name": "driver", "csi": {"driver": "secrets-store.csi.k8s.io", "readOnly": True}}
    assert volumes["fast"]["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"] == {"requests": {"storage": "10Gi"}}
    assert not {"data", "ca", "scratch"} & set(volumes)  # the trainer's
    t = trainer["spec"]["containers"][0]
    assert {m["subPath"] for m in t["volumeMounts"] if "subPath" in m} == {"certs"}
    assert not {"keys", "fast", "driver"} & {v["name"] for v in trainer["spec"]["volumes"]}  # the rollout's
    # the head and the rollout's init container run no model: scratch space only
    assert {v["name"] for v in head["spec"]["volumes"]} == {"tmp", "shm"}
    assert [m["mountPath"] for m in rollout["spec"]["initContainers"][0]["volumeMounts"]] == ["/tmp", "/dev/shm"]


def test_the_model_cache_is_every_trainer_and_rollout_pods_hugging_face_home():
    run = CASES["volumes"]
    for pod in _pods(run):
        (c,) = pod["spec"]["containers"]
        if pod["metadata"]["labels"]["zeroth.dev/role"] == "ray-head":
            assert "HF_HOME" not in _env(c) and "model-cache" not in {v["name"] for v in pod["spec"]["volumes"]}
            continue
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert mounts["/cache/models"] == "model-cache"
        assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "hf-cache"}} in pod["spec"]["volumes"]
        assert _env(c)["HF_HOME"] == "/cache/models/huggingface"
        assert _env(c)["ZEROTH_MODEL_CACHE"] == "/cache/models"
    moved = validation.validate(_manifest("moved", modelCache={"volumeClaimName": "c", "path": "/hf"}))
    (c,) = builders.trainer_pod(moved, UID, 0, 0)["spec"]["containers"]
    assert _env(c)["HF_HOME"] == "/hf/huggingface" and {"name": "model-cache", "mountPath": "/hf"} in c["volumeMounts"]
    for pod in _pods(CASES["cpu"]):  # no cache: nothing of it
        assert "HF_HOME" not in _env(pod["spec"]["containers"][0]) and "model-cache" not in json.dumps(pod)


def test_an_nfs_volume_is_a_valid_pod_volume():
    """nfs is outside Pod Security restricted (not in the variants above, which all must pass it),
    but a valid source where the namespace allows it."""
    run = validation.validate(_manifest("nfs", trainer={
        "volumes": [{"name": "shared", "nfs": {"server": "nfs.example", "path": "/exports/data", "readOnly": True}}],
        "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]}))
    pod = builders.trainer_pod(run, UID, 0, 0)
    assert {"name": "shared", "nfs": {"server": "nfs.example", "path": "/exports/data", "readOnly": True}} in pod["spec"]["volumes"]
    kubernetes_validate.validate(pod, K8S, strict=True)


def test_the_volume_names_and_paths_the_api_reserves_are_the_ones_the_operator_uses():
    """api.RESERVED_VOLUMES and RESERVED_MOUNT_PATHS (what a role's volumes may not take) cover every
    volume and fixed mount path of the operator's, with the model cache and claims in use."""
    run = validation.validate(_manifest("all", modelCache={"volumeClaimName": "c"},
                                        checkpoint={"volumeClaimName": "k"}, export={"volumeClaimName": "e"}))
    names, paths = set(), set()
    for pod in _pods(run):
        names |= {v["name"] for v in pod["spec"]["volumes"]}
        for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            paths |= {m["mountPath"] for m in c["volumeMounts"]}
    assert names == set(api.RESERVED_VOLUMES)
    assert paths - {"/checkpoints", "/exports", "/cache/models"} <= set(api.RESERVED_MOUNT_PATHS)
