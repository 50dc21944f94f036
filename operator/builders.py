"""Every child object of a `ReasoningRun`, as a plain dict built from the run alone.

Pure functions, no I/O: the handlers read the cluster, call these and apply the difference, so
reconciling twice (or after a crash) builds the same objects. docs/operator.md is the contract for
names, labels, environment and commands; the constants below are shared with the handlers and tests.
Objects are JSON-serialisable, with the API's camelCase keys and quantities as strings (what the
API server returns, so a comparison with a live object does not see `8` and `"8"` as a change).
"""

from __future__ import annotations

import base64
import copy
import json
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from zeroth import api, metrics

# Labels (docs/operator.md, "Children").
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_RUN = "zeroth.dev/run"
LABEL_ROLE = "zeroth.dev/role"
LABEL_RANK = "zeroth.dev/rank"
LABEL_ATTEMPT = "zeroth.dev/attempt"
LABEL_INDEX = "zeroth.dev/index"
APP = "zeroth"
MANAGED_BY = "zeroth-operator"
ROLE_TRAINER = "trainer"
ROLE_RAY_HEAD = "ray-head"
ROLE_ROLLOUT = "rollout"

KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_TOTAL_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
KUEUE_RETRIABLE_ANNOTATION = "kueue.x-k8s.io/retriable-in-group"  # "false": no replacements, the group ends

# Ports, paths and identities.
RENDEZVOUS_PORT = 29500
GCS_PORT = 6379
METRICS_PORT = 9400
CONFIG_DIR = "/etc/zeroth"
CONFIG_KEY = "run.json"
CONFIG_FILE = f"{CONFIG_DIR}/{CONFIG_KEY}"
TOKEN_KEY = "token"
HOME = "/tmp"
UID = 1000
ROLLOUT_RESOURCE = api.ROLLOUT_RESOURCE  # one rollout actor per slot: per engine of a rollout pod
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
# A trainer rank on a node that stops answering holds every other rank in a collective: the taint
# manager evicts it this soon (Kubernetes' default is 300 s), and the gang restarts elsewhere. A
# role's own toleration of these taints wins.
NODE_LOST_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
TRAINER_NODE_LOST_SECONDS = 30
RAY_HEAD_RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}}
# `ray health-check` in a loop: a Python process importing Ray
WAIT_FOR_HEAD_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}


# ---------------------------------------------------------------------------------- names, labels


def config_map_name(name: str, generation: int | None = None) -> str:
    """The run's first frozen config; one per later freeze, by the generation it froze."""
    return f"{name}-config" + (f"-{generation}" if generation is not None else "")


def token_secret_name(name: str, uid: str) -> str:
    """Keyed by the run's uid as well: the operator may create Secrets but never read one, so it could
    not tell an earlier same-named run's token (still being collected) from its own."""
    return f"{name}-ray-token-{uid[:8]}"


def trainer_service_name(name: str) -> str:
    return f"{name}-trainer"


def trainer_hostname(name: str, rank: int) -> str:
    """Rank `rank`'s stable host name under the headless Service, whatever the attempt."""
    return f"{name}-trainer-{rank}"


def trainer_pod_name(name: str, rank: int, attempt: int = 0) -> str:
    """The host name for the first attempt; later attempts add their number, so that a new gang
    never waits for an old pod's name (Kueue keeps a failed pod until its replacement exists)."""
    return trainer_hostname(name, rank) + (f"-{attempt}" if attempt else "")


def ray_head_name(name: str) -> str:
    """The head pod and its Service share the name."""
    return f"{name}-ray-head"


def rollout_pod_name(name: str, index: int) -> str:
    return f"{name}-rollout-{index}"


def master_addr(name: str, namespace: str) -> str:
    """Rank 0's stable DNS name, through the headless Service."""
    return f"{trainer_hostname(name, 0)}.{trainer_service_name(name)}.{namespace}.svc"


def ray_address(name: str, namespace: str) -> str:
    return f"{ray_head_name(name)}.{namespace}.svc:{GCS_PORT}"


def labels(name: str) -> dict[str, str]:
    """The labels every child carries."""
    return {LABEL_NAME: APP, LABEL_INSTANCE: name, LABEL_MANAGED_BY: MANAGED_BY, LABEL_RUN: name}


