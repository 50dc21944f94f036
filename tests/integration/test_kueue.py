"""A real Kueue admits a queued ReasoningRun as one gang.

Kueue (built from its Go module by hack/build-kueue.sh, started by hack/kueue.py) sees the run's
pods as a plain pod group: its webhook gates every pod at creation, it builds one Workload for the
group from the pods' own requests, and it lifts the gates of all of them at once when the
ClusterQueue has quota for the whole group. Nothing here tells Kueue about ReasoningRuns: the labels
and the annotation the operator puts on the pods are the whole interface.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, Cluster, Operator
from tests.integration.test_operator import EXIT_ZERO, FAIL, live, phase_is, pods_of, run_manifest, run_of, wait_for
from tests.speed import scaled

pytestmark = pytest.mark.cluster

GATE = "kueue.x-k8s.io/admission"
GPU = "nvidia.com/gpu"
FLAVOR = "zeroth-test-flavor"


@pytest.fixture(scope="module")
def kueue(crd: Cluster) -> Cluster:
    hack = ROOT / "hack" / "kueue.py"
    up = subprocess.run([sys.executable, str(hack), "up"], capture_output=True, text=True, timeout=scaled(1200))
    if up.returncode != 0:
        pytest.fail(f"could not start Kueue:\n{up.stderr[-4000:]}")
    crd.apply({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}})
    yield crd
    subprocess.run([sys.executable, str(hack), "down"], capture_output=True, text=True, timeout=scaled(120), check=False)


@pytest.fixture
def queue(kueue: Cluster, operator: Operator, namespace: str):
    """A ClusterQueue for this namespace only and a LocalQueue `team-a` in it; returns a function
    that sets the ClusterQueue's GPU quota. Afterwards every run is deleted while Kueue is still up
    (it removes its finalizer from the pods)."""
    c, ns, cq = kueue, namespace, f"cq-{namespace}"

    def set_gpus(n: int) -> None:
        c.apply({
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": cq},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "resourceGroups": [{"coveredResources": ["cpu", "memory", GPU], "flavors": [{"name": FLAVOR, "resources": [
                    {"name": "cpu", "nominalQuota": "1000"}, {"name": "memory", "nominalQuota": "10Ti"},
                    {"name": GPU, "nominalQuota": str(n)}]}]}],
            },
        })

    set_gpus(0)
    c.apply({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue", "metadata": {"name": "team-a", "namespace": ns},
             "spec": {"clusterQueue": cq}})
    yield set_gpus
    c.kubectl("delete", "reasoningruns", "--all", "-n", ns, "--wait=true", f"--timeout={scaled(60):.0f}s", check=False)
    wait_for("the runs' pods to be gone", lambda: not c.get("pods", "-n", ns)["items"], timeout=60)
    c.kubectl("delete", "clusterqueue", cq, "--wait=false", check=False)


def workload_of(c: Cluster, ns: str, group: str) -> dict | None:
    """The Workload Kueue made for a pod group: Kueue names it after the group."""
    return next((w for w in c.get("workloads", "-n", ns)["items"] if w["metadata"]["name"] == group), None)


def _condition(obj: dict, kind: str) -> str | None:
    return next((c["status"] for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), None)


def gated(c: Cluster, ns: str, run: str, n: int):
    """All n pods of the run exist, each held by Kueue's admission gate and bound to no node."""
    def check():
        pods = live(pods_of(c, ns, run))
        ok = len(pods) == n and all(
            GATE in [g["name"] for g in p["spec"].get("schedulingGates") or []] and not p["spec"].get("nodeName") for p in pods)
        return pods if ok else None
    return check


def group_gpus(workload: dict) -> int:
    """The GPUs the Workload asks for: each pod set's count times its pods' GPU request."""
    total = 0
    for ps in workload["spec"]["podSets"]:
        for ctr in ps["template"]["spec"]["containers"]:
            total += ps["count"] * int((ctr.get("resources") or {}).get("requests", {}).get(GPU, 0))
    return total


