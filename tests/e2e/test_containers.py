"""Zeroth in real containers: the image `make image` built, run by the real node's kubelet and
containerd (hack/node.py), installed with `helm install` and driven with `kubectl apply`.

The operator runs from the chart as a container on the real node, its probes passing. A CPU variant
of the countdown example is pinned to that node: two trainer pods (world size 2, rendezvous through
the headless Service's DNS names), the Ray head and two rollout pods, each a real container under a
read-only root filesystem as uid 1000. Checkpoints and exports go to a shared claim, a hostPath
volume on this host. A trainer pod deleted while it trains (its container killed) restarts the
gang, which resumes from the last checkpoint; the run's NetworkPolicy keeps other pods off Ray's
and the rendezvous ports.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests import speed
from tests.conftest import ROOT, Cluster, hack_module
from tests.e2e.conftest import manifest, until
from zeroth import api, promql
from zeroth.operator import builders

pytestmark = [pytest.mark.e2e, pytest.mark.cluster,
              pytest.mark.skipif(os.geteuid() != 0, reason="the real node and make image need root")]


HACK = hack_module("cluster.py")
NODE_SELECTOR = {HACK.REAL_NODE_LABEL: HACK.REAL_NODE_LABEL_VALUE}
TOLERATIONS = [{"key": HACK.REAL_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}]
# The real node has this machine's 2 CPUs: small requests, so the operator, the Ray head and four
# engine pods fit together.
SMALL = {"requests": {"cpu": "100m", "memory": "256Mi"}}
RELEASE = "zeroth"
OPERATOR_SELECTOR = "app.kubernetes.io/component=operator"
MAX_STEPS = 100  # about 2 s a step here: long enough for scaling, a kill, probes and a suspension mid-run


def sh(cluster: Cluster, *args: str, timeout: float = 120) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, env=cluster.env(), timeout=speed.scaled(timeout))
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc.stdout


@pytest.fixture(scope="module")
def image(crd: Cluster) -> str:
    """The image, built (a no-op when `make test` built it) and loaded into the real node."""
    archive = sh(crd, "make", "-s", "-C", str(ROOT), "image", timeout=1800).strip().splitlines()[-1]
    sh(crd, os.environ.get("PYTHON", "python3"), str(ROOT / "hack" / "cluster.py"), "load-image", archive,
       api.DEFAULT_IMAGE, timeout=900)
    return api.DEFAULT_IMAGE


def running_containers(namespace: str) -> list[str]:
    """containerd's running containers (tasks) on the real node of pods in `namespace`, sandboxes
    included, as the runtime itself lists them (the CRI labels each with its pod's namespace)."""
    node = HACK.node.Node(HACK, HACK.node_dir())
    ids = set(node.ctr("containers", "list", "--quiet", f'labels."io.kubernetes.pod.namespace"=={namespace}').stdout.split())
    tasks = [line.split() for line in node.ctr("tasks", "list").stdout.splitlines()[1:]]
    return [t[0] for t in tasks if len(t) >= 3 and t[0] in ids and t[2] == "RUNNING"]


def pods(cluster: Cluster, ns: str, selector: str) -> list[dict]:
    return cluster.get("pods", "-n", ns, "-l", selector)["items"]


def describe(cluster: Cluster, ns: str) -> str:
    """What a failure shows: every pod's phase and container states, and the events."""
    out = []
    for p in cluster.get("pods", "-n", ns)["items"]:
        statuses = p["status"].get("initContainerStatuses", []) + p["status"].get("containerStatuses", [])
        states = [(s["name"], s.get("state"), s.get("restartCount")) for s in statuses]
        out.append(f"{p['metadata']['name']}: {p['status'].get('phase')} {states}")
        for s in statuses:  # what a container that ended badly said
            ended = s.get("lastState", {}).get("terminated") or s.get("state", {}).get("terminated")
            if ended and ended.get("exitCode"):
                flag = ["--previous"] if s.get("lastState", {}).get("terminated") else []
                log = cluster.kubectl("logs", p["metadata"]["name"], "-c", s["name"], "-n", ns, "--tail=30", *flag,
                                      check=False).stdout
                out.append(f"  {s['name']} exited {ended['exitCode']}:\n" + log)
    events = cluster.kubectl("get", "events", "-n", ns, "--sort-by=.lastTimestamp", check=False).stdout
    return "\n".join(out) + "\n" + events[-4000:]


@pytest.fixture(scope="module")
def operator_ns(crd: Cluster, image: str):
    """The chart installed as a user installs it, the operator pinned to the real node; uninstalled
    after the module (the namespace and so the operator's pod go with it)."""
    ns = f"zeroth-system-{uuid.uuid4().hex[:6]}"
    crd.apply({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": ns, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    values = Path(os.environ.get("TMPDIR", "/tmp")) / f"{ns}-values.yaml"
    values.write_text(yaml.safe_dump({"nodeSelector": NODE_SELECTOR, "tolerations": TOLERATIONS,
                                      "metrics": {"podMonitor": {"enabled": False}}}))
    crd.run("helm", "install", RELEASE, str(ROOT / "charts" / "zeroth"), "--namespace", ns, "--skip-crds",
            "-f", str(values), "--wait", f"--timeout={speed.scaled(300):.0f}s")
    yield ns
    crd.run("helm", "uninstall", RELEASE, "--namespace", ns, "--wait", f"--timeout={speed.scaled(120):.0f}s", check=False)
    crd.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    values.unlink(missing_ok=True)


@pytest.fixture
def claim(crd: Cluster, namespace: str, tmp_path):
    """A ReadWriteMany claim on a hostPath volume: a directory of this host that every pod of the run
    mounts (one node), writable by the pods' uid (a hostPath gets no fsGroup)."""
    directory = tmp_path / "volume"
    directory.mkdir()
    directory.chmod(0o777)
    pv, pvc = f"zeroth-containers-{uuid.uuid4().hex[:8]}", "shared"
    crd.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv}, "spec": {
        "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "manual",
        "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(directory), "type": "Directory"},
        "claimRef": {"namespace": namespace, "name": pvc}}})
    crd.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": pvc, "namespace": namespace},
               "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "manual", "volumeName": pv,
                        "resources": {"requests": {"storage": "1Gi"}}}})
    yield pvc, directory
    crd.kubectl("delete", "pvc", pvc, "-n", namespace, "--wait=false", check=False)
    crd.kubectl("delete", "pv", pv, "--wait=false", check=False)