def selector(name: str, role: str) -> str:
    """A label selector string for one role's pods (`status.*.selector`)."""
    return f"{LABEL_RUN}={name},{LABEL_ROLE}={role}"


def rollout_selector(name: str) -> str:
    """The scale subresource's selector: `status.rollout.selector`."""
    return selector(name, ROLE_ROLLOUT)


def owner_reference(run_name: str, uid: str) -> dict[str, Any]:
    """The run controls the child: the garbage collector deletes it with the run."""
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": run_name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def _metadata(run: api.ReasoningRun, uid: str, name: str, extra_labels: dict[str, str] | None = None,
              annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": run.metadata.namespace,
        "labels": {**labels(run.metadata.name), **(extra_labels or {})},
        "ownerReferences": [owner_reference(run.metadata.name, uid)],
    }
    if annotations:
        meta["annotations"] = annotations
    return meta


def _object(api_version: str, kind: str, metadata: dict[str, Any], **body: Any) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **body}


# ------------------------------------------------------------------------- config and identity


def run_document(run: api.ReasoningRun) -> dict[str, Any]:
    """The run as the trainer reads it back with `zeroth.validation.validate`: defaults filled in."""
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": run.metadata.name, "namespace": run.metadata.namespace},
        "spec": run.spec.model_dump(by_alias=True, mode="json", exclude_none=True),
    }


def config_map(run: api.ReasoningRun, uid: str, name: str | None = None) -> dict[str, Any]:
    """Frozen at creation (immutable): a later edit reaches the pods only through a new one, made
    while the run is suspended (`refrozen`), never by rewriting what a restarted gang reads."""
    body = json.dumps(run_document(run), indent=2, sort_keys=True) + "\n"
    return _object("v1", "ConfigMap", _metadata(run, uid, name or config_map_name(run.metadata.name)),
                   immutable=True, data={CONFIG_KEY: body})


def refrozen(frozen: api.ReasoningRun, live: api.ReasoningRun, paths: tuple[str, ...]) -> api.ReasoningRun:
    """The frozen run with the live run's values at `paths` (api.LIVE: what acts at once; with
    api.WHILE_SUSPENDED: the config frozen again while suspended) and the live metadata. A role's
    gpuNodeSelector the live spec leaves unset keeps the frozen one: the operator's default when the
    run started."""
    spec = api.with_values(frozen.spec, live.spec, paths)
    for role in ("trainer", "rollout"):
        if getattr(live.spec, role).gpu_node_selector is None:
            kept = getattr(frozen.spec, role).gpu_node_selector
            spec = spec.model_copy(update={role: getattr(spec, role).model_copy(update={"gpu_node_selector": kept})})
    return frozen.model_copy(update={"spec": spec, "metadata": live.metadata})


def ray_token_secret(run: api.ReasoningRun, uid: str, token: str) -> dict[str, Any]:
    """The token comes from the caller, so this stays pure; `data`, not `stringData`, as read back."""
    encoded = base64.b64encode(token.encode()).decode()
    return _object("v1", "Secret", _metadata(run, uid, token_secret_name(run.metadata.name, uid)),
                   type="Opaque", immutable=True, data={TOKEN_KEY: encoded})


def service_account(run: api.ReasoningRun, uid: str) -> dict[str, Any]:
    """No token by default: only trainer rank 0 asks for one (in its pod spec)."""
    return _object("v1", "ServiceAccount", _metadata(run, uid, run.metadata.name), automountServiceAccountToken=False)


def role(run: api.ReasoningRun, uid: str) -> dict[str, Any]:
    """Rank 0 may read and patch its own run's status, nothing else."""
    rule = {"apiGroups": [api.GROUP], "resources": [f"{api.PLURAL}/status"],
            "resourceNames": [run.metadata.name], "verbs": ["get", "patch"]}
    return _object("rbac.authorization.k8s.io/v1", "Role", _metadata(run, uid, run.metadata.name), rules=[rule])


def role_binding(run: api.ReasoningRun, uid: str) -> dict[str, Any]:
    name = run.metadata.name
    return _object(
        "rbac.authorization.k8s.io/v1", "RoleBinding", _metadata(run, uid, name),
        roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        subjects=[{"kind": "ServiceAccount", "name": name, "namespace": run.metadata.namespace}],
    )


