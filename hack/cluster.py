#!/usr/bin/env python3
"""Starts and stops a real Kubernetes cluster on this machine, for tests and local use.

    python hack/cluster.py up      # build if needed, start, wait until ready; reuse one already up
    python hack/cluster.py down    # stop what `up` started (by process id) and remove the real node
    python hack/cluster.py env     # print KUBECONFIG and PATH for a shell: eval "$(... env)"
    python hack/cluster.py load-image ARCHIVE NAME   # an OCI archive into the real node, as NAME
    python hack/cluster.py restart NAME [SECONDS]    # stop one component (etcd, kube-apiserver, ...),
                                                     # wait SECONDS, start it again as it was: chaos tests

etcd, kube-apiserver (TLS, token authentication, Node and RBAC authorization, Pod Security
admission), kube-controller-manager, kube-scheduler and kwok, built from upstream Go modules by
hack/build-cluster.sh. kwok stands in for kubelets on the fake nodes: it keeps them Ready and moves
pods through their phases without running anything. Beside them, one real node (hack/node.py): a
kubelet with containerd, in its own network namespace, labelled REAL_NODE_LABEL and tainted
REAL_NODE_TAINT so that only pods that ask for it run there (hack/build-node.sh builds its parts).
The API server listens on the host's end of that node's veth (API_HOST), not on 127.0.0.1, so pods
can reach it too; the other components stay on 127.0.0.1.
Standard library only, so it runs before any virtualenv exists.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HACK = Path(__file__).resolve().parent
sys.path.insert(0, str(HACK))
import node  # noqa: E402 - this directory's node.py

CACHE = Path(os.environ.get("ZEROTH_CACHE", Path.home() / ".cache" / "zeroth"))
STATE = Path(os.environ.get("ZEROTH_CLUSTER_DIR", CACHE / "cluster"))
PORTS = {"etcd": 23790, "etcd-peer": 23800, "apiserver": 26443, "controller-manager": 26257, "scheduler": 26259, "kwok": 26080}
SERVICE_CIDR = "10.96.0.0/16"  # virtual Service IPs inside the API server; nothing listens there
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
CPU_NODES = 2
GPU_NODES = 4
GPUS_PER_NODE = 8
GPU_LABEL = "nvidia.com/gpu.present"
# GPU nodes labelled as other clusters label theirs (GKE, EKS), and one with no GPU label at all:
# GPU pods go there only where a run's or the operator's gpuNodeSelector says so
OTHER_GPU_NODES = {"gpu-gke": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
                   "gpu-eks": {"k8s.amazonaws.com/accelerator": "nvidia-tesla-a10g"},
                   "gpu-bare": {}}
GPU_RESOURCE = "nvidia.com/gpu"
# The real node: pods that want it select the label and tolerate the taint (NoSchedule).
REAL_NODE = node.NAME
REAL_NODE_LABEL = "zeroth.dev/node"
REAL_NODE_LABEL_VALUE = "real"
REAL_NODE_TAINT = "zeroth.dev/real-node"
API_HOST = node.HOST_IP  # where the API server listens: reachable from the host and from pods


def log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def scaled(seconds: float) -> float:
    """A time limit of `seconds` on the reference machine, on this one: times ZEROTH_SPEED_FACTOR, the
    slowdown factor the test session measured (tests/speed.py), never below 1."""
    return seconds * max(float(os.environ.get("ZEROTH_SPEED_FACTOR") or 1), 1.0)


def bin_dir() -> Path:
    out = subprocess.run([str(HACK / "build-cluster.sh")], check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def node_dir() -> Path:
    """hack/build-node.sh's output: containerd, CNI plugins, CoreDNS, the policy enforcer, images."""
    out = subprocess.run([str(HACK / "build-node.sh")], check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def kubeconfig() -> Path:
    return STATE / "kubeconfig"


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2))  # JSON is YAML


