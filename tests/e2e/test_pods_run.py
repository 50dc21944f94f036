"""Pods really run: the trainer and rollout pods the operator built, as the API server admitted them,
run as local processes, and the tiny countdown run completes with its progress in `status.progress`.

The other cluster tests prove the pod specs are valid (admission, scheduling, RBAC); this one proves
they are runnable. The operator runs as in tests/integration (`kopf run` with the chart's
ServiceAccount); kwok marks the pods Running; then each pod's one container is started here, as a
kubelet would start it, from the pod read back from the API server:

- argv is the container's `command` + `args` and the environment is its `env` (literal values,
  `secretKeyRef` read from the Secret, `fieldRef` from the pod), and nothing else of the test's
  but its two process-ownership variables (below);
- volumes become local directories: a ConfigMap's data written out, an emptyDir a fresh directory
  per pod, a claim the `hostPath` of the PersistentVolume it is bound to (one directory for every pod
  that mounts it, as on a shared volume), and the projected ServiceAccount volume the API server
  injected into rank 0 its sources: a token requested for the pod's ServiceAccount and bound to the
  pod, `ca.crt` from the namespace's `kube-root-ca.crt`, the namespace;
- a kubelet's additions: KUBERNETES_SERVICE_HOST/PORT (the API server on loopback) and HOSTNAME.

What stands in for the rest of a node, and why:

- every mountPath in argv and env values is rewritten to its local directory (longest first): the
  processes share one filesystem here;
- every `*.svc` name (MASTER_ADDR, RAY_ADDRESS, the rollout pods' `--address`) becomes 127.0.0.1:
  there is no cluster DNS, and all pods share this host's network;
- `python`, `ray`, `torchrun` are the project virtualenv's (PATH starts with its bin): the image;
- ZEROTH_CACHE names this host's model cache, so builtin:tiny-arith is not rebuilt (an image carries
  it), and ZEROTH_SERVICE_ACCOUNT_DIR names the ServiceAccount directory, because the kubernetes
  client's in-cluster path (/var/run/secrets/...) is hard-coded and appears in no argv or env;
- start order: the Ray head, then each rollout pod once the previous Ray node is up, then the
  trainers. Pods may start in any order on a cluster; here `ray start` processes started together
  race for the same free ports of the one shared network namespace (a raylet then aborts with
  "Address already in use"), which separate pods never do;
- a trainer that exits 0 gets its pod labelled `zeroth.dev/kwok-exit=0`, so kwok marks it Succeeded:
  the test reports the exit as a kubelet would;
- the test's two process-ownership variables (ZEROTH_TEST_SESSION, ZEROTH_TEST_OWNER; tests/procs.py)
  are added to each container's environment, so that the test can kill everything it started.

Not covered: the image itself, the read-only root filesystem and uid 1000 (the processes run as this
user and may write anywhere), the NetworkPolicy, paths hard-coded in the programs (Ray's /tmp/ray and
/dev/shm are this host's), and rank 0's own `ray start` (it finds the head's raylet on this host and
joins through it, which fleet.connect allows).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests import procs
from tests.conftest import Cluster, Operator
from tests.e2e.conftest import manifest
from tests.integration.test_operator import EXIT_ZERO, live, phase_is, pods_of, wait_for
from tests.speed import scaled
from zeroth.local import CACHE

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

RUN = "pods-run"
MAX_STEPS = 8
VENV_BIN = Path(sys.executable).parent
SVC_NAME = re.compile(r"\b[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?\.svc(?:\.cluster\.local)?\b")
FIXED_PORTS = (6379, 10001, 29500, 9400)  # GCS, Ray client server, rendezvous, trainer metrics


# ------------------------------------------------------------------------------ pods as processes


@dataclass
class LocalPod:
    """One pod's container as a process in a session of its own (its group is killed at the end)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, env=procs.tag(self.env), cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def tail(self, chars: int = 2500) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def terminate(self) -> None:
        """SIGTERM to its group: `ray start --block` then stops the Ray processes it started."""
        if self.proc is not None:
            _signal_group(self.proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to its group and to anything else left in its session. Only this session's
        processes: `ray stop` would end every Ray on the host, other tests' too."""
        if self.proc is None:
            return
        _signal_group(self.proc.pid, signal.SIGKILL)
        for pid in _session_members(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=scaled(10))


def stop(pods: list[LocalPod], grace: float = 10.0) -> None:
    """Stops pods together, as their deletion would: SIGTERM, `grace` seconds (reference seconds,
    scaled), then SIGKILL."""
    for p in pods:
        p.terminate()
    deadline = time.monotonic() + scaled(grace)
    for p in pods:
        if p.proc is not None:
            try:
                p.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
    for p in pods:
        p.kill()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _session_members(sid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp session
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid:
            members.append(int(stat.parent.name))
    return members


class Node:
    """What the test stands in for: kubelet, volume plugins and cluster DNS on this one host."""

    def __init__(self, cluster: Cluster, namespace: str, root: Path):
        self.c, self.ns, self.root = cluster, namespace, root
        server = urlparse(json.loads(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"])
        self.api_host, self.api_port = server.hostname, str(server.port)

    def local_pod(self, name: str) -> LocalPod:
        pod = self.c.get("pod", name, "-n", self.ns)  # as admitted: defaults and injected volumes included
        spec = pod["spec"]
        assert len(spec["containers"]) == 1 and not spec.get("initContainers"), f"{name}: one container expected"
        container = spec["containers"][0]
        assert not container.get("workingDir"), f"{name}: workingDir is not mapped here"
        home = self.root / name
        volumes = {v["name"]: self._volume(pod, v, home / "volumes" / v["name"]) for v in spec.get("volumes", [])}
        mounts = sorted(((m["mountPath"].rstrip("/") or "/", volumes[m["name"]] / m.get("subPath", ""))
                         for m in container.get("volumeMounts", [])), key=lambda m: len(m[0]), reverse=True)

        def local(value: str) -> str:
            value = SVC_NAME.sub("127.0.0.1", value)
            flag, eq, path = value.partition("=") if value.startswith("--") else ("", "", value)
            for mount, directory in mounts:
                if path == mount or path.startswith(mount + "/"):
                    return f"{flag}{eq}{directory}{path[len(mount):]}"
            return value

        env = {"PATH": f"{VENV_BIN}:{os.environ['PATH']}"}  # the image's PATH: the project's virtualenv first
        for var in container.get("env", []):
            env[var["name"]] = local(self._env_value(pod, var))
        env.update(KUBERNETES_SERVICE_HOST=self.api_host, KUBERNETES_SERVICE_PORT=self.api_port,
                   HOSTNAME=spec.get("hostname") or name, ZEROTH_CACHE=str(CACHE))
        for mount, directory in mounts:
            if mount == "/var/run/secrets/kubernetes.io/serviceaccount":
                env["ZEROTH_SERVICE_ACCOUNT_DIR"] = str(directory)
        argv = [local(a) for a in container.get("command", []) + container.get("args", [])]
        assert not any("$(" in v for v in [*argv, *env.values()]), f"{name}: $(VAR) expansion is not done here"
        argv[0] = shutil.which(argv[0], path=env["PATH"]) or argv[0]
        return LocalPod(name, argv, env, home, home / "container.log")

    def _env_value(self, pod: dict, var: dict) -> str:
        if "valueFrom" not in var:
            return var.get("value", "")
        source = var["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            return base64.b64decode(self.c.get("secret", ref["name"], "-n", self.ns)["data"][ref["key"]]).decode()
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return self.c.get("configmap", ref["name"], "-n", self.ns)["data"][ref["key"]]
        if "fieldRef" in source:
            return _field(pod, source["fieldRef"]["fieldPath"])
        raise AssertionError(f"{pod['metadata']['name']}: env {var['name']}: source not handled here: {source}")

    def _volume(self, pod: dict, volume: dict, where: Path) -> Path:
        if "emptyDir" in volume:
            where.mkdir(parents=True)
        elif "configMap" in volume:
            self._write_data(where, self.c.get("configmap", volume["configMap"]["name"], "-n", self.ns)["data"],
                             volume["configMap"].get("items"))
        elif "persistentVolumeClaim" in volume:
            claim = self.c.get("pvc", volume["persistentVolumeClaim"]["claimName"], "-n", self.ns)
            pv = self.c.get("pv", claim["spec"]["volumeName"])
            return Path(pv["spec"]["hostPath"]["path"])  # on this host a hostPath volume is that directory
        elif "projected" in volume:
            where.mkdir(parents=True)
            for source in volume["projected"]["sources"]:
                self._project(pod, source, where)
        else:
            raise AssertionError(f"{pod['metadata']['name']}: volume type not handled here: {volume}")
        return where

    def _project(self, pod: dict, source: dict, where: Path) -> None:
        meta = pod["metadata"]
        if "serviceAccountToken" in source:
            src = source["serviceAccountToken"]
            args = ["create", "token", pod["spec"]["serviceAccountName"], "-n", self.ns, "--bound-object-kind=Pod",
                    f"--bound-object-name={meta['name']}", f"--bound-object-uid={meta['uid']}",
                    f"--duration={src.get('expirationSeconds', 3600)}s"]
            if src.get("audience"):
                args.append(f"--audience={src['audience']}")
            (where / src["path"]).write_text(self.c.kubectl(*args).stdout.strip())
        elif "configMap" in source:
            data = self.c.get("configmap", source["configMap"]["name"], "-n", self.ns)["data"]
            self._write_data(where, data, source["configMap"].get("items"))
        elif "downwardAPI" in source:
            for item in source["downwardAPI"]["items"]:
                (where / item["path"]).write_text(_field(pod, item["fieldRef"]["fieldPath"]))
        else:
            raise AssertionError(f"{meta['name']}: projected source not handled here: {source}")

    @staticmethod
    def _write_data(where: Path, data: dict[str, str], items: list[dict] | None) -> None:
        where.mkdir(parents=True, exist_ok=True)
        for key, path in ([(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]):
            (where / path).write_text(data[key])


def _field(pod: dict, path: str) -> str:
    fields = {"metadata.name": pod["metadata"]["name"], "metadata.namespace": pod["metadata"]["namespace"],
              "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
              "spec.nodeName": pod["spec"].get("nodeName", "")}
    assert path in fields, f"fieldRef {path} not handled here"
    return fields[path]


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def claim(crd: Cluster, namespace: str, tmp_path) -> tuple[str, Path]:
    """A claim bound to a hostPath PersistentVolume on a directory of this host; the volume deleted after."""
    directory = tmp_path / "volume"
    directory.mkdir()
    pv, pvc = f"zeroth-pods-run-{uuid.uuid4().hex[:8]}", "shared"
    crd.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv}, "spec": {
        "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "manual",
        "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(directory)},
        "claimRef": {"namespace": namespace, "name": pvc}}})  # reserved for this claim, not another test's
    crd.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": pvc, "namespace": namespace},
               "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "manual", "volumeName": pv,
                        "resources": {"requests": {"storage": "1Gi"}}}})
    yield pvc, directory
    crd.kubectl("delete", "pvc", pvc, "-n", namespace, "--wait=false", check=False)
    crd.kubectl("delete", "pv", pv, "--wait=false", check=False)