# ------------------------------------------------------------------------------- network objects


def _role_selector(name: str, role_: str) -> dict[str, str]:
    return {LABEL_RUN: name, LABEL_ROLE: role_}


def trainer_service(run: api.ReasoningRun, uid: str) -> dict[str, Any]:
    """Headless, publishing pods before they are ready: rank 0's name must resolve during rendezvous."""
    name = run.metadata.name
    return _object("v1", "Service", _metadata(run, uid, trainer_service_name(name)), spec={
        "clusterIP": "None",
        "publishNotReadyAddresses": True,
        "selector": _role_selector(name, ROLE_TRAINER),
        "ports": [
            {"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT, "protocol": "TCP"},
            {"name": "metrics", "port": METRICS_PORT, "targetPort": METRICS_PORT, "protocol": "TCP"},
        ],
    })


def ray_head_service(run: api.ReasoningRun, uid: str) -> dict[str, Any]:
    name = run.metadata.name
    return _object("v1", "Service", _metadata(run, uid, ray_head_name(name)), spec={
        "type": "ClusterIP",
        "selector": _role_selector(name, ROLE_RAY_HEAD),
        "ports": [{"name": "gcs", "port": GCS_PORT, "targetPort": GCS_PORT, "protocol": "TCP"}],
    })


def network_policy(run: api.ReasoningRun, uid: str) -> dict[str, Any]:
    """Ray and the rendezvous run code for whoever reaches them: only the run's own pods may, on any
    port (Ray and NCCL pick ports of their own, and the weight broadcast's store listens on a free
    port of trainer rank 0, which every rollout engine connects to); Prometheus reaches `metrics`
    from anywhere."""
    own = {"matchLabels": {LABEL_RUN: run.metadata.name}}
    return _object("networking.k8s.io/v1", "NetworkPolicy", _metadata(run, uid, run.metadata.name), spec={
        "podSelector": own,
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": [{"podSelector": own}]},
            {"ports": [_metrics_port_range(run)]},
        ],
    })


def _metrics_port_range(run: api.ReasoningRun) -> dict[str, Any]:
    """The trainer's and every rollout actor's /metrics port."""
    last = worker_metrics_ports(run)[-1][1]
    return {"protocol": "TCP", "port": METRICS_PORT, **({"endPort": last} if last > METRICS_PORT else {})}


