"""The pod watch against the real control plane: the API server sends the operator its own pods
only (a server-side label selector, kopf's settings.watching.label_selectors), so the cluster's
other pods never cross the wire to it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Cluster, Operator, _free_port, install_chart, service_account_kubeconfig
from tests.integration.test_control_plane_faults import Blackhole
from tests.integration.test_watch_scope import fresh_namespace

pytestmark = pytest.mark.cluster


class Counting(Blackhole):
    """A TCP proxy that counts the bytes the API server sends through it."""

    def __init__(self, target: tuple[str, int]):
        self.received = 0
        self._lock = threading.Lock()
        super().__init__(target)

    def _pump(self, src, dst, gate) -> None:  # noqa: ANN001 - Blackhole's signature
        upstream = any(src is up for _, up, _ in self.conns)
        try:
            while data := src.recv(65536):
                if upstream:
                    with self._lock:
                        self.received += len(data)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            s.close()


def test_the_pod_watch_leaves_other_pods_on_the_server(crd: Cluster, tmp_path: Path):
    """Pods with no label of ours, created and deleted in the namespace the operator serves: the
    bytes the API server sends the operator grow by a small part of what those pods weigh (a
    client-side filter receives each pod whole on its ADDED, MODIFIED and DELETED events).
    The operator is namespace-scoped (the chart's watchNamespaces) so that what other tests do
    elsewhere in the cluster does not reach it either; the selector is the same cluster-wide."""
    c = crd
    system, served = fresh_namespace(c, "zeroth-system"), fresh_namespace(c, "served", restricted=False)
    release = f"watch-{system[-6:]}"
    objects = install_chart(c, system, release, "--set", "replicaCount=0", "--set", f"watchNamespaces={{{served}}}")
    account = next(o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount")
    kubeconfig = json.loads(service_account_kubeconfig(c, system, account, tmp_path / "direct").read_text())
    host, port = kubeconfig["clusters"][0]["cluster"]["server"].removeprefix("https://").rsplit(":", 1)
    proxy = Counting((host, int(port)))
    kubeconfig["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"  # in the serving cert
    (tmp_path / "kubeconfig").write_text(json.dumps(kubeconfig))
    watching = Operator(c, tmp_path / "kubeconfig", tmp_path / "operator.log", _free_port(), _free_port(),
                        env={"ZEROTH_RESYNC_SECONDS": "3600"}, namespaces=(served,))
    try:
        watching.start()  # no run in its namespace: nothing of ours changes there, no other operator acts there
        time.sleep(3)
        before = proxy.received
        assert before, "nothing went through the proxy: the operator did not list what it watches"
        pods = [{"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": f"crowd-{i}", "namespace": served, "labels": {"app": "crowd"},
                              "annotations": {"filler": "x" * 4096}},
                 "spec": {"nodeName": f"cpu-{i % 2}", "containers": [{"name": "c", "image": "busybox"}]}} for i in range(100)]
        c.apply({"apiVersion": "v1", "kind": "List", "items": pods})
        weight = len(c.kubectl("get", "pods", "-n", served, "-l", "app=crowd", "-o", "json").stdout)  # as the server sends them
        c.kubectl("delete", "pods", "-l", "app=crowd", "-n", served, "--grace-period=0", "--force", "--wait=true")
        time.sleep(2)
        got = proxy.received - before
        print(f"\nother pods: {weight} bytes as listed; sent to the operator meanwhile: {got} bytes")
        assert got < weight / 10, f"the operator received {got} bytes while {weight} bytes of other pods came and went"
        assert watching.proc.poll() is None
    finally:
        watching.stop()
        proxy.close()
        c.run("helm", "uninstall", release, "--namespace", system, check=False)
        c.kubectl("delete", "namespace", system, served, "--wait=false", check=False)
