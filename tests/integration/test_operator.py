"""The operator against the real control plane: a ReasoningRun becomes its children, is scheduled,
runs (kwok), scales, suspends and resumes, restarts its trainer gang, fails past its backoff limit,
succeeds, and is garbage-collected — each asserted on the objects and the status the API server holds.

The operator runs as a process (`kopf run`, the chart's command) with the chart's ServiceAccount
token, so every call it makes is checked against the RBAC `helm install` grants. Pods never really
start here: kwok marks them Running, and its stages end them when a test labels them.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import ROOT, Cluster, Operator, _free_port, hack_module, minimal_manifest
from tests.speed import scaled
from zeroth import api
from zeroth.operator import builders

pytestmark = pytest.mark.cluster

FAIL = "pod-container-running-failed.stage.kwok.x-k8s.io"  # kwok's chaos stage: a Running pod fails
EXIT_ZERO = "zeroth.dev/kwok-exit"  # hack/kwok-stages/pod-exit-zero.yaml: a Running pod succeeds


def run_manifest(name: str, *, trainers: int = 2, trainer_gpus: int = 4, rollouts: int = 2, rollout_gpus: int = 2,
                 **spec) -> dict:
    m = minimal_manifest(name)
    m["spec"]["trainer"] = {"replicas": trainers, "gpusPerReplica": trainer_gpus}
    m["spec"]["rollout"] = {"replicas": rollouts, "gpusPerReplica": rollout_gpus,
                            "engine": "vllm" if rollout_gpus else "hf"}
    m["spec"].update(spec)
    return m


def wait_for(what: str, check, timeout: float = 60.0, operator: Operator | None = None):
    """Polls `check` until it returns something true; fails after `timeout` reference seconds
    (scaled here: callers pass unscaled seconds)."""
    deadline = time.monotonic() + scaled(timeout)
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    tail = operator.log.read_text()[-3000:] if operator else ""
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}\n{tail}")


def run_of(cluster: Cluster, ns: str, name: str) -> dict:
    return cluster.get("reasoningrun", name, "-n", ns)


def pods_of(cluster: Cluster, ns: str, name: str, role: str | None = None) -> list[dict]:
    selector = f"zeroth.dev/run={name}" + (f",zeroth.dev/role={role}" if role else "")
    return cluster.get("pods", "-n", ns, "-l", selector)["items"]


def live(pods: list[dict]) -> list[dict]:
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def phase_is(cluster: Cluster, ns: str, name: str, phase: str):
    def check():
        status = run_of(cluster, ns, name).get("status") or {}
        return status if status.get("phase") == phase else None
    return check


def events_of(cluster: Cluster, ns: str, name: str) -> list[tuple[str, str]]:
    items = cluster.get("events", "-n", ns, "--field-selector", f"involvedObject.name={name},involvedObject.kind=ReasoningRun")
    return [(e["type"], e["reason"]) for e in items["items"]]


def running(cluster: Cluster, operator: Operator, ns: str, name: str, **kw) -> dict:
    cluster.apply(run_manifest(name, **kw), "-n", ns)
    return wait_for(f"{name} Running", phase_is(cluster, ns, name, "Running"), operator=operator)


def test_apply_creates_every_child_schedules_gpu_pods_and_reaches_running(crd, operator, namespace):
    c, ns = crd, namespace
    status = running(c, operator, ns, "alpha")
    run = run_of(c, ns, "alpha")
    uid = run["metadata"]["uid"]

    expected = {
        "configmap": ["alpha-config"], "secret": [f"alpha-ray-token-{uid[:8]}"], "serviceaccount": ["alpha"],
        "role": ["alpha"], "rolebinding": ["alpha"], "service": ["alpha-ray-head", "alpha-trainer"],
        "networkpolicy": ["alpha"],
        "pod": ["alpha-ray-head", "alpha-rollout-0", "alpha-rollout-1", "alpha-trainer-0", "alpha-trainer-1"],
    }
    for kind, names in expected.items():
        items = c.get(kind, "-n", ns, "-l", "zeroth.dev/run=alpha")["items"]
        assert sorted(o["metadata"]["name"] for o in items) == names, kind
        for o in items:
            refs = o["metadata"]["ownerReferences"]
            assert refs == [{"apiVersion": "zeroth.dev/v1alpha1", "kind": "ReasoningRun", "name": "alpha", "uid": uid,
                             "controller": True, "blockOwnerDeletion": True}], (kind, o["metadata"]["name"])
            assert o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "zeroth-operator"

    # the real scheduler put every GPU pod on a GPU node, the head (no GPU) on a CPU node; kwok runs them
    for p in pods_of(c, ns, "alpha"):
        node, role = p["spec"]["nodeName"], p["metadata"]["labels"]["zeroth.dev/role"]
        assert node.startswith("gpu-" if role in ("trainer", "rollout") else "cpu-"), (p["metadata"]["name"], node)
        assert p["status"]["phase"] == "Running"
    trainer0 = next(p for p in pods_of(c, ns, "alpha", "trainer") if p["metadata"]["name"] == "alpha-trainer-0")
    assert trainer0["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"

    # status: phase, standard conditions, counts; events for each transition; printer columns
    assert status["observedGeneration"] == run["metadata"]["generation"]
    assert status["trainer"] == {"desired": 2, "ready": 2}
    assert status["rollout"]["desired"] == 2 and status["rollout"]["ready"] == 2
    conds = {cond["type"]: cond["status"] for cond in status["conditions"]}
    assert conds == {"Ready": "True", "Progressing": "True", "Suspended": "False", "Succeeded": "False", "Failed": "False",
                     "Stalled": "False"}
    assert all(cond["observedGeneration"] == run["metadata"]["generation"] for cond in status["conditions"])
    assert status["startTime"]
    reasons = [r for _, r in events_of(c, ns, "alpha")]
    assert "Running" in reasons and reasons.index("Running") > (reasons.index("Initializing") if "Initializing" in reasons else -1)
    table = c.kubectl("get", "rr", "alpha", "-n", ns).stdout.split("\n")
    header, row = table[0].split(), table[1].split()
    assert row[header.index("PHASE")] == "Running"


def test_scale_resizes_the_rollout_fleet(crd, operator, namespace):
    c, ns = crd, namespace
    running(c, operator, ns, "scaly", rollouts=1)
    c.kubectl("scale", "rr/scaly", "--replicas=3", "-n", ns)
    wait_for("3 rollout pods", lambda: len(live(pods_of(c, ns, "scaly", "rollout"))) == 3, operator=operator)
    wait_for("status.rollout 3/3", lambda: (run_of(c, ns, "scaly")["status"]["rollout"] | {}).get("ready") == 3)
    c.kubectl("scale", "rr/scaly", "--replicas=1", "-n", ns)
    wait_for("1 rollout pod", lambda: [p["metadata"]["name"] for p in pods_of(c, ns, "scaly", "rollout")] == ["scaly-rollout-0"],
             operator=operator)
    status = run_of(c, ns, "scaly")["status"]
    assert status["rollout"]["desired"] == 1
    assert len(live(pods_of(c, ns, "scaly", "trainer"))) == 2  # the trainer gang untouched
    # the scale subresource reads back through the status selector
    scale = json.loads(c.kubectl("get", "--raw", f"/apis/zeroth.dev/v1alpha1/namespaces/{ns}/reasoningruns/scaly/scale").stdout)
    assert scale["spec"]["replicas"] == 1 and scale["status"]["selector"] == "zeroth.dev/run=scaly,zeroth.dev/role=rollout"


def test_suspend_frees_the_pods_keeps_config_and_resume_brings_them_back(crd, operator, namespace):
    c, ns = crd, namespace
    running(c, operator, ns, "nap")
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods_of(c, ns, "nap")}
    c.kubectl("patch", "rr", "nap", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    status = wait_for("Suspended", phase_is(c, ns, "nap", "Suspended"), operator=operator)
    wait_for("no pods", lambda: pods_of(c, ns, "nap") == [], operator=operator)
    assert {cond["type"]: cond["status"] for cond in status["conditions"]}["Suspended"] == "True"
    assert c.get("configmap", "nap-config", "-n", ns)["data"]["run.json"]
    token = builders.token_secret_name("nap", run_of(c, ns, "nap")["metadata"]["uid"])
    assert c.kubectl("get", "secret", token, "-n", ns, "-o", "name").stdout.strip() == f"secret/{token}"

    c.kubectl("patch", "rr", "nap", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    wait_for("Running again", phase_is(c, ns, "nap", "Running"), operator=operator)
    after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods_of(c, ns, "nap")}
    assert sorted(after) == sorted(before) and not set(after.values()) & set(before.values())
    assert [r for _, r in events_of(c, ns, "nap")].count("Suspended") == 1


def test_a_failed_trainer_restarts_the_gang_then_backoff_limit_fails_the_run(crd, operator, namespace):
    c, ns = crd, namespace
    running(c, operator, ns, "flaky", backoffLimit=1)
    first = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods_of(c, ns, "flaky", "trainer")}
    fleet = {p["metadata"]["uid"] for p in pods_of(c, ns, "flaky", "rollout")}
    c.kubectl("label", "pod", "flaky-trainer-1", "-n", ns, f"{FAIL}=true")

    def new_gang():
        pods = live(pods_of(c, ns, "flaky", "trainer"))
        return (len(pods) == 2 and all(p["metadata"]["labels"]["zeroth.dev/attempt"] == "1" for p in pods)
                and all(p["status"].get("phase") == "Running" for p in pods) and pods)
    gang = wait_for("the gang's second attempt running", new_gang, operator=operator)
    assert not {p["metadata"]["uid"] for p in gang} & set(first.values())  # both ranks replaced, not just the failed one
    assert {p["metadata"]["uid"] for p in pods_of(c, ns, "flaky", "rollout")} == fleet  # the fleet kept
    status = wait_for("Running after the restart", phase_is(c, ns, "flaky", "Running"), operator=operator)
    assert status["restarts"] == 1
    assert ("Warning", "GangRestart") in events_of(c, ns, "flaky")

    assert sorted(p["metadata"]["name"] for p in gang) == ["flaky-trainer-0-1", "flaky-trainer-1-1"]  # attempt 1

    c.kubectl("label", "pod", "flaky-trainer-0-1", "-n", ns, f"{FAIL}=true")
    status = wait_for("Failed", phase_is(c, ns, "flaky", "Failed"), operator=operator)
    assert status["restarts"] == 1 and status["completionTime"]
    assert "flaky-trainer-0-1 failed" in status["message"] and "backoff limit of 1" in status["message"]
    assert {cond["type"]: cond["status"] for cond in status["conditions"]}["Failed"] == "True"
    assert ("Warning", "Failed") in events_of(c, ns, "flaky")
    # every pod that still ran is deleted, the GPUs freed; the failed pod stays for its logs
    wait_for("only the failed trainer pod left", lambda: [p["metadata"]["name"] for p in live(pods_of(c, ns, "flaky"))] == [
        "flaky-trainer-0-1"], operator=operator)


def test_the_run_succeeds_when_every_trainer_exits_zero(crd, operator, namespace):
    c, ns = crd, namespace
    running(c, operator, ns, "done", trainers=2, trainer_gpus=0, rollouts=1, rollout_gpus=0)
    for p in pods_of(c, ns, "done", "trainer"):
        c.kubectl("label", "pod", p["metadata"]["name"], "-n", ns, f"{EXIT_ZERO}=0")
    status = wait_for("Succeeded", phase_is(c, ns, "done", "Succeeded"), operator=operator)
    assert status["completionTime"]
    wait_for("the head and fleet deleted", lambda: [p["metadata"]["name"] for p in live(pods_of(c, ns, "done"))] == [
        "done-trainer-0", "done-trainer-1"], operator=operator)
    assert ("Normal", "Succeeded") in events_of(c, ns, "done")


def test_a_finished_run_is_deleted_ttl_seconds_after_it_finishes_with_its_children(crd, operator, namespace):
    """spec.ttlSecondsAfterFinished, with the chart's RBAC; its pods carry volumes of their own
    (admitted under Pod Security restricted, as the namespace enforces)."""
    c, ns = crd, namespace
    volumes = {"volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}},
                           {"name": "extra", "configMap": {"name": "absent", "optional": True}}],
               "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"},
                                {"name": "extra", "mountPath": "/etc/extra", "readOnly": True}]}
    m = run_manifest("brief", trainers=1, trainer_gpus=0, rollouts=1, rollout_gpus=0, ttlSecondsAfterFinished=2)
    m["spec"]["trainer"].update(volumes)
    m["spec"]["rollout"].update(volumes)
    c.apply(m, "-n", ns)
    wait_for("brief Running", phase_is(c, ns, "brief", "Running"), operator=operator)
    for p in pods_of(c, ns, "brief", "trainer") + pods_of(c, ns, "brief", "rollout"):
        assert "/scratch" in [v["mountPath"] for v in p["spec"]["containers"][0]["volumeMounts"]], p["metadata"]["name"]
    (trainer,) = pods_of(c, ns, "brief", "trainer")
    finished = time.monotonic()  # before the label: the trainer cannot finish earlier
    c.kubectl("label", "pod", trainer["metadata"]["name"], "-n", ns, f"{EXIT_ZERO}=0")
    wait_for("the run deleted", lambda: c.kubectl("get", "rr", "brief", "-n", ns, check=False).returncode != 0,
             timeout=30, operator=operator)
    assert time.monotonic() - finished >= 2  # not before its TTL
    assert ("Normal", "Succeeded") in events_of(c, ns, "brief")  # it finished first (Events outlive their run)
    kinds = "configmap,secret,serviceaccount,service,pod"
    wait_for("its children garbage-collected",
             lambda: c.get(kinds, "-n", ns, "-l", "zeroth.dev/run=brief")["items"] == [], timeout=90, operator=operator)


def bound_claim(c: Cluster, ns: str, claim: str) -> str:
    """A ReadWriteMany claim bound statically to a PersistentVolume of its own (returned: delete it)."""
    pv = f"{ns}-{claim}"
    c.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
             "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                      "persistentVolumeReclaimPolicy": "Retain", "csi": {"driver": "example.csi", "volumeHandle": pv},
                      "claimRef": {"namespace": ns, "name": claim}}})
    c.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": ns},
             "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                      "resources": {"requests": {"storage": "1Gi"}}}})
    return pv


def test_a_runs_pods_share_its_model_cache_claim(crd, operator, namespace):
    """spec.modelCache on a real control plane: a claim bound (statically, to a PersistentVolume of
    its own) and mounted by every trainer and rollout pod, which Pod Security restricted admits and
    the scheduler places."""
    c, ns = crd, namespace
    pv = bound_claim(c, ns, "models")
    try:
        running(c, operator, ns, "cached", trainers=2, trainer_gpus=0, rollouts=1, rollout_gpus=0,
                modelCache={"volumeClaimName": "models"})
        pods = pods_of(c, ns, "cached", "trainer") + pods_of(c, ns, "cached", "rollout")
        assert len(pods) == 3
        for p in pods:
            assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "models"}} in p["spec"]["volumes"]
            env = {e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]}
            assert env["HF_HOME"] == "/cache/models/huggingface", p["metadata"]["name"]
    finally:
        c.kubectl("delete", "pv", pv, "--wait=false", check=False)


def test_deleting_the_run_garbage_collects_every_child(crd, operator, namespace):
    c, ns = crd, namespace
    running(c, operator, ns, "gone")
    c.kubectl("delete", "rr", "gone", "-n", ns, "--wait=true", f"--timeout={scaled(60):.0f}s")
    kinds = "configmap,secret,serviceaccount,role,rolebinding,service,networkpolicy,pod"

    def nothing_left():
        return [o["metadata"]["name"] for o in c.get(kinds, "-n", ns, "-l", "zeroth.dev/run=gone")["items"]] == []
    wait_for("the garbage collector", nothing_left, timeout=90)


def test_gpu_time_and_cost_are_the_gpu_pods_requests_times_their_time(crd, operator, namespace):
    """status.compute and the operator's zeroth_gpu_seconds / zeroth_cost against the kwok GPU pods'
    own start and finish times: 2 GPUs from startTime to the trainer's finishedAt, after a first
    trainer pod was deleted (the gang restarts): what it held is kept once, in `closed`."""
    c, ns = crd, namespace
    running(c, operator, ns, "costly", trainers=1, trainer_gpus=2, rollouts=1, rollout_gpus=0,
            cost={"pricePerGpuHour": 36.0, "currency": "EUR"})
    (first,) = pods_of(c, ns, "costly", "trainer")
    first_start = datetime.fromisoformat(first["status"]["startTime"])
    # a running pod is counted to the last whole minute of the clock: wait for a count of the first
    # pod past one (the first :00 after its start, seen at the operator's next pass: its resync is
    # every 60 s)
    wait_for("the first pod's GPU time counted", lambda: (
        (run_of(c, ns, "costly")["status"].get("compute") or {}).get("pods", {}).get(first["metadata"]["uid"])),
        timeout=150, operator=operator)
    c.kubectl("delete", "pod", first["metadata"]["name"], "-n", ns, "--wait=true")
    deleted = datetime.now(timezone.utc)
    wait_for("the restarted gang", lambda: [p for p in live(pods_of(c, ns, "costly", "trainer"))
                                            if p["metadata"]["uid"] != first["metadata"]["uid"]
                                            and p["status"].get("phase") == "Running"], operator=operator)
    (trainer,) = live(pods_of(c, ns, "costly", "trainer"))
    closed = wait_for("the first pod's time closed", lambda: (
        (run_of(c, ns, "costly")["status"].get("compute") or {}).get("pods", {}).get(first["metadata"]["uid"]) is None
        and run_of(c, ns, "costly")["status"]["compute"]), operator=operator)["closed"]
    # `closed` is what the first pod held at the operator's last count of it, checked against the
    # pod's own times: 2 GPUs × (a whole minute between its start and its deletion − its start)
    whole_minute = first_start + timedelta(seconds=closed / 2)
    assert closed > 0 and whole_minute.second == 0 and first_start < whole_minute <= deleted, (closed, first_start, deleted)
    time.sleep(3)  # some GPU time to count
    c.kubectl("label", "pod", trainer["metadata"]["name"], "-n", ns, f"{EXIT_ZERO}=0")
    wait_for("costly Succeeded", phase_is(c, ns, "costly", "Succeeded"), operator=operator)
    (trainer,) = pods_of(c, ns, "costly", "trainer")
    start = datetime.fromisoformat(trainer["status"]["startTime"])
    end = datetime.fromisoformat(trainer["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"])
    gpus = int(trainer["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    expected = closed + gpus * (end - start).total_seconds()
    assert gpus == 2 and expected >= 2 * 3

    def counted():
        compute = run_of(c, ns, "costly")["status"].get("compute") or {}
        return compute if compute.get("gpuSeconds") == pytest.approx(expected, abs=1e-3) else None
    compute = wait_for("the trainer's GPU time in status", counted, timeout=30, operator=operator)
    assert list(compute["pods"]) == [trainer["metadata"]["uid"]] and compute["closed"] == closed  # counted once
    assert compute["cost"] == pytest.approx(expected / 3600 * 36.0, abs=1e-5) and compute["currency"] == "EUR"
    text = operator.metrics()
    assert f'zeroth_gpu_seconds_total{{namespace="{ns}",run="costly"}} {float(compute["gpuSeconds"])}' in text
    assert f'zeroth_cost_total{{currency="EUR",namespace="{ns}",run="costly"}} {float(compute["cost"])}' in text


def test_the_operator_exports_its_metrics(crd, operator, namespace):
    running(crd, operator, namespace, "counted", trainers=1, trainer_gpus=0, rollouts=1, rollout_gpus=0)
    text = operator.metrics()
    assert f'zeroth_runs{{namespace="{namespace}",phase="Running"}} 1.0' in text
    count = next(float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith('zeroth_reconcile_seconds_count{handler="reconcile"}'))
    assert count >= 3  # at least Pending, Initializing and Running were each reconciled
    # the run's own phase (1 for Running, 0 for the others) and restarts, which alerts watch
    assert f'zeroth_run_phase{{namespace="{namespace}",phase="Running",run="counted"}} 1.0' in text
    assert f'zeroth_run_phase{{namespace="{namespace}",phase="Pending",run="counted"}} 0.0' in text
    assert f'zeroth_run_restarts{{namespace="{namespace}",run="counted"}} 0.0' in text
    crd.kubectl("delete", "rr", "counted", "-n", namespace, "--wait=true", f"--timeout={scaled(60):.0f}s")
    wait_for("the run's series to end", lambda: 'run="counted"' not in operator.metrics(), timeout=30, operator=operator)


# what a run's own ServiceAccount may do: `kubectl auth can-i` (exit 0 yes, 1 no), asserted both ways
RUN_ACCOUNT_TABLE = [
    ("get", "reasoningruns.zeroth.dev/{run}", "--subresource=status", True),
    ("patch", "reasoningruns.zeroth.dev/{run}", "--subresource=status", True),
    ("patch", "reasoningruns.zeroth.dev/{other}", "--subresource=status", False),
    ("get", "reasoningruns.zeroth.dev/{other}", "--subresource=status", False),
    ("patch", "reasoningruns.zeroth.dev/{run}", None, False),  # the spec is the user's
    ("update", "reasoningruns.zeroth.dev/{run}", "--subresource=status", False),
    ("list", "reasoningruns.zeroth.dev", None, False),
    ("get", "pods", None, False),
    ("create", "pods", None, False),
    ("get", "secrets/{token}", None, False),
    ("list", "secrets", None, False),
    ("get", "configmaps/{run}-config", None, False),
    ("create", "serviceaccounts/{run}/token", None, False),
    ("create", "roles.rbac.authorization.k8s.io", None, False),
    ("get", "nodes", None, False),
]


def test_a_runs_service_account_may_write_only_its_own_runs_status(crd, operator, namespace):
    c, ns = crd, namespace
    running(c, operator, ns, "mine", trainers=1, trainer_gpus=0, rollouts=1, rollout_gpus=0)
    running(c, operator, ns, "theirs", trainers=1, trainer_gpus=0, rollouts=1, rollout_gpus=0)
    who = f"system:serviceaccount:{ns}:mine"
    wrong = []
    for verb, target, extra, allowed in RUN_ACCOUNT_TABLE:
        token = builders.token_secret_name("mine", run_of(c, ns, "mine")["metadata"]["uid"])
        args = ["auth", "can-i", verb, target.format(run="mine", other="theirs", token=token), "-n", ns, f"--as={who}"]
        args += [extra] if extra else []
        proc = c.kubectl(*args, check=False)
        assert proc.returncode in (0, 1), proc.stderr
        if (proc.returncode == 0) != allowed:
            wrong.append((verb, target, extra, "allowed" if proc.returncode == 0 else "denied"))
    assert wrong == []


def test_a_pod_monitor_where_the_prometheus_operator_api_is_served(crd, operator, namespace):
    """With the Prometheus Operator's PodMonitor CRD (from its Go module) installed, each new run
    gets a PodMonitor that the real CRD schema accepts, selecting the run's pods' metrics port."""
    c, ns = crd, namespace
    path = subprocess.run([str(ROOT / "hack" / "monitoring-crds.sh")], check=True, capture_output=True, text=True).stdout.strip()
    c.kubectl("apply", "--server-side", "-f", path)
    try:
        c.kubectl("wait", "--for=condition=Established", f"--timeout={scaled(60):.0f}s", "crd/podmonitors.monitoring.coreos.com")
        running(c, operator, ns, "watched", trainers=1, trainer_gpus=0, rollouts=1, rollout_gpus=0)
        monitor = wait_for("the PodMonitor", lambda: c.kubectl("get", "podmonitor", "watched", "-n", ns, "-o", "json",
                                                              check=False).stdout, operator=operator)
        monitor = json.loads(monitor)
        assert monitor["spec"]["selector"] == {"matchLabels": {"zeroth.dev/run": "watched"}}
        assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics"}]
        assert monitor["metadata"]["ownerReferences"][0]["name"] == "watched"
        trainer = pods_of(c, ns, "watched", "trainer")[0]
        ports = {p["name"]: p["containerPort"] for p in trainer["spec"]["containers"][0]["ports"]}
        assert ports["metrics"] == 9400
    finally:
        c.kubectl("delete", "crd", "podmonitors.monitoring.coreos.com", "--wait=false", check=False)


def test_a_queued_run_labels_every_pod_as_one_kueue_pod_group(crd, operator, namespace):
    """Kueue admits pods it has no integration for as a plain pod group: queue name and group name
    labels, the group's total count annotation. (test_kueue.py has a real Kueue admit such groups.)"""
    c, ns = crd, namespace
    running(c, operator, ns, "queued", trainers=2, trainer_gpus=4, rollouts=2, rollout_gpus=1, queueName="team-a")
    pods = pods_of(c, ns, "queued")
    assert len(pods) == 5
    for p in pods:
        assert p["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        assert p["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] == "queued-0"  # <run>-<resumes>
        assert p["metadata"]["annotations"]["kueue.x-k8s.io/pod-group-total-count"] == "5"