def pod_monitor(run: api.ReasoningRun, uid: str, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    """Only for clusters that serve the Prometheus operator's CRD (the handler checks). Scrapes the
    trainer ranks' and each rollout actor's /metrics (a pod without a port of that name is skipped).
    `extra_labels` (the chart's `metrics.podMonitor.labels`) let the cluster's Prometheus select it;
    they never replace the run's own labels, by which the operator finds its children."""
    own = labels(run.metadata.name)
    extra = {k: v for k, v in (extra_labels or {}).items() if k not in own}
    return _object("monitoring.coreos.com/v1", "PodMonitor", _metadata(run, uid, run.metadata.name, extra), spec={
        "selector": {"matchLabels": {LABEL_RUN: run.metadata.name}},
        "podMetricsEndpoints": [{"port": port_name, "path": "/metrics"} for port_name, _ in worker_metrics_ports(run)],
    })


_pod_monitor = pod_monitor  # the `pod_monitor` flag of children() shadows the function there


# ------------------------------------------------------------------------------------------ pods


def pod_count(run: api.ReasoningRun) -> int:
    """All of the run's pods: trainer ranks, rollout pods and the Ray head (Kueue's group size)."""
    return run.spec.trainer.replicas + run.spec.rollout.replicas + 1


def kueue_group(name: str, resumes: int) -> str:
    """The Kueue pod group of a queued run's pods: one per resumption, since a suspension ends the
    previous group (Kueue never admits new pods into a finished group's Workload)."""
    return f"{name}-{resumes}"


def end_kueue_group() -> dict[str, Any]:
    """The patch that tells Kueue a pod's group is over once its pods have ended, so it finishes the
    Workload and releases the quota (without it Kueue waits for replacement pods)."""
    return {"metadata": {"annotations": {KUEUE_RETRIABLE_ANNOTATION: "false"}}}


def _pod_metadata(run: api.ReasoningRun, uid: str, name: str, role_: str, extra: dict[str, str],
                  resumes: int, placement: api.Placement) -> dict[str, Any]:
    """The role's own labels and annotations first: the operator's and Kueue's (whose prefixes the
    API refuses in a spec) are written over them."""
    spec = run.spec
    extra_labels = {**placement.labels, **labels(run.metadata.name), LABEL_ROLE: role_, **extra}
    annotations = dict(placement.annotations)
    if spec.queue_name:
        extra_labels[KUEUE_QUEUE_LABEL] = spec.queue_name
        extra_labels[KUEUE_GROUP_LABEL] = kueue_group(run.metadata.name, resumes)
        annotations[KUEUE_TOTAL_ANNOTATION] = str(pod_count(run))
    return _metadata(run, uid, name, extra_labels, annotations or None)


def _quantities(values: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in values.items()}


def _resources(placement: api.Placement, gpus: int) -> dict[str, Any]:
    requests = _quantities(placement.resources.requests)
    limits = _quantities(placement.resources.limits)
    if gpus > 0:  # extended resources must be requested and limited alike
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _tolerations(placement: api.Placement, gpus: int, node_lost_seconds: int | None = None) -> list[dict[str, Any]]:
    out = [t.model_dump(by_alias=True, mode="json", exclude_none=True) for t in placement.tolerations]
    if gpus > 0 and GPU_TOLERATION not in out:
        out.append(dict(GPU_TOLERATION))
    if node_lost_seconds is not None:
        out += [{"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": node_lost_seconds}
                for key in NODE_LOST_TAINTS if not any(_tolerates(t, key) for t in out)]
    return out


def _tolerates(toleration: dict[str, Any], key: str) -> bool:
    """Whether a toleration matches a NoExecute taint `key` (any value): its key, or none with
    `Exists` (a role that tolerates everything); an effect of NoExecute or none."""
    matches_key = toleration.get("key") == key or (not toleration.get("key") and toleration.get("operator") == "Exists")
    return matches_key and toleration.get("effect") in (None, "", "NoExecute")


def _placement(placement: api.Placement, gpus: int, node_lost_seconds: int | None = None) -> dict[str, Any]:
    """nodeSelector, tolerations and affinity: the spec's, plus what GPU nodes need (the role's
    GPU node selector, under the spec's own nodeSelector where a key is in both) and, for the
    trainer, how long it stays on a node that stopped answering."""
    out: dict[str, Any] = {}
    node_selector = dict(placement.node_selector)
    if gpus > 0:
        gpu = api.DEFAULT_GPU_NODE_SELECTOR if placement.gpu_node_selector is None else placement.gpu_node_selector
        node_selector = {**gpu, **node_selector}
    if node_selector:
        out["nodeSelector"] = node_selector
    tolerations = _tolerations(placement, gpus, node_lost_seconds)
    if tolerations:
        out["tolerations"] = tolerations
    if placement.affinity:
        out["affinity"] = copy.deepcopy(placement.affinity)
    return out


def with_gpu_node_selector(run: api.ReasoningRun, default: dict[str, str]) -> api.ReasoningRun:
    """`run` with `default` as each role's GPU node selector where the spec leaves it unset: what the
    operator freezes in the run's config when it first sees the run."""
    roles = {role: getattr(run.spec, role) for role in ("trainer", "rollout")}
    updates = {role: p.model_copy(update={"gpu_node_selector": dict(default)}) for role, p in roles.items()
               if p.gpu_node_selector is None}
    return run.model_copy(update={"spec": run.spec.model_copy(update=updates)}) if updates else run


def _pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "seccompProfile": {"type": "RuntimeDefault"}}