def gpus_in_use(c: Cluster, ns: str) -> str | None:
    """The GPUs the test's ClusterQueue counts as used (its status catches up on its own time)."""
    cq = c.get("clusterqueue", f"cq-{ns}")
    return {r["name"]: r["total"] for f in cq["status"].get("flavorsUsage") or [] for r in f["resources"]}.get(GPU)


def test_kueue_holds_the_whole_gang_until_it_fits_then_admits_it_at_once(kueue, operator, namespace, queue):
    c, ns = kueue, namespace
    queue(5)  # one GPU short of the gang: 2 trainers x 2 + 2 rollout workers x 1
    c.apply(run_manifest("gang", trainers=2, trainer_gpus=2, rollouts=2, rollout_gpus=1, queueName="team-a"), "-n", ns)

    pods = wait_for("5 gated pods", gated(c, ns, "gang", 5), operator=operator)
    for p in pods:
        assert p["metadata"]["labels"]["kueue.x-k8s.io/managed"] == "true"  # Kueue's webhook took the pod

    def pending_for_quota():
        w = workload_of(c, ns, "gang-0")
        return w if w and _condition(w, "QuotaReserved") == "False" and "insufficient" in \
            next(x["message"] for x in w["status"]["conditions"] if x["type"] == "QuotaReserved") else None
    w = wait_for("the Workload to wait for quota", pending_for_quota, operator=operator)
    assert sum(ps["count"] for ps in w["spec"]["podSets"]) == 5  # one workload for the whole group
    assert group_gpus(w) == 6
    assert w["spec"]["queueName"] == "team-a"
    assert wait_for("5 gated pods", gated(c, ns, "gang", 5))  # still none of them scheduled
    status = run_of(c, ns, "gang")["status"]
    assert status["phase"] == "Pending"
    assert status["message"].startswith("waiting for admission: 5 pods held by") and GATE in status["message"]

    queue(6)  # now the whole gang fits
    wait_for("gang Running", phase_is(c, ns, "gang", "Running"), operator=operator)
    w = wait_for("the Workload admitted", lambda: (x := workload_of(c, ns, "gang-0")) and _condition(x, "Admitted") == "True" and x)
    assert sum(a["count"] for a in w["status"]["admission"]["podSetAssignments"]) == 5
    for p in pods_of(c, ns, "gang"):
        assert not p["spec"].get("schedulingGates"), p["metadata"]["name"]
        node, role = p["spec"]["nodeName"], p["metadata"]["labels"]["zeroth.dev/role"]
        assert node.startswith("gpu-" if role in ("trainer", "rollout") else "cpu-"), (p["metadata"]["name"], node)
    wait_for("the ClusterQueue to count 6 GPUs in use", lambda: gpus_in_use(c, ns) == "6")


