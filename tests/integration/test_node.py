"""The real node of hack/cluster.py: a kubelet with containerd, CNI, CoreDNS, kube-proxy and a
NetworkPolicy enforcer in its own network namespace. Pods really run there (logs, exec), find
Services by name, reach them and the API server through Service IPs, and NetworkPolicy holds; and
`down` leaves nothing behind.

The pods use the node's busybox test image (hack/build-node.sh), which also carries curl (busybox's
own wget crashes)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, Cluster, hack_module
from tests.speed import scaled

pytestmark = pytest.mark.cluster


hack_cluster = hack_module("cluster.py")
node = hack_cluster.node

ON_REAL_NODE = {
    "nodeSelector": {hack_cluster.REAL_NODE_LABEL: hack_cluster.REAL_NODE_LABEL_VALUE},
    "tolerations": [{"key": hack_cluster.REAL_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
}


def pod(name: str, command: str, labels: dict | None = None, **spec) -> dict:
    """A pod for the real node that passes Pod Security "restricted", running `sh -c command`."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            **ON_REAL_NODE,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "main", "image": node.TEST_IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", command],
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }],
            "terminationGracePeriodSeconds": 0,
            **spec,
        },
    }


def web(name: str, labels: dict, **spec) -> dict:
    """A pod serving its own name over HTTP on port 8080 (busybox httpd)."""
    return pod(name, f"mkdir -p /tmp/www && echo served-by-{name} > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www",
               labels, **spec)


def client(name: str, labels: dict | None = None) -> dict:
    return pod(name, "exec sleep 3600", labels)


def running(cluster: Cluster, ns: str, *names: str, timeout: float = 60) -> dict[str, dict]:
    cluster.kubectl("wait", "-n", ns, "--for=condition=Ready", f"--timeout={scaled(timeout):.0f}s", *(f"pod/{n}" for n in names))
    return {n: cluster.get(f"pod/{n}", "-n", ns) for n in names}


def sh(cluster: Cluster, ns: str, pod_name: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
    return cluster.kubectl("exec", "-n", ns, pod_name, "--", "sh", "-c", command, check=check)


def can_get(cluster: Cluster, ns: str, pod_name: str, url: str) -> str | None:
    """What `url` answers to the pod (None: no connection within 3 s)."""
    proc = sh(cluster, ns, pod_name, f"curl -sS --max-time 3 {url}", check=False)
    return proc.stdout if proc.returncode == 0 else None


def test_real_node_is_ready_labelled_and_tainted_beside_the_kwok_nodes(cluster: Cluster):
    nodes = {n["metadata"]["name"]: n for n in cluster.get("nodes")["items"]}
    real = nodes[hack_cluster.REAL_NODE]
    ready = {c["type"]: c["status"] for c in real["status"]["conditions"]}
    assert ready["Ready"] == "True", real["status"]["conditions"]
    assert real["metadata"]["labels"][hack_cluster.REAL_NODE_LABEL] == hack_cluster.REAL_NODE_LABEL_VALUE
    assert {"key": hack_cluster.REAL_NODE_TAINT, "value": "true", "effect": "NoSchedule"} in real["spec"]["taints"]
    assert real["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://2.")
    assert {a["address"] for a in real["status"]["addresses"] if a["type"] == "InternalIP"} == {node.NODE_IP}
    kwok = [n for n, obj in nodes.items() if obj["metadata"].get("annotations", {}).get("kwok.x-k8s.io/node") == "fake"]
    assert len(kwok) == hack_cluster.CPU_NODES + hack_cluster.GPU_NODES + len(hack_cluster.OTHER_GPU_NODES)


def test_a_pod_without_the_toleration_never_lands_on_the_real_node(cluster: Cluster, namespace: str):
    spec = client("plain")
    spec["spec"].pop("tolerations")
    cluster.apply(spec, "-n", namespace)
    deadline = time.monotonic() + scaled(10)
    while time.monotonic() < deadline:
        obj = cluster.get("pod/plain", "-n", namespace)
        reasons = [c.get("reason") for c in obj["status"].get("conditions", []) if c["type"] == "PodScheduled"]
        if reasons == ["Unschedulable"]:
            break
        time.sleep(0.2)
    assert not obj["spec"].get("nodeName"), obj["spec"].get("nodeName")
    assert reasons == ["Unschedulable"], obj["status"]


def test_a_pod_really_runs_its_logs_and_exec_work(cluster: Cluster, namespace: str):
    cluster.apply(pod("hello", "echo hello from $(hostname) as $(id -u); exec sleep 3600"), "-n", namespace)
    obj = running(cluster, namespace, "hello")["hello"]
    assert obj["spec"]["nodeName"] == hack_cluster.REAL_NODE
    assert obj["status"]["podIP"].startswith(node.POD_CIDR.rsplit(".", 1)[0] + ".")
    deadline = time.monotonic() + scaled(10)
    while "hello from hello as 65534" not in (logs := cluster.kubectl("logs", "-n", namespace, "hello").stdout):
        assert time.monotonic() < deadline, logs
        time.sleep(0.2)
    # exec: a process in the container's own namespaces, as the pod's user
    out = sh(cluster, namespace, "hello", "id -u; tr '\\0' ' ' < /proc/1/cmdline; echo; hostname").stdout.split("\n")
    assert out[:3] == ["65534", "sleep 3600 ", "hello"], out


def test_dns_names_resolve_through_coredns_and_services_connect_through_kube_proxy(cluster: Cluster, namespace: str):
    cluster.apply([
        web("web-0", {"app": "web"}, hostname="web-0", subdomain="web"),
        client("probe"),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},  # headless: pod DNS names
         "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 8080}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-ip"},
         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}},
    ], "-n", namespace)
    pods = running(cluster, namespace, "web-0", "probe")
    cluster_ip = cluster.get("service/web-ip", "-n", namespace)["spec"]["clusterIP"]

    def resolve(name: str) -> str:
        out = sh(cluster, namespace, "probe", f"nslookup {name} {node.DNS_IP}", check=False).stdout
        return out.split(f"Name:\t{name}")[-1]

    deadline = time.monotonic() + scaled(20)  # the headless name appears once the pod is ready
    while pods["web-0"]["status"]["podIP"] not in (answer := resolve(f"web-0.web.{namespace}.svc.cluster.local")):
        assert time.monotonic() < deadline, answer
        time.sleep(0.5)
    assert cluster_ip in resolve(f"web-ip.{namespace}.svc.cluster.local")
    # the pod's resolver (resolv.conf from the kubelet: cluster DNS and the search path) and the
    # ClusterIP, by its short name: CoreDNS, then kube-proxy's rules, then the pod
    assert can_get(cluster, namespace, "probe", "http://web-ip/") == "served-by-web-0\n"
    assert can_get(cluster, namespace, "probe", "http://web-0.web:8080/") == "served-by-web-0\n"
    # nothing outside the cluster's names is answered: no upstream
    assert "can't find example.com" in sh(cluster, namespace, "probe", "nslookup example.com 2>&1", check=False).stdout