ON_REAL_NODE = {"nodeSelector": {"zeroth.dev/node": "real"},
                "tolerations": [{"key": "zeroth.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}]}


@pytest.mark.parametrize("case, trainer, reasons", [
    ("unschedulable", {"gpusPerReplica": 16}, ("Unschedulable",)),  # 8 GPUs is the most any node has
    ("no-image", {**ON_REAL_NODE, "image": "nowhere.invalid/zeroth:1"}, ("ErrImagePull", "ImagePullBackOff")),
    ("no-secret", {**ON_REAL_NODE, "image": "zeroth.dev/busybox:test", "imagePullPolicy": "Never",
                   "envFrom": [{"secretRef": {"name": "not-created"}}]}, ("CreateContainerConfigError",)),
    ("no-volume", {**ON_REAL_NODE, "image": "zeroth.dev/busybox:test", "imagePullPolicy": "Never",
                   "volumes": [{"name": "keys", "secret": {"secretName": "not-created"}}],
                   "volumeMounts": [{"name": "keys", "mountPath": "/keys"}]}, ("FailedMount",)),
])
def test_a_pod_held_back_says_why_in_get_describe_and_an_event(crd, operator, namespace, case, trainer, reasons):
    """The real scheduler's or the real node's kubelet's reason for a pod that cannot start reaches
    the run: its message (`kubectl get rr -o wide`), a Stalled condition and a Warning Event."""
    c, ns = crd, namespace
    m = run_manifest(case, trainers=1, trainer_gpus=0, rollouts=1, rollout_gpus=0)
    m["spec"]["trainer"].update(trainer)
    c.apply(m, "-n", ns)

    def stalled():
        status = run_of(c, ns, case).get("status") or {}
        cond = next((x for x in status.get("conditions") or [] if x["type"] == "Stalled"), {})
        return cond if cond.get("status") == "True" and cond.get("reason") in reasons else None
    cond = wait_for(f"{case}: Stalled with {reasons}", stalled, timeout=90, operator=operator)
    assert f"{case}-trainer-0" in cond["message"]
    wide = c.kubectl("get", "rr", case, "-n", ns, "-o", "wide").stdout
    assert f"pod {case}-trainer-0: {cond['reason']}" in wide, wide
    described = c.kubectl("describe", "rr", case, "-n", ns).stdout
    assert "Stalled" in described and cond["reason"] in described, described
    assert any(t == "Warning" and r in reasons for t, r in events_of(c, ns, case))
    if case == "unschedulable":
        assert "Insufficient nvidia.com/gpu" in cond["message"]  # the scheduler's own words
    if case in ("no-secret", "no-volume"):
        assert "not-created" in cond["message"]  # the kubelet's: which Secret


GKE = {"cloud.google.com/gke-accelerator": "nvidia-l4"}


def trainer_node(c: Cluster, ns: str, name: str):
    pods = [p for p in pods_of(c, ns, name, "trainer") if p["spec"].get("nodeName")]
    return pods[0]["spec"]["nodeName"] if pods else None


@pytest.mark.parametrize("case, trainer, node", [
    ("gke", {"gpuNodeSelector": GKE}, "gpu-gke"),
    ("eks", {"gpuNodeSelector": {"k8s.amazonaws.com/accelerator": "nvidia-tesla-a10g"}}, "gpu-eks"),
    ("bare", {"gpuNodeSelector": {}, "nodeSelector": {"kubernetes.io/hostname": "gpu-bare"}}, "gpu-bare"),
])
def test_gpu_pods_go_where_the_runs_gpu_node_selector_says(crd, operator, namespace, case, trainer, node):
    """kwok GPU nodes labelled as GKE and EKS label theirs, and one with no GPU label: the run's
    selector (or none) places the trainer there, by the real scheduler."""
    c, ns = crd, namespace
    m = run_manifest(case, trainers=1, trainer_gpus=1, rollouts=1, rollout_gpus=0)
    m["spec"]["trainer"].update(trainer)
    c.apply(m, "-n", ns)
    assert wait_for(f"{case}'s trainer scheduled", lambda: trainer_node(c, ns, case), operator=operator) == node


def test_without_a_selector_for_it_a_gpu_pod_never_lands_on_an_unlabelled_gpu_node(crd, operator, namespace):
    c, ns = crd, namespace
    m = run_manifest("labelled-only", trainers=1, trainer_gpus=1, rollouts=1, rollout_gpus=0)
    m["spec"]["trainer"]["nodeSelector"] = {"kubernetes.io/hostname": "gpu-bare"}  # with the default GPU selector
    c.apply(m, "-n", ns)
    status = wait_for("Stalled: Unschedulable", lambda: next((x for x in (run_of(c, ns, "labelled-only").get("status") or {})
                                                               .get("conditions") or [] if x["type"] == "Stalled"
                                                               and x["status"] == "True"), None), operator=operator)
    assert status["reason"] == "Unschedulable" and trainer_node(c, ns, "labelled-only") is None


def test_the_operators_default_gpu_node_selector_places_runs_that_set_none(crd, operator, namespace, tmp_path):
    """The chart's gpuNodeSelector reaches the operator as ZEROTH_GPU_NODE_SELECTOR."""
    c, ns = crd, namespace
    gke_default = Operator(c, operator.kubeconfig, tmp_path / "operator.log", _free_port(), _free_port(),
                           env={"ZEROTH_GPU_NODE_SELECTOR": json.dumps(GKE)})
    operator.stop()  # one operator at a time
    try:
        gke_default.start()
        c.apply(run_manifest("defaulted", trainers=1, trainer_gpus=1, rollouts=1, rollout_gpus=0), "-n", ns)
        assert wait_for("the trainer scheduled", lambda: trainer_node(c, ns, "defaulted"), operator=gke_default) == "gpu-gke"
        frozen = json.loads(c.get("configmap", "defaulted-config", "-n", ns)["data"]["run.json"])
        assert frozen["spec"]["trainer"]["gpuNodeSelector"] == GKE  # fixed for the run's life
    finally:
        gke_default.stop()
        operator.start()


def test_an_active_deadline_fails_the_run_and_deletes_its_pods(crd, operator, namespace):
    c, ns = crd, namespace
    running(c, operator, ns, "bounded", trainers=1, trainer_gpus=0, rollouts=1, rollout_gpus=0, activeDeadlineSeconds=10)
    status = wait_for("Failed at its deadline", phase_is(c, ns, "bounded", "Failed"), timeout=40, operator=operator)
    assert "past its activeDeadlineSeconds of 10" in status["message"] and status["completionTime"]
    wait_for("its pods deleted", lambda: not live(pods_of(c, ns, "bounded")), operator=operator)
    assert ("Warning", "Failed") in events_of(c, ns, "bounded")


def test_a_startup_deadline_fails_a_run_that_cannot_be_scheduled_saying_why(crd, operator, namespace):
    c, ns = crd, namespace
    c.apply(run_manifest("never", trainers=1, trainer_gpus=16, rollouts=1, rollout_gpus=0, startupDeadlineSeconds=10),
            "-n", ns)
    status = wait_for("Failed at its start-up deadline", phase_is(c, ns, "never", "Failed"), timeout=40, operator=operator)
    assert "did not all start within startupDeadlineSeconds (10)" in status["message"]
    assert "Unschedulable" in status["message"]  # what held it, from the scheduler
    wait_for("its pods deleted", lambda: not live(pods_of(c, ns, "never")), operator=operator)


def test_a_trainer_pod_deleted_or_evicted_restarts_the_gang_and_never_counts_against_the_backoff_limit(
        crd, operator, namespace):
    from kubernetes import client, config

    c, ns = crd, namespace
    running(c, operator, ns, "shaken", trainers=2, trainer_gpus=0, rollouts=1, rollout_gpus=0, backoffLimit=0)
    wait_for("the gang seen whole", lambda: run_of(c, ns, "shaken")["status"].get("startedAttempt") == 0, operator=operator)

    def gang_of(attempt: int):
        def check():
            pods = live(pods_of(c, ns, "shaken", "trainer"))
            status = run_of(c, ns, "shaken")["status"]
            return (len(pods) == 2 and {p["metadata"]["labels"]["zeroth.dev/attempt"] for p in pods} == {str(attempt)}
                    and all(p["status"].get("phase") == "Running" for p in pods) and status["phase"] == "Running"
                    and status.get("startedAttempt") == attempt and status)
        return check

    c.kubectl("delete", "pod", "shaken-trainer-1", "-n", ns, "--wait=false")  # a person, or a drain
    status = wait_for("a new gang after the deletion", gang_of(1), timeout=90, operator=operator)
    assert (status["restarts"], status["disruptions"]) == (1, 1)

    core = client.CoreV1Api(config.new_client_from_config(str(c.kubeconfig)))
    core.create_namespaced_pod_eviction("shaken-trainer-0-1", ns, {  # what a drain or the autoscaler sends
        "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "shaken-trainer-0-1", "namespace": ns}})
    status = wait_for("a new gang after the eviction", gang_of(2), timeout=90, operator=operator)
    assert (status["restarts"], status["disruptions"]) == (2, 2)  # backoffLimit 0, and still running
    assert sum(1 for t, r in events_of(c, ns, "shaken") if (t, r) == ("Warning", "GangRestart")) >= 2


HOLD = "zeroth.dev/test-hold"  # a finalizer that keeps an object of the deleted run until the test lets go


def test_a_run_created_again_under_its_name_never_adopts_the_earlier_runs_children(crd, operator, namespace):
    """Delete a run and create one with the same name while the first one's pods and config are
    still being collected: the new run waits (saying why), adopts none of them, and then starts
    with its own config, its own pods and a run directory of its own."""
    c, ns = crd, namespace
    running(c, operator, ns, "twice", trainers=1, trainer_gpus=0, rollouts=1, rollout_gpus=0)
    old_uid = run_of(c, ns, "twice")["metadata"]["uid"]
    held = [f"pod/{p['metadata']['name']}" for p in pods_of(c, ns, "twice")] + ["configmap/twice-config"]
    for obj in held:
        c.kubectl("patch", obj, "-n", ns, "--type=merge", "-p", json.dumps({"metadata": {"finalizers": [HOLD]}}))
    try:
        # the old trainer finishes as the new run arrives: its Succeeded pod must not end the new run
        c.kubectl("label", "pod", "twice-trainer-0", "-n", ns, f"{EXIT_ZERO}=0")
        wait_for("the old trainer Succeeded", lambda: all(p["status"].get("phase") == "Succeeded"
                                                            for p in pods_of(c, ns, "twice", "trainer")))
        c.kubectl("delete", "rr", "twice", "-n", ns, "--wait=false")
        wait_for("the old run gone", lambda: not c.get("rr", "-n", ns)["items"])
        c.apply(run_manifest("twice", trainers=1, trainer_gpus=0, rollouts=1, rollout_gpus=0,
                             algorithm={"learningRate": 3e-6}), "-n", ns)
        new_uid = run_of(c, ns, "twice")["metadata"]["uid"]
        assert new_uid != old_uid

        def stalled():
            status = run_of(c, ns, "twice").get("status") or {}
            cond = next((x for x in status.get("conditions") or [] if x["type"] == "Stalled"), {})
            return status if cond.get("reason") == "EarlierRunTerminating" else None
        status = wait_for("the new run waiting for the old one's children", stalled, operator=operator)
        assert status["phase"] == "Pending" and "ConfigMap twice-config" in status["message"], status
        time.sleep(scaled(3))  # a few passes: still nothing of the new run
        assert [p["metadata"]["name"] for p in pods_of(c, ns, "twice")
                if p["metadata"]["ownerReferences"][0]["uid"] == new_uid] == []
        assert run_of(c, ns, "twice")["status"]["phase"] == "Pending"  # not Succeeded by the old trainer
        assert ("Warning", "EarlierRunTerminating") in events_of(c, ns, "twice")
    finally:
        for obj in held:  # the garbage collector may finish now (and after a failure: no namespace left stuck)
            c.kubectl("patch", obj, "-n", ns, "--type=json", "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]',
                      check=False)
    wait_for("the new run Running", phase_is(c, ns, "twice", "Running"), timeout=90, operator=operator)
    config = c.get("configmap", "twice-config", "-n", ns)
    assert config["metadata"]["ownerReferences"][0]["uid"] == new_uid
    assert json.loads(config["data"]["run.json"])["spec"]["algorithm"]["learningRate"] == 3e-6  # its own spec, not the old
    for p in pods_of(c, ns, "twice"):
        assert p["metadata"]["ownerReferences"][0]["uid"] == new_uid
    trainer = pods_of(c, ns, "twice", "trainer")[0]["spec"]["containers"][0]["command"]
    run_dir = trainer[trainer.index("--run-dir") + 1]
    assert run_dir.endswith(f"/twice/{new_uid}")  # never the old run's checkpoints
    token = {e["name"]: e for e in pods_of(c, ns, "twice", "trainer")[0]["spec"]["containers"][0]["env"]}["RAY_AUTH_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"]["name"] == builders.token_secret_name("twice", new_uid)
    stalled_now = {x["type"]: x for x in run_of(c, ns, "twice")["status"]["conditions"]}["Stalled"]
    assert stalled_now["status"] == "False"


def test_pod_settings_edited_while_suspended_reach_the_pods_when_it_resumes(crd, operator, namespace):
    """Every WHILE_SUSPENDED field, edited while the run is suspended: the config is frozen again at
    once (observedGeneration follows), and the pods of the resumed run carry each new value."""
    from tests.integration.test_crd import EDITS, _at

    c, ns = crd, namespace
    for kind, body in (("PriorityClass", {"apiVersion": "scheduling.k8s.io/v1", "value": 1000}),
                       ("RuntimeClass", {"apiVersion": "node.k8s.io/v1", "handler": "runc"})):
        c.apply({"kind": kind, "metadata": {"name": f"zeroth-edit-{ns}"}, **body})
    pv = bound_claim(c, ns, "hf-cache")
    running(c, operator, ns, "edit", trainers=1, trainer_gpus=0, rollouts=1, rollout_gpus=0)
    first = run_of(c, ns, "edit")["status"]["config"]
    c.kubectl("patch", "rr", "edit", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    wait_for("Suspended", phase_is(c, ns, "edit", "Suspended"), operator=operator)
    values = {**EDITS, "trainer.nodeSelector": {"type": "kwok"}, "rollout.nodeSelector": {"type": "kwok"},
              "priorityClassName": f"zeroth-edit-{ns}", "rollout.runtimeClassName": f"zeroth-edit-{ns}"}
    patch: dict = {"spec": {}}
    for path in api.WHILE_SUSPENDED:
        _merge_into(patch, _at(path, values[path]))
    c.kubectl("patch", "rr", "edit", "-n", ns, "--type=merge", "-p", json.dumps(patch))
    generation = run_of(c, ns, "edit")["metadata"]["generation"]
    status = wait_for("the config frozen again", lambda: (s := run_of(c, ns, "edit")["status"])
                      .get("observedGeneration") == generation and s, operator=operator)
    assert status["config"] == f"edit-config-{generation}" != first and status["phase"] == "Suspended"
    frozen = json.loads(c.get("configmap", status["config"], "-n", ns)["data"]["run.json"])["spec"]
    for path in api.WHILE_SUSPENDED:
        node = frozen
        for key in path.split("."):
            node = node[key]
        assert _holds(node, values[path]), (path, node)

    c.kubectl("patch", "rr", "edit", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    wait_for("Running again", phase_is(c, ns, "edit", "Running"), timeout=90, operator=operator)
    for role in ("trainer", "rollout"):
        pod = live(pods_of(c, ns, "edit", role))[0]
        spec, box = pod["spec"], pod["spec"]["containers"][0]
        assert box["image"] == "example.com/zeroth:2" and box["imagePullPolicy"] == "Always", role
        assert box["resources"]["requests"]["cpu"] == "2" and {"name": "NCCL_DEBUG", "value": "INFO"} in box["env"]
        assert [e["secretRef"]["name"] for e in box["envFrom"]] == ["hf"]
        assert spec["nodeSelector"] == {"type": "kwok"} and {"key": "k", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert spec["affinity"] == {"podAntiAffinity": {}} and spec["terminationGracePeriodSeconds"] == 120
        assert spec["priorityClassName"] == f"zeroth-edit-{ns}" and spec["imagePullSecrets"] == [{"name": "regcred"}]
        assert pod["metadata"]["labels"]["team"] == "a" and pod["metadata"]["annotations"]["note"] == "x"
        assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        assert {"name": "extra", "emptyDir": {}} in spec["volumes"] and {"name": "extra", "mountPath": "/extra"} in box["volumeMounts"]
        assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "hf-cache"}} in spec["volumes"]
        if role == "trainer":
            assert {v["name"]: v for v in spec["volumes"]}["config"]["configMap"]["name"] == status["config"]
        else:
            assert spec["runtimeClassName"] == f"zeroth-edit-{ns}"
    assert run_of(c, ns, "edit")["status"]["observedGeneration"] == run_of(c, ns, "edit")["metadata"]["generation"]
    for kind in ("priorityclass", "runtimeclass"):
        c.kubectl("delete", kind, f"zeroth-edit-{ns}", "--wait=false")
    c.kubectl("delete", "pv", pv, "--wait=false")


def _holds(stored, edited) -> bool:
    """`stored` (defaults filled in) carries every value of `edited`."""
    if isinstance(edited, dict):
        return isinstance(stored, dict) and all(_holds(stored.get(k), v) for k, v in edited.items())
    if isinstance(edited, list):
        return isinstance(stored, list) and len(stored) == len(edited) and all(map(_holds, stored, edited))
    return stored == edited


def _merge_into(into: dict, patch: dict) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge_into(into[key], value)
        else:
            into[key] = value


def _silence(c: Cluster, node: str) -> None:
    """A ValidatingAdmissionPolicy that turns away every write of `node`'s kubelet (here kwok): its
    lease renewals and node status, and its pods' status and final deletion. The node controller
    then finds the node unreachable, as when a machine dies or its network goes, and taints it; the
    writes of service accounts (the controller-manager's, the operator's) pass."""
    name = f"zeroth-test-silence-{node}"
    on_node = (f"(request.resource.resource == 'pods' ? (request.operation == 'DELETE' ? oldObject : object).spec.nodeName "
               f": object.metadata.name) != '{node}'")
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy", "metadata": {"name": name},
        "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": [
            {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["nodes", "nodes/status"]},
            {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE", "DELETE"], "resources": ["pods", "pods/status"]},
            {"apiGroups": ["coordination.k8s.io"], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["leases"]}]},
            "validations": [{"expression": f"{on_node} || "
                             "request.userInfo.username.startsWith('system:serviceaccount:') || "
                             "request.userInfo.username.startsWith('system:kube-controller-manager')",
                             "message": f"node {node} is lost (a test): its kubelet cannot reach the API server"}]}}
    binding = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": name}, "spec": {"policyName": name, "validationActions": ["Deny"]}}
    c.apply([policy, binding])


def test_a_trainer_rank_on_a_node_that_stops_answering_restarts_the_gang_elsewhere(crd, operator, namespace):
    """A node goes silent under a running gang: the node controller marks it unreachable and taints
    it, the taint manager evicts the ranks after their toleration (the operator's 30 s), the gang
    restarts on another node (a disruption, not counted against backoffLimit), and the lost pods,
    which no kubelet will ever confirm gone, are force-deleted: their names and DNS records free."""
    c, ns = crd, namespace
    hack = hack_module("cluster.py")
    lost, spare, pool = f"lost-{ns}", f"spare-{ns}", {"zeroth.dev/test-pool": ns}

    def node(name: str) -> dict:
        manifest = hack.node_manifest(name, gpu=False)
        manifest["metadata"]["labels"].update(pool)
        return manifest
    c.apply(node(lost))
    try:
        running(c, operator, ns, "stranded", trainers=2, trainer_gpus=0, rollouts=1, rollout_gpus=0, backoffLimit=0,
                trainer={"replicas": 2, "gpusPerReplica": 0, "nodeSelector": pool, "terminationGracePeriodSeconds": 1})
        wait_for("the gang seen whole", lambda: run_of(c, ns, "stranded")["status"].get("startedAttempt") == 0,
                 operator=operator)
        assert {p["spec"]["nodeName"] for p in pods_of(c, ns, "stranded", "trainer")} == {lost}
        c.apply(node(spare))
        _silence(c, lost)

        def evicted():
            old = [p for p in pods_of(c, ns, "stranded", "trainer") if p["metadata"]["labels"]["zeroth.dev/attempt"] == "0"]
            reasons = [x.get("reason") for p in old for x in p["status"].get("conditions", []) if x["type"] == "DisruptionTarget"]
            return reasons == ["DeletionByTaintManager"] * 2 and [p["spec"]["nodeName"] for p in old]
        assert wait_for("both ranks evicted by the taint manager", evicted, timeout=150, operator=operator) == [lost] * 2

        def new_gang():
            pods = live(pods_of(c, ns, "stranded", "trainer"))
            status = run_of(c, ns, "stranded")["status"]
            return (len(pods) == 2 and all(p["metadata"]["labels"]["zeroth.dev/attempt"] == "1"
                                           and p["status"].get("phase") == "Running" for p in pods)
                    and status["phase"] == "Running" and status)
        status = wait_for("a new gang on the spare node", new_gang, timeout=240, operator=operator)
        assert (status["restarts"], status["disruptions"]) == (1, 1)  # backoffLimit 0, and still running
        assert {p["spec"]["nodeName"] for p in live(pods_of(c, ns, "stranded", "trainer"))} == {spare}
        ready = {x["type"]: x["status"] for x in c.get("node", lost)["status"]["conditions"]}["Ready"]
        assert ready == "Unknown"
        # no kubelet confirmed them: the operator finished their deletion
        assert [p["metadata"]["name"] for p in pods_of(c, ns, "stranded", "trainer")
                if p["metadata"]["labels"]["zeroth.dev/attempt"] == "0"] == []
        assert ("Warning", "GangRestart") in events_of(c, ns, "stranded")
    finally:
        c.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy",
                  f"zeroth-test-silence-{lost}", "--ignore-not-found", check=False)
        c.kubectl("delete", "node", lost, spare, "--ignore-not-found", "--wait=false", check=False)