def test_a_second_run_waits_whole_and_is_admitted_when_the_first_is_suspended(kueue, operator, namespace, queue):
    c, ns = kueue, namespace
    queue(6)
    first = run_manifest("first", trainers=2, trainer_gpus=2, rollouts=2, rollout_gpus=1, queueName="team-a")
    c.apply(first, "-n", ns)
    wait_for("first Running", phase_is(c, ns, "first", "Running"), operator=operator)

    c.apply(run_manifest("second", trainers=1, trainer_gpus=4, rollouts=2, rollout_gpus=1, queueName="team-a"), "-n", ns)
    wait_for("second's 4 pods gated", gated(c, ns, "second", 4), operator=operator)
    wait_for("second's Workload waiting for quota",
             lambda: (w := workload_of(c, ns, "second-0")) and _condition(w, "QuotaReserved") == "False")
    assert run_of(c, ns, "second")["status"]["phase"] == "Pending"

    # suspending the first run deletes its pods and ends its pod group: Kueue finishes the group's
    # Workload, releases the quota and admits the second
    c.kubectl("patch", "reasoningrun", "first", "-n", ns, "--type=merge", "-p", json.dumps({"spec": {"suspend": True}}))
    wait_for("first Suspended", phase_is(c, ns, "first", "Suspended"), operator=operator)
    wait_for("second Running", phase_is(c, ns, "second", "Running"), operator=operator)
    wait_for("first's pods gone", lambda: not pods_of(c, ns, "first"))  # Kueue let them go

    # resuming the first queues it again as a new group, whole: none of its pods runs until the
    # second run is deleted (its pods end their group on the way out)
    c.kubectl("patch", "reasoningrun", "first", "-n", ns, "--type=merge", "-p", json.dumps({"spec": {"suspend": False}}))
    pods = wait_for("first's 5 pods gated again", gated(c, ns, "first", 5), operator=operator)
    assert {p["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] for p in pods} == {"first-1"}
    assert run_of(c, ns, "first")["status"]["phase"] == "Pending"
    assert run_of(c, ns, "first")["status"]["resumes"] == 1
    c.kubectl("delete", "reasoningrun", "second", "-n", ns)
    wait_for("first Running again", phase_is(c, ns, "first", "Running"), timeout=90, operator=operator)
    wait_for("second's pods gone", lambda: not pods_of(c, ns, "second"))


def test_a_gang_restart_stays_admitted_and_success_releases_the_quota(kueue, operator, namespace, queue):
    c, ns = kueue, namespace
    queue(6)
    c.apply(run_manifest("flaky", trainers=2, trainer_gpus=2, rollouts=2, rollout_gpus=1, queueName="team-a",
                         backoffLimit=2), "-n", ns)
    wait_for("flaky Running", phase_is(c, ns, "flaky", "Running"), operator=operator)
    admitted = wait_for("the Workload admitted", lambda: (w := workload_of(c, ns, "flaky-0")) and _condition(w, "Admitted") == "True" and w)

    # one trainer fails: the new attempt's pods replace the old ones inside the admitted group, with
    # no new queueing (the quota was never given back)
    c.kubectl("label", "pod", "flaky-trainer-1", "-n", ns, f"{FAIL}=true")

    def restarted():
        trainers = live(pods_of(c, ns, "flaky", "trainer"))
        status = run_of(c, ns, "flaky")["status"]
        return (status["restarts"] == 1 and status["phase"] == "Running" and len(trainers) == 2
                and all(p["metadata"]["labels"]["zeroth.dev/attempt"] == "1" for p in trainers))
    wait_for("the gang restarted and Running", restarted, operator=operator)
    w = workload_of(c, ns, "flaky-0")
    assert w["metadata"]["uid"] == admitted["metadata"]["uid"] and _condition(w, "Admitted") == "True"
    assert _condition(w, "Evicted") != "True"
    wait_for("the failed attempt's pods gone", lambda: len(pods_of(c, ns, "flaky", "trainer")) == 2)  # Kueue let go

    # every trainer exits 0: the run Succeeded, its Ray pods end the group, Kueue finishes the
    # Workload and the ClusterQueue's GPUs are free again
    for p in live(pods_of(c, ns, "flaky", "trainer")):
        c.kubectl("label", "pod", p["metadata"]["name"], "-n", ns, f"{EXIT_ZERO}=0")
    wait_for("flaky Succeeded", phase_is(c, ns, "flaky", "Succeeded"), operator=operator)

    wait_for("the Workload finished", lambda: (w := workload_of(c, ns, "flaky-0")) is None or _condition(w, "Finished") == "True")
    wait_for("the ClusterQueue's GPUs free", lambda: gpus_in_use(c, ns) == "0")
    assert sorted(p["metadata"]["name"] for p in pods_of(c, ns, "flaky")) == ["flaky-trainer-0-1", "flaky-trainer-1-1"]
