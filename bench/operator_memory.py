"""The operator's memory while pods that are not its own exist and churn: the pod watch with its
server-side label selector against the same operator filtering pods client-side, as it did before
(bench/client_side_pod_filter.py takes the selector away).

On the local control plane (`python3 hack/cluster.py up`): NAMESPACES fresh namespaces get
PODS unrelated pods between them (no zeroth label, bound by nodeName to the kwok nodes, which mark
them Running), and each variant of the operator runs against them in turn, namespace-scoped to
those namespaces (so that it reconciles no other run of a shared cluster; a cluster-wide operator
streams every namespace's pods the same way). Each variant is started, left to settle, then watches
CHURN seconds of pods deleted and created again; its RSS (/proc) is sampled throughout, and the
bytes the API server sends it are counted by a TCP proxy in front of the API server.

    python bench/operator_memory.py                     # 2,000 pods, 10 namespaces, 30 s of churn
    python bench/operator_memory.py --pods 500 --churn 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import _free_port  # noqa: E402
from tests.integration.test_pod_watch import Counting  # noqa: E402

VARIANTS = {"server-side selector": [], "client-side filter (before)": [str(ROOT / "bench" / "client_side_pod_filter.py")]}


def cluster_env() -> dict[str, str]:
    out = subprocess.run([sys.executable, str(ROOT / "hack" / "cluster.py"), "env"], check=True, capture_output=True,
                         text=True).stdout
    values = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())
    return {"KUBECONFIG": values["KUBECONFIG"], "PATH": values["PATH"].replace("$PATH", os.environ["PATH"])}


def pod(name: str, ns: str, node: str, filler: int) -> dict:
    """An ordinary workload's pod: a few labels and env, and an annotation standing in for the rest
    of a real pod's metadata (last-applied configuration, sidecar injection, ...); random, so that
    the API server's gzip does not make it vanish on the wire."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": "crowd", "tier": "web"},
                         "annotations": {"example.com/filler": os.urandom(filler // 2).hex()}},
            "spec": {"nodeName": node, "containers": [{"name": "web", "image": "nginx:1.27",
                                                       "env": [{"name": f"VAR_{i}", "value": str(i)} for i in range(8)]}]}}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def healthy(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the operator exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the operator did not become healthy")


def measure(name: str, extra: list[str], namespaces: list[str], kubeconfig: dict, core, pods: dict[str, list[dict]],
            settle: float, churn: float, console: Console, workdir: Path) -> dict[str, float]:
    host, port = kubeconfig["clusters"][0]["cluster"]["server"].removeprefix("https://").rsplit(":", 1)
    proxy = Counting((host, int(port)))
    proxied = json.loads(json.dumps(kubeconfig))
    proxied["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path = workdir / f"kubeconfig-{len(extra)}"
    path.write_text(json.dumps(proxied))
    health = _free_port()
    env = {**os.environ, "KUBECONFIG": str(path), "ZEROTH_OPERATOR_METRICS_PORT": "0", "ZEROTH_RESYNC_SECONDS": "3600",
           "ZEROTH_WATCH_NAMESPACES": ",".join(namespaces)}
    scope = [a for ns in namespaces for a in ("--namespace", ns)]
    kopf = Path(sys.executable).parent / "kopf"
    log = (workdir / f"operator-{len(extra)}.log").open("wb")
    proc = subprocess.Popen([str(kopf), "run", "--standalone", *scope, f"--liveness=http://127.0.0.1:{health}/healthz",
                             "-m", "zeroth.operator.handlers", *extra], env=env, stdout=log, stderr=subprocess.STDOUT)
    samples: list[float] = []
    try:
        healthy(health, proc)
        t0 = time.monotonic()
        while time.monotonic() - t0 < settle:
            samples.append(rss_mb(proc.pid))
            time.sleep(0.25)
        settled, listed_bytes = rss_mb(proc.pid), proxy.received
        console.print(f"  {name}: settled at {settled:.0f} MB after {listed_bytes / 1e6:.1f} MB from the API server; churning")
        stop = threading.Event()
        churned = [0]

        def churner():
            flat = [p for ps in pods.values() for p in ps]
            i = 0
            with ThreadPoolExecutor(8) as ex:
                while not stop.is_set():
                    batch = [flat[(i + k) % len(flat)] for k in range(20)]
                    i += 20
                    list(ex.map(lambda p: delete(core, p), batch))
                    list(ex.map(lambda p: create(core, p), batch))
                    churned[0] += len(batch)
        churning = threading.Thread(target=churner, daemon=True)
        churning.start()
        t1 = time.monotonic()
        while time.monotonic() - t1 < churn:
            samples.append(rss_mb(proc.pid))
            time.sleep(0.25)
        stop.set()
        churning.join(timeout=60)
        time.sleep(2)
        return {"settled": settled, "peak": max(samples), "end": rss_mb(proc.pid), "listed": listed_bytes / 1e6,
                "received": proxy.received / 1e6, "churned": churned[0]}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        proxy.close()


def delete(core, body: dict) -> None:
    from kubernetes.client.rest import ApiException

    try:
        core.delete_namespaced_pod(body["metadata"]["name"], body["metadata"]["namespace"], grace_period_seconds=0)
    except ApiException as e:
        if e.status != 404:
            raise


def create(core, body: dict) -> None:
    from kubernetes.client.rest import ApiException

    for _ in range(50):  # the deletion (grace 0) may still be under way
        try:
            core.create_namespaced_pod(body["metadata"]["namespace"], body)
            return
        except ApiException as e:
            if e.status != 409:
                raise
            time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=2000)
    ap.add_argument("--namespaces", type=int, default=10)
    ap.add_argument("--filler", type=int, default=2048, help="bytes of annotation on each pod")
    ap.add_argument("--settle", type=float, default=15)
    ap.add_argument("--churn", type=float, default=30)
    args = ap.parse_args()
    console = Console()
    os.environ.update(cluster_env())
    from kubernetes import client, config

    config.load_kube_config()
    core = client.CoreV1Api()
    nodes = [n.metadata.name for n in core.list_node(label_selector="type=kwok").items]
    tag = uuid.uuid4().hex[:6]
    namespaces = [f"zbench-{tag}-{i}" for i in range(args.namespaces)]
    pods: dict[str, list[dict]] = {ns: [] for ns in namespaces}
    for i in range(args.pods):
        ns = namespaces[i % len(namespaces)]
        pods[ns].append(pod(f"crowd-{i}", ns, nodes[i % len(nodes)], args.filler))
    for ns in namespaces:
        core.create_namespace({"metadata": {"name": ns}})
    try:
        console.print(f"creating {args.pods} pods in {len(namespaces)} namespaces on {len(nodes)} kwok nodes")
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda p: create(core, p), [p for ps in pods.values() for p in ps]))
        kubeconfig = json.loads(Path(os.environ["KUBECONFIG"]).read_text())
        with tempfile.TemporaryDirectory() as tmp:
            results = {name: measure(name, extra, namespaces, kubeconfig, core, pods, args.settle, args.churn, console,
                                     Path(tmp)) for name, extra in VARIANTS.items()}
    finally:
        for ns in namespaces:
            core.delete_namespace(ns)
    new, old = results["server-side selector"], results["client-side filter (before)"]
    table = Table(title=f"operator RSS with {args.pods} unrelated pods ({args.filler} B filler each), "
                        f"{args.churn:.0f} s of churn")
    table.add_column("")
    for name in VARIANTS:
        table.add_column(name, justify="right")
    table.add_column("ratio (before / now)", justify="right")
    for key, label, unit in [("settled", "RSS settled", "MB"), ("peak", "RSS peak", "MB"), ("end", "RSS after churn", "MB"),
                             ("listed", "received by settling (wire)", "MB"), ("received", "received in all (wire)", "MB"),
                             ("churned", "pods deleted and created", "")]:
        ratio = f"{old[key] / new[key]:.2f}x" if new[key] else "-"
        digits = 0 if key == "churned" else 2 if key in ("listed", "received") else 1
        table.add_row(label, f"{new[key]:.{digits}f} {unit}", f"{old[key]:.{digits}f} {unit}", ratio if key != "churned" else "")
    console.print(table)


if __name__ == "__main__":
    main()