# ------------------------------------------------------------------------------- certificates


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(pki: Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=zeroth-test-ca",
             "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"))
    ext = pki / "serving.ext"
    ext.write_text(f"subjectAltName=IP:127.0.0.1,IP:{API_HOST},IP:10.96.0.1,DNS:localhost,DNS:kubernetes,"
                   "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
                   "extendedKeyUsage=serverAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver",
             "-keyout", str(pki / "apiserver.key"), "-out", str(pki / "apiserver.csr"))
    _openssl("x509", "-req", "-in", str(pki / "apiserver.csr"), "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
             "-CAcreateserial", "-days", "3650", "-extfile", str(ext), "-out", str(pki / "apiserver.crt"))
    # the API server's client certificate for kubelets (logs, exec): a cluster admin to their webhook
    (pki / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client",
             "-keyout", str(pki / "kubelet-client.key"), "-out", str(pki / "kubelet-client.csr"))
    _openssl("x509", "-req", "-in", str(pki / "kubelet-client.csr"), "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
             "-CAcreateserial", "-days", "3650", "-extfile", str(pki / "client.ext"), "-out", str(pki / "kubelet-client.crt"))
    _openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    _openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))


TOKEN_USERS = {  # who the static tokens authenticate: user name and groups
    "admin": ("zeroth-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", ""),
    "scheduler": ("system:kube-scheduler", ""),
    # the real node: its kubelet (Node authorizer), kube-proxy (bootstrap RBAC's system:node-proxier),
    # and two add-ons whose ClusterRoles node.py applies
    "kubelet": (f"system:node:{node.NAME}", "system:nodes"),
    "kube-proxy": ("system:kube-proxy", ""),
    "coredns": ("zeroth:coredns", ""),
    "kube-router": ("zeroth:kube-router", ""),
}


def make_tokens(path: Path) -> dict[str, str]:
    """Static bearer tokens: the admin user, the two controllers under their bootstrap RBAC names,
    and the real node's components."""
    tokens = {k: secrets.token_hex(16) for k in TOKEN_USERS}
    path.write_text("".join(f'{tokens[k]},{name},{name},"{groups}"\n' for k, (name, groups) in TOKEN_USERS.items()))
    return tokens


def write_kubeconfig(path: Path, token: str, user: str) -> None:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "zeroth-local", "cluster": {"server": f"https://{API_HOST}:{PORTS['apiserver']}",
                                                         "certificate-authority": str(STATE / "pki" / "ca.crt")}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "zeroth-local", "context": {"cluster": "zeroth-local", "user": user}}],
        "current-context": "zeroth-local",
    }
    path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
    path.chmod(0o600)


# ---------------------------------------------------------------------------------- processes


def _pidfile(name: str) -> Path:
    return STATE / "pids" / f"{name}.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _running(name: str) -> int | None:
    try:
        pid = int(_pidfile(name).read_text())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _commandfile(name: str) -> Path:
    return STATE / "pids" / f"{name}.command.json"


def start(name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    logf = open(STATE / "logs" / f"{name}.log", "ab")
    proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=STATE, env=env)
    _pidfile(name).write_text(str(proc.pid))
    # for `restart`: the command line, and only what the environment adds to ours
    extra = None if env is None else {k: v for k, v in env.items() if os.environ.get(k) != v}
    write_json(_commandfile(name), {"argv": argv, "env": extra})


def _environ(pid: int) -> dict[str, str] | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    return dict(item.split("=", 1) for item in raw.decode(errors="surrogateescape").split("\0") if "=" in item)


def _healthy(name: str):
    """How to tell that component `name` serves again after a restart (None: its own start is enough)."""
    if name == "etcd":
        return lambda: _http_ok(f"http://127.0.0.1:{PORTS['etcd']}/health")
    if name == "kube-apiserver":
        token = json.loads(kubeconfig().read_text())["users"][0]["user"]["token"]
        return lambda: _https_ok(f"https://{API_HOST}:{PORTS['apiserver']}/readyz", token)
    return None