def countdown(name: str, claim_name: str, **spec) -> dict:
    placement = {"gpusPerReplica": 0, "nodeSelector": NODE_SELECTOR, "tolerations": TOLERATIONS, "resources": SMALL}
    m = manifest(algorithm={"maxSteps": MAX_STEPS}, eval={"everySteps": MAX_STEPS // 2}, dataset={"evalSize": 20},
                 checkpoint={"everySteps": 2, "volumeClaimName": claim_name}, export={"volumeClaimName": claim_name},
                 trainer={"replicas": 2, **placement}, rollout={"replicas": 2, "engine": "hf", **placement})
    for key, value in spec.items():
        m["spec"][key] = {**m["spec"].get(key, {}), **value} if isinstance(value, dict) else value
    m["metadata"]["name"] = name
    return m


BROKEN = {"CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "CreateContainerConfigError",
          "CreateContainerError", "RunContainerError", "InvalidImageName"}


def broken(cluster: Cluster, ns: str, selector: str) -> list[str]:
    """The run's pods that cannot run: unschedulable, a container that could not start or that
    exited or restarted. A failure says so at once rather than at the end of a wait."""
    out = []
    for p in pods(cluster, ns, selector):
        name = p["metadata"]["name"]
        if p["metadata"].get("deletionTimestamp"):
            continue  # going away on purpose (scaled down, deleted): its container's exit is expected
        for cond in p["status"].get("conditions", []):
            if cond["type"] == "PodScheduled" and cond["status"] == "False":
                out.append(f"{name}: {cond.get('reason')}: {cond.get('message')}")
        for st in p["status"].get("containerStatuses", []):
            waiting, done = st["state"].get("waiting", {}), st["state"].get("terminated") or st.get("lastState", {}).get("terminated")
            if waiting.get("reason") in BROKEN:
                out.append(f"{name}: {waiting['reason']}: {waiting.get('message', '')}")
            elif done and done.get("exitCode") != 0:
                out.append(f"{name}: exited {done.get('exitCode')} ({done.get('reason')})")
    return out


def healthy(cluster: Cluster, ns: str, selector: str, check):
    """`check`, failing at once when a pod of the run is broken."""
    def wrapped():
        bad = broken(cluster, ns, selector)
        if bad:
            raise AssertionError("pods of the run cannot run:\n" + "\n".join(bad) + "\n" + describe(cluster, ns))
        return check()
    return wrapped


def phase(cluster: Cluster, ns: str, name: str) -> dict:
    return cluster.get("reasoningrun", name, "-n", ns).get("status") or {}


def metric_steps(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, lines) if "reward_mean" in r]