def _scratch() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The writable places a read-only root filesystem leaves: /tmp (HOME) and /dev/shm (Ray's object
    store, NCCL and dataloader shared memory)."""
    volumes = [{"name": "tmp", "emptyDir": {}}, {"name": "shm", "emptyDir": {"medium": "Memory"}}]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "shm", "mountPath": "/dev/shm"}]
    return volumes, mounts


def _token_env(name: str, uid: str) -> list[dict[str, Any]]:
    return [
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": token_secret_name(name, uid), "key": TOKEN_KEY}}},
        {"name": "HOME", "value": HOME},
    ]


def _with_user_env(container: dict[str, Any], placement: api.Placement) -> dict[str, Any]:
    """`container` with the role's `env` after the operator's (whose names the API refuses) and its `envFrom`."""
    out = {**container, "env": container["env"] + [e.model_dump(by_alias=True, mode="json", exclude_none=True)
                                                   for e in placement.env]}
    if placement.env_from:
        out["envFrom"] = [e.model_dump(by_alias=True, mode="json", exclude_none=True) for e in placement.env_from]
    return out


def _pod(run: api.ReasoningRun, uid: str, metadata: dict[str, Any], container: dict[str, Any],
         volumes: list[dict[str, Any]], *, restart_policy: str, placement: api.Placement, automount_token: bool = False,
         extra: dict[str, Any] | None = None, init: dict[str, Any] | None = None) -> dict[str, Any]:
    """What every pod shares: the run's identity, the restricted profile, Kueue's priority, the
    run's image pull secrets and the role's grace period."""
    scratch_volumes, scratch_mounts = _scratch()

    def hardened(c: dict[str, Any]) -> dict[str, Any]:
        return {**c, "securityContext": _container_security(), "volumeMounts": scratch_mounts + c.get("volumeMounts", [])}

    spec: dict[str, Any] = {
        "serviceAccountName": run.metadata.name,
        "automountServiceAccountToken": automount_token,
        # Ray reads RAY_* variables as settings: keep Service links from injecting any
        "enableServiceLinks": False,
        "restartPolicy": restart_policy,
        "securityContext": _pod_security(),
        "containers": [hardened(container)],
        "volumes": scratch_volumes + volumes,
        **(extra or {}),
    }
    if init is not None:
        spec["initContainers"] = [hardened(init)]
    if run.spec.priority_class_name:
        spec["priorityClassName"] = run.spec.priority_class_name
    if run.spec.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in run.spec.image_pull_secrets]
    if placement.termination_grace_period_seconds is not None:
        spec["terminationGracePeriodSeconds"] = placement.termination_grace_period_seconds
    return _object("v1", "Pod", metadata, spec=spec)


def _data_volumes(run: api.ReasoningRun) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Checkpoint and export directories: a claim where one is named, else an emptyDir. One path (or
    one claim) is one volume; a claim named on either side of a shared path wins over an emptyDir."""
    ckpt, export = run.spec.checkpoint, run.spec.export
    places = [("checkpoint", ckpt.path, ckpt.volume_claim_name)]
    if export.path == ckpt.path:
        places = [("checkpoint", ckpt.path, ckpt.volume_claim_name or export.volume_claim_name)]
    else:
        places.append(("export", export.path, export.volume_claim_name))
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    by_claim: dict[str, str] = {}
    for volume, path, claim in places:
        if claim and claim in by_claim:  # the same claim at two paths: one volume, two mounts
            volume = by_claim[claim]
        elif claim:
            by_claim[claim] = volume
            volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim}})
        else:
            volumes.append({"name": volume, "emptyDir": {}})
        mounts.append({"name": volume, "mountPath": path})
    return volumes, mounts


MODEL_CACHE_VOLUME = "model-cache"


def _model_cache(run: api.ReasoningRun) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The volume, mount and environment of `spec.modelCache` (none when it is unset): Hugging Face's
    cache (HF_HOME) and Zeroth's (built-in models, download locks and markers) on the shared claim."""
    cache = run.spec.model_cache
    if cache is None:
        return [], [], []
    path = cache.path.rstrip("/")
    volumes = [{"name": MODEL_CACHE_VOLUME, "persistentVolumeClaim": {"claimName": cache.volume_claim_name}}]
    mounts = [{"name": MODEL_CACHE_VOLUME, "mountPath": path}]
    env = [{"name": "HF_HOME", "value": f"{path}/huggingface"}, {"name": "ZEROTH_MODEL_CACHE", "value": path}]
    return volumes, mounts, env


