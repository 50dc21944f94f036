"""The real worker node of hack/cluster.py: a kubelet with containerd 2, runc, CNI, CoreDNS, kube-proxy
and a NetworkPolicy enforcer, beside the kwok nodes. Imported by cluster.py; standard library only.

    python hack/cluster.py load-image ARCHIVE NAME   # an OCI archive (tar) into the node's containerd

How it is put together, and why:
  * Network: the node has its own network namespace (NETNS), joined to the host only by a veth pair:
    HOST_IP on the host side (VETH), NODE_IP inside. The API server binds and advertises HOST_IP, so
    the kubelet, kube-proxy and pods reach it, and `kubernetes.default.svc` has a real endpoint;
    pods reach the host at that port only (`host_guard`).
    Pods get addresses from POD_CIDR on a CNI bridge inside the node's namespace, whose only other
    link is the veth; the host has one route, POD_CIDR over the veth, so the API server can answer
    pods. There is no default route in the node's namespace, no NAT and no forwarding on the host:
    nothing a pod sends can leave the machine.
  * Mounts: a holder process (`sleep`) owns a private mount namespace inside the node's network
    namespace; containerd, the kubelet and the rest are started in it with nsenter. containerd's
    state (/run/containerd, where its shims' sockets must live), the pods' overlay roots, volumes,
    network namespaces and logs are mounted there, so they never show on the host and all vanish
    with the namespace on `down`.
  * CoreDNS runs as a process in the node's namespace (no image to build or pull, and it is up before
    the first pod), behind the `kube-dns` Service at DNS_IP with a selector-less EndpointSlice that
    points at NODE_IP. It serves cluster.local and reverse zones from the API and forwards nothing:
    the binary (hack/coredns) has no plugin that could.
  * kube-proxy (iptables mode) and the NetworkPolicy enforcer run in the node's namespace too, so
    their rules live and die with it. The enforcer is kube-router with only its firewall on
    (iptables and ipset). kube-network-policies v0.8.0 cannot work on this machine kind: it sends
    every new connection to userspace with nftables' `queue` statement, and the kernel is built
    without it (CONFIG_NFT_QUEUE unset: `nft add rule ... queue num 100` fails "No such file or
    directory", and kube-network-policies logs "syncing nftables rules" error "netlink receive: no
    such file or directory" and enforces nothing).
  * The node registers with LABEL and TAINT (cluster.REAL_NODE_LABEL, cluster.REAL_NODE_TAINT): only
    pods that select it and tolerate the taint land there, never an unrelated test's pod.
  * What this machine kind lacks or forbids: cgroup v1 only (the kubelet's `failCgroupV1: false`),
    no CAP_SYS_RESOURCE (containerd's `restrict_oom_score_adj`: a pod's oom_score_adj is never below
    containerd's own). The kubelet sets a few machine-wide sysctls (KUBELET_SYSCTLS) when it starts,
    as on any node; `down` puts back the values it found.
  * Each `up` starts from an empty containerd root and imports the pause image (the CRI sandbox image,
    PAUSE_IMAGE, pinned in containerd's configuration) and the test image (TEST_IMAGE, busybox), both
    built by hack/build-node.sh. Other images are loaded with `load-image`.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

NAME = "zeroth-real"
NETNS = "zeroth-node"
VETH = "zeroth-veth"
HOST_IP = "10.250.0.1"
NODE_IP = "10.250.0.2"
VETH_PREFIX = 30
POD_CIDR = "10.245.0.0/24"  # kwok's pods take 10.244.0.0/16
DNS_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
CGROUP_ROOT = "zeroth-node"  # the pods' cgroups, under each v1 controller (and the unified hierarchy)
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
TEST_IMAGE = "zeroth.dev/busybox:test"
K8S_NAMESPACE = "k8s.io"  # containerd's namespace for the CRI
# Machine-wide settings the kubelet sets at start (as on any node; they are not per namespace):
# recorded before it starts and put back by `down`.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
# Started in this order, stopped in the reverse one; the holder owns the node's mount namespace.
COMPONENTS = ("node-holder", "containerd", "kubelet", "kube-proxy", "coredns", "kube-router")


class Node:
    """The node's paths and commands for one cluster state directory and one set of binaries."""

    def __init__(self, cluster, out: Path | None, netns: str = NETNS, veth: str = VETH, host_ip: str = HOST_IP,
                 node_ip: str = NODE_IP, cgroup_root: str = CGROUP_ROOT, pod_cidr: str | None = POD_CIDR):
        self.c = cluster  # hack/cluster.py, passed in (it imports this module)
        self.out = out  # hack/build-node.sh's output directory
        self.dir = cluster.STATE / "node"
        # the test of `down` makes a second node beside the cluster's, under other names
        self.netns, self.veth, self.host_ip, self.node_ip, self.cgroup_root = netns, veth, host_ip, node_ip, cgroup_root
        self.pod_cidr = pod_cidr  # routed from the host over the veth

    # -------------------------------------------------------------------------- shared helpers

    def holder(self) -> int | None:
        return self.c._running("node-holder")

    def nsenter(self) -> list[str]:
        pid = self.holder()
        if pid is None:
            raise RuntimeError("the node is not running (no holder process)")
        return ["nsenter", f"--target={pid}", "--mount", "--net", "--"]

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.nsenter(), str(self.out / "bin" / "ctr"), "--address", "/run/containerd/containerd.sock",
                               "--namespace", K8S_NAMESPACE, *args], capture_output=True, text=True, timeout=self.c.scaled(timeout))
        if check and proc.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    # -------------------------------------------------------------------------------- network

    def network_up(self) -> None:
        """The node's network namespace and the veth pair that is its only link (before the API
        server starts: it binds HOST_IP)."""
        run = lambda *a: subprocess.run(["ip", *a], check=True, capture_output=True)  # noqa: E731
        run("netns", "add", self.netns)
        run("link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        run("addr", "add", f"{self.host_ip}/{VETH_PREFIX}", "dev", self.veth)
        run("link", "set", self.veth, "up")
        if self.pod_cidr:
            run("route", "add", self.pod_cidr, "via", self.node_ip, "dev", self.veth)
            subprocess.run(["ip", "netns", "exec", self.netns, "nft", "-f", "-"], input=self.host_guard(), text=True,
                           check=True, capture_output=True)
        inside = lambda *a: run("-n", self.netns, *a)  # noqa: E731
        inside("link", "set", "lo", "up")
        inside("addr", "add", f"{self.node_ip}/{VETH_PREFIX}", "dev", "eth0")
        inside("link", "set", "eth0", "up")
        for key in ("net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1"):
            subprocess.run(["ip", "netns", "exec", self.netns, "sysctl", "-qw", key], check=True, capture_output=True)

    def host_guard(self) -> str:
        """nftables rules for the node's namespace: pods reach the host at the API server's port
        and nowhere else (the host may serve other things on all its addresses). A base chain of
        its own, before iptables' (priority -10), after kube-proxy's DNAT: a Service cannot be a
        way around it, and kube-router's rules cannot accept past it."""
        api = self.c.PORTS["apiserver"]
        return f"""table ip zeroth-node-guard {{
    chain forward {{
        type filter hook forward priority -10; policy accept;
        ip saddr {self.pod_cidr} ip daddr {self.host_ip} tcp dport != {api} drop
        ip saddr {self.pod_cidr} ip daddr {self.host_ip} meta l4proto != tcp drop
    }}
}}
"""

    # ----------------------------------------------------------------------------- configuration

    def write_configs(self, pki: Path) -> None:
        d = self.dir
        for sub in ("cni", "cni-ipam", "kubelet", "pod-logs"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "cni" / "10-zeroth.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "zeroth", "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]], "routes": [{"dst": "0.0.0.0/0"}],
                          "dataDir": str(d / "cni-ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ]}, indent=2))
        (d / "containerd.toml").write_text(f"""version = 3
root = "{d / 'containerd'}"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.erofs", "io.containerd.nri.v1.nri",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true  # no CAP_SYS_RESOURCE here: pods never go below containerd's own score
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{self.out / 'cni'}"]
    conf_dir = "{d / 'cni'}"
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "runc"
        SystemdCgroup = false
""")
        (d / "resolv.conf").write_text("")  # the node's own resolver: none (pods use cluster DNS)
        self.c.write_json(d / "kubelet.yaml", {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # this machine kind has cgroup v1; 1.35+ refuses it unless told
            "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{self.cgroup_root}",
            "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
            "address": self.node_ip, "port": 10250, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(pki / "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "clusterDNS": [DNS_IP], "clusterDomain": CLUSTER_DOMAIN, "resolvConf": str(d / "resolv.conf"),
            "registerWithTaints": [{"key": self.c.REAL_NODE_TAINT, "value": "true", "effect": "NoSchedule"}],
            "failSwapOn": False, "serializeImagePulls": False, "maxPods": 50,
            # a test machine's disk is what it is: evict only when it is really full
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "nodeStatusReportFrequency": "10s", "syncFrequency": "10s", "fileCheckFrequency": "5s",
        })
        self.c.write_json(d / "kube-proxy.yaml", {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.c.STATE / "kube-proxy.kubeconfig")},
            "mode": "iptables", "clusterCIDR": POD_CIDR, "hostnameOverride": NAME,
            "healthzBindAddress": "127.0.0.1:10256", "metricsBindAddress": "127.0.0.1:10249",
            "conntrack": {"maxPerCore": 0, "min": 0},  # leave the machine's conntrack table size alone
            "nodePortAddresses": [f"{self.node_ip}/32"],
            "iptables": {"minSyncPeriod": "1s", "syncPeriod": "30s"},
        })
        (d / "Corefile").write_text(f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    errors
    ready 127.0.0.1:8181
    health 127.0.0.1:8080
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.c.STATE / 'coredns.kubeconfig'} zeroth-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
""")

    def api_objects(self) -> list[dict]:
        """Cluster DNS's Service with its selector-less EndpointSlice, and the RBAC of the node's
        add-ons that run as users of the static token file."""
        dns_ports = [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]
        role = lambda name, rules: [  # noqa: E731
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name}, "rules": rules},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name}]}]
        watch = ["get", "list", "watch"]
        return [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system",
                                                               "labels": {"k8s-app": "kube-dns"}},
             "spec": {"clusterIP": DNS_IP, "ports": [{**p, "targetPort": 53} for p in dns_ports]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "kube-dns-node", "namespace": "kube-system",
                          "labels": {"kubernetes.io/service-name": "kube-dns", "endpointslice.kubernetes.io/managed-by": "cluster-py.zeroth.dev"}},
             "addressType": "IPv4", "ports": dns_ports,
             "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}, "nodeName": NAME}]},
            *role("zeroth:coredns", [
                {"apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": watch},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": watch}]),
            *role("zeroth:kube-router", [  # its informers watch all of these, even with only the firewall on
                {"apiGroups": [""], "resources": ["pods", "namespaces", "nodes", "services", "endpoints"], "verbs": watch},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": watch},
                {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": watch}]),
        ]

    # -------------------------------------------------------------------------------- lifecycle

    def start_runtime(self) -> None:
        """The holder of the node's mount namespace, containerd in it, and the images it needs."""
        d, c = self.dir, self.c
        (d / "pod-logs").mkdir(parents=True, exist_ok=True)
        for path in ("/run/containerd", "/var/log/pods"):
            Path(path).mkdir(parents=True, exist_ok=True)  # mount points (empty on the host)
        for ctrl in self.cgroup_hierarchies():
            (ctrl / self.cgroup_root).mkdir(exist_ok=True)
        mounts = " && ".join([
            "mount -t tmpfs -o mode=0711 zeroth-node-run /run/containerd",
            # a sysfs of the node's network namespace (its /sys/class/net), with the host's cgroups
            "mkdir /run/containerd/cgroup", "mount --rbind /sys/fs/cgroup /run/containerd/cgroup",
            "umount -l /sys", "mount -t sysfs zeroth-node-sys /sys",
            "mount --move /run/containerd/cgroup /sys/fs/cgroup", "rmdir /run/containerd/cgroup",
            f"mount --bind {d / 'pod-logs'} /var/log/pods",
        ])
        c.start("node-holder", ["nsenter", f"--net=/run/netns/{self.netns}", "unshare", "--mount", "--propagation", "private",
                                "sh", "-c", f"{mounts} && exec sleep infinity"])
        c.wait_for("the node's mount namespace", lambda: self._mounted("/run/containerd"), component="node-holder")
        # under a subreaper of its own: the shims it daemonizes are reaped when they end (hack/subreaper.py)
        c.start("containerd", [sys.executable, str(Path(__file__).with_name("subreaper.py")), *self.nsenter(),
                               str(self.out / "bin" / "containerd"), "--config", str(d / "containerd.toml")], env=self.env())
        c.wait_for("containerd", lambda: self.ctr("version", timeout=10).returncode == 0, component="containerd")
        for archive, name in ((self.out / "images" / "pause.tar", PAUSE_IMAGE), (self.out / "images" / "busybox.tar", TEST_IMAGE)):
            self.load_image(archive, name, pinned=True)

    def start_kubernetes(self, bins: Path) -> None:
        """The kubelet, kube-proxy and CoreDNS (kube-router waits for the node: `wait_ready`)."""
        d, c, env = self.dir, self.c, self.env()
        saved = d / "sysctls.json"
        if not saved.exists():
            c.write_json(saved, {k: Path("/proc/sys", k).read_text().strip() for k in KUBELET_SYSCTLS})
        c.start("kubelet", [*self.nsenter(), str(bins / "kubelet"), f"--config={d / 'kubelet.yaml'}",
                            f"--kubeconfig={c.STATE / 'kubelet.kubeconfig'}", f"--root-dir={d / 'kubelet'}",
                            f"--hostname-override={NAME}", f"--node-ip={self.node_ip}",
                            f"--node-labels={c.REAL_NODE_LABEL}={c.REAL_NODE_LABEL_VALUE}"], env=env)
        c.start("kube-proxy", [*self.nsenter(), str(bins / "kube-proxy"), f"--config={d / 'kube-proxy.yaml'}"], env=env)
        c.start("coredns", [*self.nsenter(), str(self.out / "bin" / "coredns"), "-conf", str(d / "Corefile")], env=env)

    def env(self) -> dict[str, str]:
        """The node's processes find containerd's shim (and runc, iptables, ipset) on PATH."""
        return {**os.environ, "PATH": f"{self.out / 'bin'}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}

    def wait_ready(self, bins: Path) -> None:
        c = self.c
        c.wait_for(f"node {NAME} registered", lambda: c.kubectl(bins, "get", "node", NAME, "-o", "name"), component="kubelet")
        # kube-router looks its node up once, when it starts
        c.start("kube-router", [*self.nsenter(), str(self.out / "bin" / "kube-router"), f"--kubeconfig={c.STATE / 'kube-router.kubeconfig'}",
                                f"--hostname-override={NAME}", "--run-firewall=true", "--run-router=false",
                                "--run-service-proxy=false", "--enable-ipv6=false", f"--service-cluster-ip-range={c.SERVICE_CIDR}",
                                "--health-port=20244", "--metrics-port=0"], env=self.env())
        c.kubectl(bins, "wait", "--for=condition=Ready", f"--timeout={c.scaled(120):.0f}s", f"node/{NAME}")
        c.wait_for("CoreDNS ready", lambda: self._in_node_http("http://127.0.0.1:8181/ready"), component="coredns")
        c.wait_for("kube-proxy healthy", lambda: self._in_node_http("http://127.0.0.1:10256/healthz"), component="kube-proxy")
        c.wait_for("kube-router healthy", lambda: self._in_node_http("http://127.0.0.1:20244/healthz"), component="kube-router")

    def _in_node_http(self, url: str) -> bool:
        # our Python, in the node's network namespace (the host cannot reach its loopback)
        code = f"import urllib.request,sys; sys.exit(0 if urllib.request.urlopen({url!r}, timeout=3).status == 200 else 1)"
        return subprocess.run(["ip", "netns", "exec", self.netns, "python3", "-c", code], capture_output=True, timeout=10).returncode == 0

    def _mounted(self, path: str) -> bool:
        pid = self.holder()
        return pid is not None and any(line.split()[4] == path for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines())

    def images(self) -> list[str]:
        return self.ctr("images", "ls", "-q").stdout.split()

    def load_image(self, archive: Path, name: str, pinned: bool = False) -> None:
        """An OCI image archive (a tar of an OCI layout, as umoci, buildah, skopeo or `docker save`
        write them) into the node's containerd, under `name` (what a pod's `image:` says), and only
        that: the archive's own names are replaced on the way in (its index.json is rewritten while
        the tar streams to `ctr images import`), so no second name can point at the same image."""
        name = normalize(name)
        try:  # before ctr starts: a clear error for anything but an OCI archive
            with tarfile.open(archive) as tar:
                if not any(m.name.lstrip("./") == "index.json" for m in tar):
                    raise RuntimeError(f"{archive} is not an OCI archive: it has no index.json")
        except (OSError, tarfile.TarError) as e:
            raise RuntimeError(f"{archive} is not an OCI archive (a tar of an OCI image layout): {e}") from e
        repo = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
        args = ["images", "import", "--local", "--base-name", repo]  # keeps only names under `repo`
        if pinned:  # the kubelet's image garbage collection leaves it alone
            args += ["--label", "io.cri-containerd.pinned=pinned"]
        proc = subprocess.Popen([*self.nsenter(), str(self.out / "bin" / "ctr"), "--address", "/run/containerd/containerd.sock",
                                 "--namespace", K8S_NAMESPACE, *args, "-"],
                                stdin=subprocess.PIPE, stdout=(out := tempfile.TemporaryFile()), stderr=subprocess.STDOUT)
        try:
            with tarfile.open(archive) as src, tarfile.open(fileobj=proc.stdin, mode="w|") as dst:
                for member in src:
                    if member.name.lstrip("./") == "index.json":
                        index = json.load(src.extractfile(member))
                        for m in index.get("manifests", []):
                            m.setdefault("annotations", {})["org.opencontainers.image.ref.name"] = name
                        data = json.dumps(index).encode()
                        member.size = len(data)
                        dst.addfile(member, io.BytesIO(data))
                    else:
                        dst.addfile(member, src.extractfile(member) if member.isfile() else None)
            proc.stdin.close()
        except BrokenPipeError:  # ctr gave up: its output says why
            pass
        proc.wait(timeout=self.c.scaled(600))
        out.seek(0)
        said = out.read().decode(errors="replace").strip()
        if proc.returncode != 0:
            raise RuntimeError(f"importing {archive} as {name} failed: {said}")
        if name not in self.ctr("images", "ls", "-q").stdout.split():
            raise RuntimeError(f"importing {archive} did not create {name}: {said}")

    # -------------------------------------------------------------------------------- clean-up

    @staticmethod
    def cgroup_hierarchies() -> list[Path]:
        root = Path("/sys/fs/cgroup")
        return [p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and (p / "cgroup.procs").exists()] + (
            [root] if (root / "cgroup.procs").exists() else [])

    def processes(self) -> list[int]:
        """Every process of the node that is not in a process group `start` made: the shims (in the
        node's mount namespace) and the containers (in the pods' cgroups)."""
        pids: set[int] = set()
        holder = self.holder()
        mnt = os.readlink(f"/proc/{holder}/ns/mnt") if holder else None
        try:
            netns = os.stat(f"/run/netns/{self.netns}").st_ino
        except OSError:
            netns = None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if (mnt and os.readlink(entry / "ns" / "mnt") == mnt) or (netns and os.stat(entry / "ns" / "net").st_ino == netns):
                    pids.add(int(entry.name))
            except OSError:
                continue
        for ctrl in self.cgroup_hierarchies():
            for procs in (ctrl / self.cgroup_root).rglob("cgroup.procs") if (ctrl / self.cgroup_root).exists() else []:
                try:
                    pids.update(int(p) for p in procs.read_text().split())
                except OSError:
                    continue
        pids.discard(os.getpid())
        return sorted(pids)

    def down(self) -> list[str]:
        """Stops everything `start_runtime` and `start_kubernetes` started: the processes by group,
        then every process left in the node (shims, containers), the mount namespace with them,
        and the pods' cgroups. Then `network_down`, unless the API server is still to stop."""
        stopped = self.c.stop([n for n in reversed(COMPONENTS) if n != "node-holder"])
        for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 10.0)):  # a container's pid 1 may ignore TERM
            left = [p for p in self.processes() if p != self.holder()]
            for pid in left:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while left and time.monotonic() < deadline:
                left = [p for p in left if self.c._alive(p)]
                time.sleep(0.1)
        stopped += self.c.stop(["node-holder"])
        for ctrl in self.cgroup_hierarchies():
            top = ctrl / self.cgroup_root
            if top.exists():
                for cg in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]:
                    try:
                        cg.rmdir()
                    except OSError:
                        pass
        return stopped

    def network_down(self) -> None:
        """Removes what `network_up` made: the network namespace (its veth end, bridge, iptables
        and ipset rules die with it) and the host's end of the veth; puts back the sysctls the
        kubelet changed; removes the node's state."""
        saved = self.dir / "sysctls.json"
        if saved.exists():
            for key, value in json.loads(saved.read_text()).items():
                Path("/proc/sys", key).write_text(value + "\n")
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        if self.dir.exists():
            subprocess.run(["rm", "-rf", str(self.dir)], check=True)


def normalize(name: str) -> str:
    """An image name as the kubelet asks containerd for it: `busybox` is docker.io/library/busybox:latest."""
    first, _, rest = name.partition("/")
    if not rest or not ("." in first or ":" in first or first == "localhost"):
        name = f"docker.io/{name if rest else 'library/' + name}"
    if "@" not in name and ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name


def leftovers(netns: str = NETNS, veth: str = VETH, cgroup_root: str = CGROUP_ROOT, state: Path | None = None) -> dict[str, list[str]]:
    """What a node left behind on the host, if anything: for the test of `down`."""
    found: dict[str, list[str]] = {}
    if netns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split():
        found["netns"] = [netns]
    if subprocess.run(["ip", "link", "show", veth], capture_output=True).returncode == 0:
        found["links"] = [veth]
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if f"/netns/{netns} " in line or (state and str(state) in line)]
    if mounts:
        found["mounts"] = mounts
    cg = [str(p / cgroup_root) for p in Node.cgroup_hierarchies() if (p / cgroup_root).exists()]
    if cg:
        found["cgroups"] = cg
    return found