# Tries each `host:port` again and again for 20 s: a new pod is admitted once the policy enforcer has
# seen it (kube-router syncs its sets on pod events), so one early refusal proves nothing; a port
# closed to the pod stays closed the whole time.
PROBE = """
import json, socket, sys, time
opened = {target: False for target in sys.argv[1:]}
deadline = time.monotonic() + 20
while time.monotonic() < deadline and not all(opened.values()):
    for target in [t for t, ok in opened.items() if not ok]:
        host, port = target.rsplit(":", 1)
        with socket.socket() as s:
            s.settimeout(2)
            opened[target] = s.connect_ex((host, int(port))) == 0
    time.sleep(1)
print(json.dumps(opened))
"""

# Reads each URL, again and again for 20 s until it answers; prints {url: body, or null}.
FETCH = """
import json, sys, time, urllib.request
bodies = {}
for url in sys.argv[1:]:
    deadline, bodies[url] = time.monotonic() + 20, None
    while bodies[url] is None and time.monotonic() < deadline:
        try:
            bodies[url] = urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            time.sleep(1)
print(json.dumps(bodies))
"""


def probe_pod(name: str, labels: dict[str, str], targets: list[str], script: str = PROBE) -> dict:
    """A pod on the real node that runs `script` (PROBE: tries a TCP connection to each `host:port`
    and prints which opened) on `targets`."""
    restricted = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
                  "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": {
        "restartPolicy": "Never", "nodeSelector": NODE_SELECTOR, "tolerations": TOLERATIONS,
        "automountServiceAccountToken": False,
        "containers": [{"name": "probe", "image": api.DEFAULT_IMAGE, "imagePullPolicy": "IfNotPresent",
                        "command": ["python", "-c", script, *targets], "securityContext": restricted,
                        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}}}]}}


def probe(c: Cluster, probes: dict[str, tuple[str, dict[str, str]]], targets: list[str],
          script: str = PROBE) -> dict[str, dict]:
    """Runs the probe pods {pod name: (namespace, labels)} together; {pod name: what `script`
    printed}, for PROBE {target: opened}."""
    for name, (ns, labels) in probes.items():
        c.apply(probe_pod(name, labels, targets, script), "-n", ns)

    def done():
        return all(c.get("pod", name, "-n", ns)["status"].get("phase") in ("Succeeded", "Failed")
                   for name, (ns, _) in probes.items())

    until("the probe pods to finish", done, 180, lambda: "\n".join(describe(c, ns) for ns, _ in probes.values()))
    out = {}
    for name, (ns, _) in probes.items():
        log = c.kubectl("logs", name, "-n", ns).stdout
        out[name] = json.loads(log.strip().splitlines()[-1])
        c.kubectl("delete", "pod", name, "-n", ns, "--wait=false")
    return out


@pytest.mark.timeout(1800)  # the first test pays for loading the 6 GB image into the node
def test_operator_runs_in_a_container(crd, operator_ns):
    (pod,) = pods(crd, operator_ns, OPERATOR_SELECTOR)
    assert pod["spec"]["nodeName"] == HACK.REAL_NODE
    (c,) = pod["spec"]["containers"]
    assert c["image"] == api.DEFAULT_IMAGE
    (status,) = pod["status"]["containerStatuses"]
    assert status["ready"] and status["restartCount"] == 0 and "running" in status["state"], status
    assert status["imageID"], status  # containerd ran the image it holds


def operator_restarts(c: Cluster, ns: str) -> int:
    (pod,) = pods(c, ns, OPERATOR_SELECTOR)
    return pod["status"]["containerStatuses"][0]["restartCount"]