def _user_volumes(placement: api.Placement) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The role's own `volumes` and `volumeMounts`, after the operator's (whose names and paths the API refuses)."""
    return ([v.model_dump(by_alias=True, mode="json", exclude_none=True) for v in placement.volumes],
            [m.model_dump(by_alias=True, mode="json", exclude_none=True) for m in placement.volume_mounts])




def run_directory(root: str, name: str, uid: str) -> str:
    """A run's directory under a checkpoint or export path: keyed by its uid, so that a run deleted and
    created again with the same name on a shared volume starts afresh, never from the old checkpoints."""
    return f"{root.rstrip('/')}/{name}/{uid}"


def trainer_command(run: api.ReasoningRun, rank: int, uid: str) -> list[str]:
    """One process per pod when G = 1; torchrun starting G processes (one per GPU) otherwise."""
    spec, name = run.spec, run.metadata.name
    module = [
        "-m", "zeroth.trainer.main", "--config", CONFIG_FILE,
        "--run-dir", run_directory(spec.checkpoint.path, name, uid),
        "--export-dir", run_directory(spec.export.path, name, uid),
        "--metrics-addr", "0.0.0.0", "--metrics-port", str(METRICS_PORT),
    ]
    g = max(spec.trainer.gpus_per_replica, 1)
    if g == 1:
        return ["python", *module]
    # torchrun passes the kubelet's SIGTERM on to its processes, then kills them after its own
    # grace (30 s by default): the pod's grace period is what they really have
    grace = spec.trainer.termination_grace_period_seconds
    return [
        "torchrun", "--nnodes", str(spec.trainer.replicas), "--nproc-per-node", str(g), "--node-rank", str(rank),
        "--master-addr", master_addr(name, run.metadata.namespace), "--master-port", str(RENDEZVOUS_PORT),
        *([f"--shutdown-timeout={grace}"] if grace is not None else []),
        *module,
    ]


def trainer_env(run: api.ReasoningRun, rank: int, uid: str) -> list[dict[str, Any]]:
    """The standard rendezvous variables for the pod's first process; torchrun overrides the
    per-process ones (RANK, LOCAL_RANK, WORLD_SIZE) when G > 1."""
    name, ns = run.metadata.name, run.metadata.namespace
    n, g = run.spec.trainer.replicas, max(run.spec.trainer.gpus_per_replica, 1)
    values = {
        "MASTER_ADDR": master_addr(name, ns),
        "MASTER_PORT": str(RENDEZVOUS_PORT),
        "WORLD_SIZE": str(n * g),
        "RANK": str(rank * g),
        "LOCAL_RANK": "0",
        "NODE_RANK": str(rank),
        "NNODES": str(n),
        "NPROC_PER_NODE": str(g),
        "RAY_ADDRESS": ray_address(name, ns),
        "ZEROTH_RUN": name,
        "ZEROTH_NAMESPACE": ns,
    }
    return [{"name": k, "value": v} for k, v in values.items()] + _token_env(name, uid) + _model_cache(run)[2]


def trainer_pod(run: api.ReasoningRun, uid: str, rank: int, attempt: int, resumes: int = 0,
                config: str | None = None) -> dict[str, Any]:
    """Rank `rank` of gang attempt `attempt`, reading the frozen config `config` (default: the
    first); only rank 0 gets an API token (to write progress)."""
    name, trainer = run.metadata.name, run.spec.trainer
    if not 0 <= rank < trainer.replicas:
        raise ValueError(f"rank {rank} outside 0..{trainer.replicas - 1}")
    pod_name = trainer_pod_name(name, rank, attempt)
    metadata = _pod_metadata(run, uid, pod_name, ROLE_TRAINER, {LABEL_RANK: str(rank), LABEL_ATTEMPT: str(attempt)},
                             resumes, trainer)
    data_volumes, data_mounts = _data_volumes(run)
    cache_volumes, cache_mounts, _ = _model_cache(run)
    user_volumes, user_mounts = _user_volumes(trainer)
    volumes = [{"name": "config", "configMap": {"name": config or config_map_name(name)}}] + data_volumes + cache_volumes + user_volumes
    mounts = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}] + data_mounts + cache_mounts + user_mounts
    container = _with_user_env({
        "name": "trainer",
        "image": run.spec.trainer_image(),
        "imagePullPolicy": trainer.image_pull_policy,
        "command": trainer_command(run, rank, uid),
        "env": trainer_env(run, rank, uid),
        "ports": [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "resources": _resources(trainer, trainer.gpus_per_replica),
        "volumeMounts": mounts,
    }, trainer)
    extra = {"hostname": trainer_hostname(name, rank), "subdomain": trainer_service_name(name), **_placement(trainer, trainer.gpus_per_replica, TRAINER_NODE_LOST_SECONDS)}
    return _pod(run, uid, metadata, container, volumes, restart_policy="Never", placement=trainer,
                automount_token=rank == 0, extra=extra)


def ray_head_pod(run: api.ReasoningRun, uid: str, resumes: int = 0) -> dict[str, Any]:
    """Schedules nothing itself (no CPUs, no GPUs), so it fits anywhere the rollout pods' taints allow.
    It takes the rollout's labels, annotations and grace period, not its environment: it runs no
    model and no verifier, and needs none of their secrets."""
    name, rollout = run.metadata.name, run.spec.rollout
    metadata = _pod_metadata(run, uid, ray_head_name(name), ROLE_RAY_HEAD, {}, resumes, rollout)
    container = {
        "name": "ray-head",
        "image": run.spec.rollout_image(),
        "imagePullPolicy": rollout.image_pull_policy,
        "command": ["ray", "start", "--head", f"--port={GCS_PORT}", "--num-cpus=0", "--num-gpus=0",
                    "--include-dashboard=false", "--disable-usage-stats", "--block"],
        "env": _token_env(name, uid),
        "ports": [{"name": "gcs", "containerPort": GCS_PORT, "protocol": "TCP"}],
        "resources": copy.deepcopy(RAY_HEAD_RESOURCES),
    }
    extra = {"tolerations": _tolerations(rollout, 0)} if rollout.tolerations else {}
    return _pod(run, uid, metadata, container, [], restart_policy="Always", placement=rollout, extra=extra)


_SUFFIXES = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9, "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}


def cpu_count(quantity: int | str) -> int:
    """A Kubernetes CPU quantity rounded up to whole CPUs (`500m` → 1, `2.5` → 3), at least 1.
    Raises ValueError for something that is not a quantity."""
    m = re.fullmatch(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)([a-zA-Z]*)\s*", str(quantity))
    if not m or m.group(2) not in _SUFFIXES:
        raise ValueError(f"not a CPU quantity: {quantity!r}")
    try:
        value = Decimal(m.group(1)) * _SUFFIXES[m.group(2)]
    except InvalidOperation:
        raise ValueError(f"not a CPU quantity: {quantity!r}") from None
    return max(1, math.ceil(value))


def wait_for_head_container(run: api.ReasoningRun, uid: str) -> dict[str, Any]:
    """Holds a rollout pod until the Ray head's GCS answers, so a head that starts slowly (a loaded
    node, a cold image) never makes `ray start` give up and the pod restart."""
    address = f"{ray_head_name(run.metadata.name)}.{run.metadata.namespace}.svc:{GCS_PORT}"
    script = (f"until ray health-check --address={address} >/dev/null 2>&1; "
              f"do echo 'waiting for the Ray head at {address}'; sleep 2; done")
    return {
        "name": "wait-for-ray-head",
        "image": run.spec.rollout_image(),
        "imagePullPolicy": run.spec.rollout.image_pull_policy,
        "command": ["sh", "-c", script],
        "env": _token_env(run.metadata.name, uid),
        "resources": copy.deepcopy(WAIT_FOR_HEAD_RESOURCES),
    }


def rollout_command(run: api.ReasoningRun) -> list[str]:
    """A Ray worker advertising its CPUs, its GPUs and a `zeroth-rollout` slot per engine it runs
    (gpusPerReplica / tensorParallelSize; one on CPU): one rollout actor per slot."""
    rollout = run.spec.rollout
    cpu = rollout.resources.requests.get("cpu", rollout.resources.limits.get("cpu"))  # the request defaults to the limit
    cpus = cpu_count(cpu) if cpu is not None else 1
    head = f"{ray_head_name(run.metadata.name)}.{run.metadata.namespace}.svc"
    return ["ray", "start", f"--address={head}:{GCS_PORT}", f"--num-cpus={cpus}",
            f"--num-gpus={rollout.gpus_per_replica}", f"--resources={json.dumps({ROLLOUT_RESOURCE: rollout.engines_per_replica()})}",
            "--disable-usage-stats", "--block"]


def worker_metrics_ports(run: api.ReasoningRun) -> list[tuple[str, int]]:
    """The /metrics ports of a rollout pod, one per rollout actor (engine) it runs: `metrics`
    (METRICS_PORT, as on the trainer pods), then `metrics-1`, `metrics-2`, ..."""
    return [("metrics" if i == 0 else f"metrics-{i}", METRICS_PORT + i) for i in range(run.spec.rollout.engines_per_replica())]


def _worker_metrics_env(run: api.ReasoningRun) -> list[dict[str, str]]:
    """Each rollout actor serves its /metrics on the first free one of those ports, on every address."""
    ports = worker_metrics_ports(run)
    return [{"name": metrics.PORTS_VAR, "value": f"{ports[0][1]}-{ports[-1][1]}"},
            {"name": metrics.ADDR_VAR, "value": "0.0.0.0"}]


def rollout_pod(run: api.ReasoningRun, uid: str, index: int, resumes: int = 0) -> dict[str, Any]:
    name, rollout = run.metadata.name, run.spec.rollout
    metadata = _pod_metadata(run, uid, rollout_pod_name(name, index), ROLE_ROLLOUT, {LABEL_INDEX: str(index)}, resumes,
                             rollout)
    cache_volumes, cache_mounts, cache_env = _model_cache(run)
    user_volumes, user_mounts = _user_volumes(rollout)
    container = _with_user_env({
        "name": "rollout",
        "image": run.spec.rollout_image(),
        "imagePullPolicy": rollout.image_pull_policy,
        "command": rollout_command(run),
        "env": _token_env(name, uid) + cache_env + _worker_metrics_env(run),
        "ports": [{"name": port_name, "containerPort": port, "protocol": "TCP"} for port_name, port in worker_metrics_ports(run)],
        "resources": _resources(rollout, rollout.gpus_per_replica),
    }, rollout)
    if cache_mounts or user_mounts:
        container["volumeMounts"] = cache_mounts + user_mounts
    extra = _placement(rollout, rollout.gpus_per_replica)
    if rollout.runtime_class_name:
        extra["runtimeClassName"] = rollout.runtime_class_name
    return _pod(run, uid, metadata, container, cache_volumes + user_volumes, restart_policy="Always", placement=rollout,
                extra=extra, init=wait_for_head_container(run, uid))


# ----------------------------------------------------------------------------------------- groups


def trainer_pods(run: api.ReasoningRun, uid: str, attempt: int) -> list[dict[str, Any]]:
    """The gang of one attempt, rank order."""
    return [trainer_pod(run, uid, r, attempt) for r in range(run.spec.trainer.replicas)]


def rollout_pods(run: api.ReasoningRun, uid: str) -> list[dict[str, Any]]:
    return [rollout_pod(run, uid, i) for i in range(run.spec.rollout.replicas)]


def support_objects(run: api.ReasoningRun, uid: str, *, token: str, pod_monitor: bool,
                    pod_monitor_labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Everything but the pods, in an order that lets each pod start once created: its config,
    token, identity and Services first. These stay while the run is suspended."""
    objects = [
        config_map(run, uid), ray_token_secret(run, uid, token), service_account(run, uid),
        role(run, uid), role_binding(run, uid), trainer_service(run, uid), ray_head_service(run, uid),
        network_policy(run, uid),
    ]
    if pod_monitor:
        objects.append(_pod_monitor(run, uid, pod_monitor_labels))
    return objects


def pods(run: api.ReasoningRun, uid: str, attempt: int) -> list[dict[str, Any]]:
    """Every pod of a running run: the Ray head, the rollout fleet, then the trainer gang."""
    return [ray_head_pod(run, uid), *rollout_pods(run, uid), *trainer_pods(run, uid, attempt)]


def children(run: api.ReasoningRun, uid: str, *, token: str, attempt: int, pod_monitor: bool) -> list[dict[str, Any]]:
    """Every object the running run needs, in creation order."""
    return support_objects(run, uid, token=token, pod_monitor=pod_monitor) + pods(run, uid, attempt)