def test_a_pod_reaches_the_api_server_with_its_service_account_token(cluster: Cluster, namespace: str):
    cluster.apply(client("api"), "-n", namespace)
    running(cluster, namespace, "api")
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    review = sh(cluster, namespace, "api", (
        f"curl -sS --max-time 5 --cacert {sa}/ca.crt -H \"Authorization: Bearer $(cat {sa}/token)\" "
        "-H 'Content-Type: application/json' -X POST "
        "-d '{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"SelfSubjectReview\"}' "
        "https://kubernetes.default.svc/apis/authentication.k8s.io/v1/selfsubjectreviews")).stdout
    assert json.loads(review)["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:default", review
    # and the default ServiceAccount has no rights: the API server, not a proxy, answered
    denied = sh(cluster, namespace, "api", (
        f"curl -sS --max-time 5 --cacert {sa}/ca.crt -H \"Authorization: Bearer $(cat {sa}/token)\" "
        f"https://kubernetes.default.svc/api/v1/namespaces/{namespace}/secrets")).stdout
    assert json.loads(denied)["code"] == 403, denied


def test_pods_reach_the_host_only_at_the_api_server(cluster: Cluster, namespace: str):
    cluster.apply(client("nosy"), "-n", namespace)
    running(cluster, namespace, "nosy")

    def answer(listener: socket.socket) -> None:  # accept and hang up, until the listener closes
        with contextlib.suppress(OSError):
            while True:
                listener.accept()[0].close()

    with socket.create_server((node.HOST_IP, 0)) as listener:  # something else the host serves
        threading.Thread(target=answer, args=(listener,), daemon=True).start()
        port = listener.getsockname()[1]
        socket.create_connection((node.HOST_IP, port), timeout=3).close()  # it does, to the host itself
        reached = sh(cluster, namespace, "nosy", f"curl -sS --connect-timeout 2 http://{node.HOST_IP}:{port}/", check=False)
    # 28: the connection timed out (dropped); anything else (52, 56: the host hung up) means it got through
    assert reached.returncode == 28, (reached.returncode, reached.stderr)
    api = sh(cluster, namespace, "nosy", f"curl -sk --max-time 3 https://{node.HOST_IP}:{hack_cluster.PORTS['apiserver']}/livez",
             check=False)
    assert api.returncode == 0, api.stderr  # the API server's port stays open (/livez needs no token)


def test_network_policy_allows_only_the_labelled_pods(cluster: Cluster, namespace: str):
    cluster.apply([web("db", {"app": "db"}), client("friend", {"db-access": "true"}), client("stranger")], "-n", namespace)
    pods = running(cluster, namespace, "db", "friend", "stranger")
    url = f"http://{pods['db']['status']['podIP']}:8080/"
    assert can_get(cluster, namespace, "stranger", url) == "served-by-db\n"  # open before the policy
    cluster.apply({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "db-ingress"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"db-access": "true"}}}],
                              "ports": [{"port": 8080}]}]},
    }, "-n", namespace)
    cluster.get("networkpolicy/db-ingress", "-n", namespace)
    deadline = time.monotonic() + scaled(30)  # the enforcer syncs its rules
    while can_get(cluster, namespace, "stranger", url) is not None:
        assert time.monotonic() < deadline, "the NetworkPolicy never blocked the pod without the label"
        time.sleep(0.5)
    assert can_get(cluster, namespace, "friend", url) == "served-by-db\n"
    assert can_get(cluster, namespace, "stranger", url) is None