@pytest.mark.timeout(2400)
def test_countdown_in_containers_killed_and_suspended(crd, operator_ns, namespace, claim):
    c, ns = crd, namespace
    claim_name, volume = claim
    name = "containers"
    t0 = time.monotonic()
    c.apply(countdown(name, claim_name), "-n", ns)
    run_dir = volume / name / c.get("rr", name, "-n", ns)["metadata"]["uid"]  # keyed by the run's uid

    def explain() -> str:
        logs = c.kubectl("logs", "-n", operator_ns, "-l", OPERATOR_SELECTOR, "--tail=60", check=False).stdout
        return describe(c, ns) + "\n---- operator:\n" + logs

    selector = f"zeroth.dev/run={name}"
    until("every pod Running", healthy(c, ns, selector, lambda: len([p for p in pods(c, ns, selector)
                                                if p["status"].get("phase") == "Running"]) == 5), 600, explain)
    assert len(running_containers(ns)) == 10, describe(c, ns)  # each pod's container and its sandbox, as containerd sees them
    for p in pods(c, ns, selector):
        assert p["spec"]["nodeName"] == HACK.REAL_NODE, p["metadata"]["name"]
    # training has started and checkpointed (every 2 steps)
    until("step 3", healthy(c, ns, selector, lambda: any(r["step"] >= 3 for r in metric_steps(run_dir))), 900, explain)
    t_train = time.monotonic()

    # kubectl scale, down and up: the fleet follows its pods mid-run, without a restart
    rollouts = f"{selector},zeroth.dev/role=rollout"
    c.kubectl("scale", f"reasoningrun/{name}", "-n", ns, "--replicas=1")
    until("the fleet down to 1 worker", healthy(c, ns, selector, lambda: len(pods(c, ns, rollouts)) == 1 and any(
        r.get("rollout_workers") == 1 for r in metric_steps(run_dir))), 300, explain)
    c.kubectl("scale", f"reasoningrun/{name}", "-n", ns, "--replicas=3")
    until("the fleet up to 3 workers", healthy(c, ns, selector, lambda: any(
        r.get("rollout_workers") == 3 for r in metric_steps(run_dir))), 600, explain)
    assert phase(c, ns, name).get("restarts", 0) == 0, "scaling restarted the gang"

    # a real kill: the pod deleted, its container stopped by the kubelet; the gang restarts
    c.kubectl("delete", "pod", f"{name}-trainer-1", "-n", ns, "--wait=false")
    until("status.restarts 1", lambda: phase(c, ns, name).get("restarts", 0) >= 1, 300, explain)
    # the gang restarts at once on the deletion (a disruption), while the old rank 0 may still
    # finish a step: count steps from when the new gang runs
    new_gang = f"{selector},zeroth.dev/role=trainer,zeroth.dev/attempt=1"
    until("the new gang running", lambda: [p["status"].get("phase") for p in pods(c, ns, new_gang)
                                              if not p["metadata"].get("deletionTimestamp")] == ["Running"] * 2, 600, explain)
    seen = len(metric_steps(run_dir))
    until("a step after the restart", lambda: len(metric_steps(run_dir)) > seen, 900, explain)

    # each rollout pod serves its own worker's /metrics on the port its PodMonitor scrapes, read from
    # a pod on the node (the host has no route into the node's pod network): the tokens it
    # generated, the weights it holds, its verifier's counters
    readers = itertools.count()

    def worker_metrics() -> dict[str, dict] | None:
        """Each Running rollout pod's /metrics samples, by pod; None until all 3 answer."""
        urls = {p["metadata"]["name"]: f"http://{p['status']['podIP']}:{builders.METRICS_PORT}/metrics"
                for p in pods(c, ns, rollouts)
                if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running"}
        if len(urls) != 3:
            return None
        (bodies,) = probe(c, {f"metrics-reader-{next(readers)}": (ns, {"app": "probe"})}, list(urls.values()),
                          FETCH).values()
        if any(bodies[url] is None for url in urls.values()):
            return None
        return {pod: {(s.name, tuple(sorted(s.labels.items()))): s.value
                      for f in text_string_to_metric_families(bodies[url]) for s in f.samples}
                for pod, url in urls.items()}

    tokens, version = promql.series("worker_generated_tokens"), promql.series("worker_weights_version")
    errors = (promql.series("verifier_errors"), (("namespace", ns), ("run", name), ("verifier", "countdown")))

    def synced() -> dict[str, float] | None:
        """Tokens generated by worker, once every rollout pod's worker holds weights version 1 or later."""
        found = worker_metrics()
        if found is None:
            return None
        generated = {}
        for pod, samples in found.items():
            workers = {dict(labels)["worker"] for series, labels in samples if series == tokens}
            assert len(workers) == 1, (pod, sorted(samples))  # one worker, its counter there from 0
            (worker,) = workers
            labels = (("namespace", ns), ("run", name), ("worker", worker))
            assert errors in samples, (pod, sorted(samples))
            if samples.get((version, labels), 0) < 1:
                return None  # a worker the new gang started has not had its first weights yet
            generated[worker] = samples[(tokens, labels)]
        return generated

    generated = until("3 rollout pods' workers serving /metrics, with weights", synced, 300, explain)
    assert len(generated) == 3 and sum(generated.values()) > 0, generated

    # the NetworkPolicy: Ray's GCS and the rendezvous take the run's own pods only (the policy admits
    # by the run's label); the metrics port takes anyone, which shows the others are reachable at all
    ip = {p["metadata"]["labels"].get("zeroth.dev/role", "") + p["metadata"]["labels"].get("zeroth.dev/rank", ""):
          p["status"]["podIP"] for p in pods(c, ns, selector) if not p["metadata"].get("deletionTimestamp")
          and p["status"].get("phase") == "Running"}
    gcs, rendezvous, metrics = f"{ip['ray-head']}:6379", f"{ip['trainer0']}:29500", f"{ip['trainer0']}:9400"
    opened = probe(c, {"outsider": (operator_ns, {"app": "probe"}), "neighbour": (ns, {"app": "probe"}),
                       "member": (ns, {"zeroth.dev/run": name})}, [gcs, rendezvous, metrics])
    assert opened["outsider"] == {gcs: False, rendezvous: False, metrics: True}, opened
    assert opened["neighbour"] == {gcs: False, rendezvous: False, metrics: True}, opened
    assert opened["member"] == {gcs: True, rendezvous: True, metrics: True}, opened
    assert metric_steps(run_dir)[-1]["step"] < MAX_STEPS - 4, "the run ended before the suspension: raise MAX_STEPS"

    # suspend: every pod goes, the checkpoint stays; resume: on from it
    c.kubectl("patch", "reasoningrun", name, "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    until("phase Suspended, no pods", lambda: phase(c, ns, name).get("phase") == "Suspended"
             and not pods(c, ns, selector), 300, explain)
    c.kubectl("patch", "reasoningrun", name, "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    status = until("phase Succeeded", lambda: (s := phase(c, ns, name)).get("phase") == "Succeeded" and s,
                      1800, explain)
    t_end = time.monotonic()

    # rank 0's log shows the training steps
    rank0 = sorted(p["metadata"]["name"] for p in pods(c, ns, f"{selector},zeroth.dev/role=trainer,zeroth.dev/rank=0"))[-1]
    log = c.kubectl("logs", rank0, "-n", ns).stdout
    assert f"step {MAX_STEPS}/{MAX_STEPS} reward_mean=" in log and f"checkpoint step {MAX_STEPS}" in log, log[-3000:]

    # each time (the kill, the suspension) it went back to the newest checkpoint (every 2 steps) and
    # on, one step at a time, to the end; a replayed step trained on the same prompts as before. A
    # disruption that lands just after a checkpoint (the suspension always checkpoints) replays
    # nothing, so the steps may show no cut at all: status.restarts and resumes count the disruptions
    steps = metric_steps(run_dir)
    order = [r["step"] for r in steps]
    # every step trained on the whole batch, whatever the fleet's size; the fleet lost one worker
    # (scaled down) and gained two (the new pods of the scale up)
    algorithm = api.ReasoningRun.model_validate(countdown(name, claim_name)).spec.algorithm
    assert {r["samples"] for r in steps} == {algorithm.prompts_per_step * algorithm.group_size}, steps
    workers = [r["rollout_workers"] for r in steps]
    assert 1 in workers and 3 in workers and workers[-1] == 3, workers
    assert sum(r["rollout_workers_lost"] for r in steps) >= 1 and sum(r["rollout_workers_joined"] for r in steps) >= 2, steps
    cuts = [0] + [i for i in range(1, len(order)) if order[i] != order[i - 1] + 1] + [len(order)]
    segments = [order[a:b] for a, b in zip(cuts, cuts[1:])]
    assert sorted(set(order)) == list(range(1, MAX_STEPS + 1)) and order[-1] == MAX_STEPS, order
    for before, seg in zip(segments, segments[1:]):
        assert seg[0] <= before[-1] + 1 and (seg[0] - 1) % 2 == 0, order
    first: dict[int, str] = {}
    for r in steps:
        assert first.setdefault(r["step"], r["tasks_sha"]) == r["tasks_sha"], f"step {r['step']} replayed on other prompts"

    evals = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "eval_greedy" in r]
    assert {(r["step"], r["eval_size"]) for r in evals} == {(0, 20), (MAX_STEPS // 2, 20), (MAX_STEPS, 20)}, evals

    # rank 0 wrote status.progress from inside its pod, with the run's own ServiceAccount token
    progress = status["progress"]
    assert progress["step"] == progress["maxSteps"] == progress["lastCheckpointStep"] == MAX_STEPS, progress
    assert progress["accuracy"] == pytest.approx(evals[-1]["eval_greedy"]), progress
    assert (status["restarts"], status["resumes"]) == (1, 1), status
    managers = {(f["manager"], f.get("subresource"))
                for f in c.get("reasoningrun", name, "-n", ns, "--show-managed-fields")["metadata"]["managedFields"]}
    assert ("zeroth-trainer", "status") in managers, managers
    # the two ranks found each other: one ZeRO shard each
    shards = sorted(p.name for p in (run_dir / "checkpoints" / f"step-{MAX_STEPS:08d}").rglob("*optim_states.pt"))
    assert len(shards) == 2 and "zero_pp_rank_0" in shards[0] and "zero_pp_rank_1" in shards[1], shards
    assert (run_dir / "model" / "config.json").is_file()
    assert list(run_dir.glob("step-*.jsonl")), "no exported samples"
    print(f"training from {t_train - t0:.0f} s, Succeeded after {t_end - t0:.0f} s")

    # the operator's liveness probe passed all along
    assert operator_restarts(c, operator_ns) == 0

    # deleting the run leaves no container of it on the node
    c.kubectl("delete", "reasoningrun", name, "-n", ns, "--wait=true", f"--timeout={speed.scaled(120):.0f}s")
    until("the run's pods gone", lambda: not pods(c, ns, selector), 300, explain)
    until("no container of the namespace running on the node", lambda: not running_containers(ns), 300,
             lambda: str(running_containers(ns)))


def test_the_code_sandbox_holds_in_a_rollout_pod(crd, image, namespace):
    """Every attack of `sandbox_check` fails, and an honest program passes, in a pod made by the
    operator's own builder for rollout pods (non-root, no capabilities, read-only root, the
    runtime's default seccomp profile) under the real node's containerd: the mode the rollout
    workers really verify code in."""
    from zeroth.operator import builders
    from zeroth import validation

    run = validation.validate(countdown("sandbox", "unused"), source="test")
    pod = builders.rollout_pod(run, "uid", 0)
    spec = pod["spec"]
    spec.pop("initContainers", None)
    (container,) = spec["containers"]
    container["command"] = ["python", "-m", "zeroth.rollout.verifiers.sandbox_check", "--json"]
    container["env"] = [e for e in container["env"] if "valueFrom" not in e]  # no run, so no token Secret
    spec.update(restartPolicy="Never", serviceAccountName="default")
    name = "sandbox-check"
    crd.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": spec})

    def ended():
        phase = crd.get("pod", name, "-n", namespace)["status"].get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    until("the sandbox check to end", ended, 300, lambda: describe(crd, namespace))
    logs = crd.kubectl("logs", name, "-n", namespace).stdout
    report = json.loads(logs.strip().splitlines()[-1])
    rows = {r["name"]: r for r in report["rows"]}
    assert report["mode"] == "restricted" and report["landlock"] >= 1, report
    assert rows.pop("honest")["passed"], report
    assert [n for n, r in rows.items() if r["passed"]] == [] and report["reached"] == [], report
    assert len(rows) >= 19 and report["held"]
    print(f"sandbox check in a rollout pod: {len(rows)} attacks failed, Landlock ABI {report['landlock']}")