def restart(name: str, seconds: str = "0") -> None:
    """Stops component `name` (SIGTERM, as a node drain or an upgrade would), leaves it down for
    `seconds`, then starts it with the command line and the environment it last ran with (so it
    belongs to whoever started the cluster) and waits until it serves."""
    try:
        saved = json.loads(_commandfile(name).read_text())
    except OSError:
        raise SystemExit(f"[cluster] restart: {name} was never started here (known: "
                         f"{', '.join(sorted(p.name.removesuffix('.command.json') for p in (STATE / 'pids').glob('*.command.json')))})") from None
    pid = _running(name)
    env = _environ(pid) if pid else None  # as it ran: the very environment, not this shell's
    if env is None:
        env = None if saved["env"] is None else {**os.environ, **saved["env"]}
    t0 = time.monotonic()
    stop([name])
    time.sleep(float(seconds))
    start(name, saved["argv"], env)
    check = _healthy(name)
    if check:
        wait_for(f"{name} to serve again", check, component=name)
    log(f"restarted {name}: down {float(seconds):.0f}s, serving again {time.monotonic() - t0:.1f}s after the stop")


def wait_for(what: str, check, timeout: float = 120.0, component: str | None = None) -> None:
    """Polls `check` until it returns true; fails after `timeout` reference seconds (scaled here)."""
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as e:  # noqa: BLE001 - not ready yet: remember why, retry
            last = e
        if component and _running(component) is None:
            tail = (STATE / "logs" / f"{component}.log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"{component} exited while waiting for {what}:\n{tail}")
        time.sleep(0.25)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}: {last}")


def _https_ok(url: str, token: str | None = None) -> bool:
    ctx = ssl.create_default_context(cafile=str(STATE / "pki" / "ca.crt")) if token else ssl._create_unverified_context()  # noqa: S323 - controllers serve self-signed certs
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
        return r.status == 200


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status == 200