DOWN_SCRIPT = """
import json, os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import cluster, node
n = node.Node(cluster, cluster.node_dir(), netns="zeroth-node-t", veth="zeroth-veth-t", host_ip="10.250.1.1",
              node_ip="10.250.1.2", cgroup_root="zeroth-node-t", pod_cidr=None)
for sub in ("pids", "logs"):
    (cluster.STATE / sub).mkdir(parents=True, exist_ok=True)
try:
    n.network_up()
    n.write_configs(cluster.STATE)
    n.start_runtime()
    n.ctr("run", "-d", "--cgroup", "zeroth-node-t/probe", node.TEST_IMAGE, "probe", "sleep", "600")
    holder = n.holder()
    seen = {
        "processes": {p: Path(f"/proc/{p}/cmdline").read_text().replace(chr(0), " ") for p in n.processes()},
        "container": int(n.ctr("tasks", "ls").stdout.split()[-2]),  # its process, as containerd sees it
        "mntns": os.readlink(f"/proc/{holder}/ns/mnt"),
        "overlays": [m for m in Path(f"/proc/{holder}/mountinfo").read_text().splitlines() if " overlay " in m],
        "before": node.leftovers("zeroth-node-t", "zeroth-veth-t", "zeroth-node-t"),
    }
finally:
    n.down()
    n.network_down()
print(json.dumps(seen))
"""


def test_down_leaves_no_process_mount_netns_veth_or_cgroup(tmp_path: Path):
    """The clean-up of `down` on a second node (its own names, state directory and a container
    run by containerd), so the session's cluster stays up."""
    state = tmp_path / "cluster"
    proc = subprocess.run([sys.executable, "-c", DOWN_SCRIPT, str(ROOT / "hack")], capture_output=True, text=True,
                          env={**os.environ, "ZEROTH_CLUSTER_DIR": str(state)}, timeout=scaled(120))
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.splitlines()[-1])
    # what there was to clean up: processes, the container's root filesystem mounted in the node's
    # mount namespace, the network namespace (and its mount on the host), the veth and the container's cgroups
    commands = " | ".join(seen["processes"].values())
    for what in ("containerd --config", "containerd-shim-runc-v2", "sleep infinity"):
        assert what in commands, commands
    assert seen["overlays"], "the container's root filesystem was not mounted in the node's mount namespace"
    assert set(seen["before"]) == {"netns", "links", "mounts", "cgroups"}, seen["before"]  # mounts: /run/netns/...
    # and what is left of it
    alive = [p for p in [*map(int, seen["processes"]), seen["container"]] if hack_cluster._alive(p)]
    assert not alive, {p: Path(f"/proc/{p}/cmdline").read_text() for p in alive}
    in_mntns = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "ns" / "mnt") == seen["mntns"]:
                in_mntns.append(entry.name)
        except OSError:
            continue
    assert not in_mntns, f"the node's mount namespace lives on in {in_mntns}"
    assert node.leftovers("zeroth-node-t", "zeroth-veth-t", "zeroth-node-t", state) == {}
    assert not (state / "node").exists()