@pytest.fixture
def local_pods():
    """Every process started, stopped at the end whatever happened (Ray's `--block` ones included)."""
    started: list[LocalPod] = []
    yield started
    stop(started)


def _ports_free() -> list[int]:
    busy = []
    for port in FIXED_PORTS:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


# ----------------------------------------------------------------------------------------- test


def test_the_operators_pods_run_the_tiny_countdown_to_succeeded(crd, operator: Operator, namespace, claim, local_pods,
                                                                tmp_path):
    c, ns = crd, namespace
    claim_name, volume = claim
    busy = _ports_free()
    assert not busy, f"ports the pods listen on are taken on this host: {busy}"
    t0 = time.monotonic()
    m = manifest(algorithm={"maxSteps": MAX_STEPS}, eval={"everySteps": 4}, dataset={"evalSize": 20},
                 checkpoint={"everySteps": 4, "volumeClaimName": claim_name}, export={"volumeClaimName": claim_name})
    m["metadata"]["name"] = RUN
    c.apply(m, "-n", ns)
    wait_for("phase Running", phase_is(c, ns, RUN, "Running"), timeout=90, operator=operator)
    names = [f"{RUN}-ray-head", f"{RUN}-rollout-0", f"{RUN}-rollout-1", f"{RUN}-trainer-0", f"{RUN}-trainer-1"]
    wait_for("every pod Running", lambda: sorted(p["metadata"]["name"] for p in live(pods_of(c, ns, RUN))
                                                  if p["status"].get("phase") == "Running") == names, operator=operator)
    t_running = time.monotonic()

    node = Node(c, ns, tmp_path / "pods")
    head, *rollouts = [node.local_pod(n) for n in names[:3]]
    trainers = [node.local_pod(n) for n in names[3:]]
    assert "ZEROTH_SERVICE_ACCOUNT_DIR" in trainers[0].env  # rank 0 alone mounts its ServiceAccount token
    assert not any("ZEROTH_SERVICE_ACCOUNT_DIR" in p.env for p in [head, *rollouts, trainers[1]])
    everyone = [head, *rollouts, *trainers]

    def failure(what: str) -> str:
        logs = "\n".join(f"---- {p.name} ({p.log}):\n{p.tail()}" for p in everyone)
        return f"{what}\n{logs}\n---- operator:\n{operator.log.read_text()[-2000:]}"

    def wait(what: str, check, timeout: float):
        try:
            return wait_for(what, check, timeout=timeout)
        except AssertionError as e:
            raise AssertionError(failure(str(e))) from None

    # the image's model cache (built once per recipe; a no-op when `make run` or another e2e test built it)
    run_json = next((tmp_path / "pods" / names[3] / "volumes" / "config").glob("*.json"))
    built = subprocess.run([sys.executable, "-m", "zeroth.trainer.build_model", str(run_json)],
                           env={**os.environ, "ZEROTH_CACHE": str(CACHE)}, capture_output=True, text=True, timeout=scaled(600))
    assert built.returncode == 0, built.stderr[-3000:]

    for ray_pod in (head, *rollouts):  # one at a time: see the module docstring
        local_pods.append(ray_pod)
        ray_pod.start()
        wait(f"{ray_pod.name}: Ray up", lambda p=ray_pod: "Ray runtime started" in p.tail(100_000)
             or p.proc.poll() is not None, timeout=90)
        assert ray_pod.proc.poll() is None, failure(f"{ray_pod.name} exited {ray_pod.proc.returncode}")
    t_ray = time.monotonic()
    for t in trainers:
        local_pods.append(t)
        t.start()

    # the test reports each trainer's exit, as a kubelet would; a failed one fails the test
    deadline = time.monotonic() + scaled(240)
    running = list(trainers)
    while running:
        for t in list(running):
            rc = t.proc.poll()
            if rc is None:
                continue
            assert rc == 0, failure(f"{t.name} exited {rc}")
            c.kubectl("label", "pod", t.name, "-n", ns, f"{EXIT_ZERO}=0")
            running.remove(t)
        for p in (head, *rollouts):
            assert p.proc.poll() is None, failure(f"{p.name} exited {p.proc.returncode}")
        assert time.monotonic() < deadline, failure("the trainers did not finish in time")
        time.sleep(0.5)
    t_train = time.monotonic()

    status = wait("phase Succeeded", phase_is(c, ns, RUN, "Succeeded"), timeout=60)
    # on success the operator deletes the Ray pods: their processes end with them
    wait("the Ray pods deleted", lambda: not pods_of(c, ns, RUN, "ray-head") and not pods_of(c, ns, RUN, "rollout"),
         timeout=60)
    stop([head, *rollouts])
    t_end = time.monotonic()

    # the run directory on the shared claim: metrics and evaluations of every step
    run_dir = volume / RUN
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward_mean" in r]
    evals = [r for r in records if "eval_greedy" in r]
    assert [r["step"] for r in steps] == list(range(1, MAX_STEPS + 1))
    assert [(r["step"], r["eval_size"]) for r in evals] == [(0, 20), (4, 20), (8, 20)]

    # rank 0 wrote the same numbers to status.progress, with its pod's own ServiceAccount token
    progress = status["progress"]
    assert progress["step"] == progress["maxSteps"] == progress["lastCheckpointStep"] == MAX_STEPS, progress
    assert progress["weightsVersion"] == steps[-1]["weights_version"] == MAX_STEPS, progress
    assert progress["accuracy"] == pytest.approx(evals[-1]["eval_greedy"]), progress  # held-out, greedy
    assert progress["rewardMean"] == pytest.approx(steps[-1]["reward_mean"]), progress
    run = c.get("reasoningrun", RUN, "-n", ns, "--show-managed-fields")
    managers = {(f["manager"], f.get("subresource")) for f in run["metadata"]["managedFields"]}
    assert ("zeroth-trainer", "status") in managers, managers

    # both checkpoints, the exported model and samples on the claim
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.parent.name for p in checkpoints.glob("step-*/trainer_state.json")) == ["step-00000004",
                                                                                          "step-00000008"]
    # the two trainer processes found each other through MASTER_ADDR/RANK/WORLD_SIZE: one ZeRO shard each
    shards = sorted(p.name for p in (checkpoints / "step-00000008").rglob("*optim_states.pt"))
    assert len(shards) == 2 and "zero_pp_rank_0" in shards[0] and "zero_pp_rank_1" in shards[1], shards
    assert sorted(p.name for p in (run_dir / "pids").iterdir()) == ["rank-0.pid", "rank-1.pid"]
    assert (run_dir / "model" / "config.json").is_file()
    assert list(run_dir.glob("step-*.jsonl")), "no exported samples"  # export.path's claim is the same volume
    # no pod compiled anything when it started (DeepSpeed's CPU ops): an image needs no C++ toolchain
    assert not list((tmp_path / "pods").glob("*/volumes/*/.cache/torch_extensions/*/*"))

    print(f"pods Running after {t_running - t0:.0f} s, Ray up after {t_ray - t0:.0f} s, trainers "
          f"{t_train - t_ray:.0f} s, Succeeded and Ray stopped after {t_end - t0:.0f} s")