def kubectl(bins: Path, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run([str(bins / "kubectl"), "--kubeconfig", str(kubeconfig()), *args], input=stdin,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def node_manifest(name: str, gpu: bool, gpu_labels: dict[str, str] | None = None) -> dict:
    """A kwok node; a GPU node carries NVIDIA GFD's label unless `gpu_labels` says otherwise."""
    labels = {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110"}
    taints = []
    if gpu:
        labels.update({GPU_LABEL: "true"} if gpu_labels is None else gpu_labels)
        capacity[GPU_RESOURCE] = str(GPUS_PER_NODE)
        taints = [{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake"}},
        "spec": {"taints": taints},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def nodes() -> list[dict]:
    return [node_manifest(f"cpu-{i}", gpu=False) for i in range(CPU_NODES)] + [
        node_manifest(f"gpu-{i}", gpu=True) for i in range(GPU_NODES)
    ] + [node_manifest(name, gpu=True, gpu_labels=labels) for name, labels in OTHER_GPU_NODES.items()]


# ----------------------------------------------------------------------------------- commands


def stages(bins: Path) -> list[Path]:
    """kwok's stages: upstream ones copied next to the binaries by the build, and this repo's own
    (one with an upstream file's name replaces it)."""
    ours = sorted((HACK / "kwok-stages").glob("*.yaml"))
    upstream = [s for s in sorted((bins.parent / "kwok-stages").glob("*.yaml")) if s.name not in {o.name for o in ours}]
    return upstream + ours


def fingerprint(bins: Path, node_bins: Path) -> str:
    """What a running control plane was started from: its binaries, the node's, kwok's stages and
    these scripts. A cluster started from anything else is restarted by `up`."""
    digest = hashlib.sha256(f"{bins}\n{node_bins}".encode())
    for s in [*stages(bins), HACK / "cluster.py", HACK / "node.py"]:
        digest.update(s.read_bytes())
    return digest.hexdigest()[:16]


def is_up(bins: Path | None = None, node_bins: Path | None = None) -> bool:
    ready = STATE / "ready"
    if not ready.exists() or any(_running(c) is None for c in (*COMPONENTS, *node.COMPONENTS)):
        return False
    if bins is not None and node_bins is not None and ready.read_text().strip() != fingerprint(bins, node_bins):
        return False
    try:
        token = json.loads(kubeconfig().read_text())["users"][0]["user"]["token"]
        return _https_ok(f"https://{API_HOST}:{PORTS['apiserver']}/readyz", token)
    except Exception:  # noqa: BLE001
        return False


def up() -> None:
    bins = bin_dir()
    node_bins = node_dir()
    if is_up(bins, node_bins):
        log(f"already up: KUBECONFIG={kubeconfig()}")
        return
    down(quiet=True)
    t0 = time.monotonic()
    the_node = node.Node(sys.modules[__name__], node_bins)
    (STATE / "ready").unlink(missing_ok=True)
    for sub in ("pids", "logs"):
        (STATE / sub).mkdir(parents=True, exist_ok=True)
    for stale in (STATE / "etcd-data", STATE / "pki"):
        subprocess.run(["rm", "-rf", str(stale)], check=True)
    make_pki(STATE / "pki")
    tokens = make_tokens(STATE / "pki" / "tokens.csv")
    write_kubeconfig(kubeconfig(), tokens["admin"], "zeroth-admin")
    for key in TOKEN_USERS.keys() - {"admin"}:
        write_kubeconfig(STATE / f"{key}.kubeconfig", tokens[key], TOKEN_USERS[key][0])
    the_node.network_up()  # before the API server: it listens on the node's veth
    pki = STATE / "pki"
    etcd_url = f"http://127.0.0.1:{PORTS['etcd']}"
    peer_url = f"http://127.0.0.1:{PORTS['etcd-peer']}"

    start("etcd", [str(bins / "etcd"), "--name=zeroth", f"--data-dir={STATE / 'etcd-data'}",
                   f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
                   f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
                   f"--initial-cluster=zeroth={peer_url}", "--listen-metrics-urls=",
                   # a throw-away test store: skipping fsync makes writes fast and loses nothing we keep
                   "--unsafe-no-fsync"])
    wait_for("etcd", lambda: _http_ok(f"{etcd_url}/health"), component="etcd")

    start("kube-apiserver", [
        str(bins / "kube-apiserver"), f"--etcd-servers={etcd_url}",
        f"--bind-address={API_HOST}", f"--advertise-address={API_HOST}", f"--secure-port={PORTS['apiserver']}",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}", f"--token-auth-file={pki / 'tokens.csv'}",
        "--authorization-mode=Node,RBAC", "--anonymous-auth=false", "--kubelet-preferred-address-types=InternalIP",
        f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}", f"--kubelet-client-key={pki / 'kubelet-client.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",  # `kubernetes` Service endpoint: API_HOST
        f"--cert-dir={pki}",
    ])
    wait_for("kube-apiserver /readyz", lambda: _https_ok(f"https://{API_HOST}:{PORTS['apiserver']}/readyz", tokens["admin"]),
             component="kube-apiserver")
    kubectl(bins, "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": the_node.api_objects()}))
    the_node.write_configs(pki)
    the_node.start_runtime()
    the_node.start_kubernetes(bins)  # the kubelet registers while the rest comes up

    start("kube-controller-manager", [
        str(bins / "kube-controller-manager"), f"--kubeconfig={STATE / 'controller-manager.kubeconfig'}",
        "--bind-address=127.0.0.1", f"--secure-port={PORTS['controller-manager']}", "--leader-elect=false",
        f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
        "--use-service-account-credentials=true", f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
    ])
    start("kube-scheduler", [
        str(bins / "kube-scheduler"), f"--kubeconfig={STATE / 'scheduler.kubeconfig'}",
        "--bind-address=127.0.0.1", f"--secure-port={PORTS['scheduler']}", "--leader-elect=false",
    ])
    start("kwok", [
        str(bins / "kwok"), f"--kubeconfig={kubeconfig()}", "--manage-all-nodes=false",
        *(f"--config={s}" for s in stages(bins)), "--node-lease-duration-seconds=40",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        f"--server-address=127.0.0.1:{PORTS['kwok']}", "--cidr=10.244.0.0/16", "--node-ip=127.0.0.1",
    ])
    wait_for("kube-controller-manager /healthz", lambda: _https_ok(f"https://127.0.0.1:{PORTS['controller-manager']}/healthz"),
             component="kube-controller-manager")
    wait_for("kube-scheduler /healthz", lambda: _https_ok(f"https://127.0.0.1:{PORTS['scheduler']}/healthz"),
             component="kube-scheduler")
    wait_for("kwok /healthz", lambda: _http_ok(f"http://127.0.0.1:{PORTS['kwok']}/healthz"), component="kwok")

    kubectl(bins, "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes()}))
    names = [n["metadata"]["name"] for n in nodes()]
    kubectl(bins, "wait", "--for=condition=Ready", f"--timeout={scaled(120):.0f}s", *[f"node/{n}" for n in names])
    # The controller-manager creates each namespace's default ServiceAccount; pods need it.
    wait_for("the default ServiceAccount", lambda: kubectl(bins, "get", "serviceaccount", "default", "-o", "name"),
             component="kube-controller-manager")
    the_node.wait_ready(bins)
    (STATE / "ready").write_text(fingerprint(bins, node_bins) + "\n")
    log(f"up in {time.monotonic() - t0:.1f}s: {CPU_NODES} CPU and {GPU_NODES + len(OTHER_GPU_NODES)} GPU kwok nodes, real node {REAL_NODE}; "
        f"KUBECONFIG={kubeconfig()}")


def stop(names: list[str]) -> list[str]:
    """SIGTERM to each process group started by `start`, SIGKILL after 15 s; returns what ran."""
    stopped = []
    for name in names:
        pid = _running(name)
        if pid is not None:
            os.killpg(pid, signal.SIGTERM)
            stopped.append((name, pid))
        _pidfile(name).unlink(missing_ok=True)
    deadline = time.monotonic() + 15
    for name, pid in stopped:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    return [n for n, _ in stopped]


def down(quiet: bool = False) -> None:
    (STATE / "ready").unlink(missing_ok=True)
    add_ons = sorted({p.stem for p in (STATE / "pids").glob("*.pid")} - set(COMPONENTS) - set(node.COMPONENTS))  # e.g. kueue.py's
    stopped = stop(add_ons)
    the_node = node.Node(sys.modules[__name__], None)
    stopped += the_node.down()
    stopped += stop(list(reversed(COMPONENTS)))
    the_node.network_down()  # after the API server, which listens on the node's veth
    if not quiet or stopped:
        log(f"stopped {', '.join(stopped) or 'nothing (none running)'}")


def env() -> None:
    print(f"export KUBECONFIG={kubeconfig()}")
    print(f"export PATH={bin_dir()}:$PATH")


def load_image(archive: str, name: str) -> None:
    """An OCI image archive into the running real node's containerd, as `name` (node.Node.load_image)."""
    t0 = time.monotonic()
    try:
        node.Node(sys.modules[__name__], node_dir()).load_image(Path(archive), name)
    except RuntimeError as e:
        raise SystemExit(f"[cluster] load-image: {e}") from None
    log(f"loaded {archive} as {name} in {time.monotonic() - t0:.1f}s")


def main(argv: list[str], commands: dict | None = None, doc: str | None = __doc__) -> int:
    """`python <script> COMMAND [ARGS]`: this script's commands, or another hack/ script's."""
    commands = commands or {"up": up, "down": down, "env": env, "load-image": load_image, "restart": restart}
    try:
        command = commands[argv[1]]
        inspect.signature(command).bind(*argv[2:])
    except (IndexError, KeyError, TypeError):
        print(doc, file=sys.stderr)
        return 2
    command(*argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
