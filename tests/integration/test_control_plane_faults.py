"""Faults of a real control plane while the operator reconciles: the API server restarted, etcd
away, status writes meeting 409 Conflicts, runs deleted mid-pass, and watch streams cut. After each,
every run converges to exactly its children (test_chaos.converge) and nothing is left behind.

The faults are real: `hack/cluster.py restart` stops the API server or etcd and starts it again as
it ran; conflicts come from a second writer patching the runs' status, as each run's trainer does;
the cut stream goes through a TCP proxy that stops passing bytes while keeping both ends open, as
a dropped load-balancer or NAT flow looks from either side.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, Cluster, Operator, _free_port
from tests.integration.test_chaos import converge, small
from tests.integration.test_operator import FAIL, live, pods_of, wait_for
from tests.speed import scaled

pytestmark = pytest.mark.cluster


def restart(component: str, down_seconds: float = 0) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "hack" / "cluster.py"), "restart", component, str(down_seconds)],
                          capture_output=True, text=True, timeout=scaled(180))
    assert proc.returncode == 0, proc.stderr


def apply_until_accepted(c: Cluster, ns: str, manifest: dict, timeout: float = 120) -> None:
    """`kubectl apply` as a user does while the control plane is away: again until it is taken."""
    wait_for(f"{manifest['metadata']['name']} accepted", lambda: c.apply(manifest, "-n", ns, check=False).returncode == 0,
             timeout=timeout)


def apply_through(c: Cluster, ns: str, names: list[str], fault) -> None:
    """Applies runs `names`, half before the fault starts, half while it lasts."""
    half = len(names) // 2
    for n in names[:half]:
        c.apply(small(n), "-n", ns)
    faulting = threading.Thread(target=fault)
    faulting.start()
    time.sleep(1.0)  # the fault is under way
    for n in names[half:]:
        apply_until_accepted(c, ns, small(n))
    faulting.join()


def test_runs_converge_through_an_api_server_restart(crd: Cluster, operator: Operator, namespace: str):
    c, ns = crd, namespace
    names = [f"api-{i}" for i in range(6)]
    apply_through(c, ns, names, lambda: restart("kube-apiserver"))
    converge(c, ns, names, operator)
    assert operator.proc.poll() is None  # it lived through it: no crash, no restart of its own
    # its watches are open again: a run applied now is reconciled from its event
    c.apply(small("api-after"), "-n", ns)
    converge(c, ns, [*names, "api-after"], operator, timeout=30)  # well inside the 60 s resync


def test_runs_converge_through_an_etcd_outage(crd: Cluster, operator: Operator, namespace: str):
    c, ns = crd, namespace
    names = [f"etcd-{i}" for i in range(6)]
    apply_through(c, ns, names, lambda: restart("etcd", down_seconds=8))
    converge(c, ns, names, operator)
    assert operator.proc.poll() is None


def test_status_write_conflicts_are_planned_again_not_lost(crd: Cluster, operator: Operator, namespace: str):
    """The operator writes a run's status with the resourceVersion it planned from; a trainer's
    progress patches move that version on, so some writes meet a 409. Each is planned again from a
    fresh read at once: no pass fails for it, the progress written meanwhile is kept, and a
    trainer failure during it counts as one restart, not two."""
    from kubernetes import client, config

    c, ns = crd, namespace
    names = [f"busy-{i}" for i in range(4)]
    custom = client.CustomObjectsApi(config.new_client_from_config(str(c.kubeconfig)))
    writes = {n: 0 for n in names}
    stop = threading.Event()

    def trainers_progress():  # as trainer/status.py does, at about 20 times a trainer's rate
        while not stop.is_set():
            for n in names:
                time.sleep(0.06)
                try:
                    custom.patch_namespaced_custom_object_status(
                        "zeroth.dev", "v1alpha1", ns, "reasoningruns", n,
                        {"status": {"progress": {"step": writes[n] + 1, "maxSteps": 10**6}}})
                    writes[n] += 1
                except client.ApiException:  # not created yet
                    pass

    errors, conflicts = operator.counter("reconcile_errors"), operator.counter("reconcile_conflicts")
    writer = threading.Thread(target=trainers_progress, daemon=True)
    writer.start()
    try:
        for n in names:
            c.apply(small(n), "-n", ns)
        converge(c, ns, names, operator)
        for n in names:
            c.kubectl("label", "pod", f"{n}-trainer-1", "-n", ns, f"{FAIL}=true")

        def restarted(n: str):
            # pods first: the operator stores a restart's attempt number before it creates that
            # attempt's pods, so a status read after them has it (read before them, it may not yet)
            pods = live(pods_of(c, ns, n, "trainer"))
            status = c.get("reasoningrun", n, "-n", ns).get("status") or {}
            return (status.get("phase") == "Running" and len(pods) == 2
                    and {p["metadata"]["labels"]["zeroth.dev/attempt"] for p in pods} == {"1"} and status)
        for n in names:
            status = wait_for(f"{n}'s gang restarted and Running", lambda n=n: restarted(n), timeout=120, operator=operator)
            assert status["restarts"] == 1, n
    finally:
        stop.set()
        writer.join(timeout=30)
    for n in names:
        progress = c.get("reasoningrun", n, "-n", ns)["status"]["progress"]
        assert progress["step"] == writes[n], n  # the operator's writes never took the trainer's away
    assert operator.counter("reconcile_conflicts") > conflicts, "no status write met a conflict: nothing was tested"
    assert operator.counter("reconcile_errors") == errors  # each conflict was planned again within its pass


def test_runs_deleted_mid_reconcile_leave_nothing_behind(crd: Cluster, operator: Operator, namespace: str):
    c, ns = crd, namespace
    rng = random.Random(1)
    names = [f"brief-{i}" for i in range(10)]
    errors = operator.counter("reconcile_errors")
    for n in names:
        c.apply(small(n), "-n", ns)
        time.sleep(rng.uniform(0, 0.6))  # the operator is somewhere in the run's first passes
        c.kubectl("delete", "reasoningrun", n, "-n", ns, "--wait=false")
    kinds = "configmap,secret,serviceaccount,role,rolebinding,service,networkpolicy,pod"

    def left():
        return [f'{o["kind"]}/{o["metadata"]["name"]}' for o in c.get(kinds, "-n", ns, "-l", "zeroth.dev/run")["items"]]
    wait_for("every child of the deleted runs gone", lambda: not left(), timeout=120, operator=operator)
    time.sleep(3)  # a pass still in flight would create its children now: the garbage collector takes them too
    wait_for("every child of the deleted runs gone, still", lambda: not left(), timeout=60, operator=operator)
    assert not c.get("reasoningruns", "-n", ns)["items"]

    def counted():  # the operator's run gauge counts none of them
        return {line for line in operator.metrics().splitlines()
                if line.startswith(f'zeroth_runs{{namespace="{ns}"') and not line.endswith(" 0.0")}
    wait_for("the operator's run count back to 0", lambda: not counted(), timeout=30, operator=operator)
    # a pass that failed because its run went (404 on a write, a ServiceAccount or namespace already
    # collected) is no failure: nothing is retried for a run that is gone
    assert operator.counter("reconcile_errors") == errors


class Blackhole:
    """A TCP proxy to `target`. `hang()` makes every connection open at that moment stop passing
    bytes in both directions, with both ends kept open (a dropped flow: no FIN, no RST, just
    silence); connections opened afterwards pass as before."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        self.hung = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(self.target)
            gate = threading.Event()
            self.conns.append((down, up, gate))
            for src, dst in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(src, dst, gate), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, gate: threading.Event) -> None:
        try:
            while data := src.recv(65536):
                if not gate.is_set():  # hung: read and dropped, so neither sender ever blocks
                    dst.sendall(data)
        except OSError:
            pass
        if not gate.is_set():
            for s in (src, dst):
                s.close()

    def hang(self) -> None:
        for _, _, gate in self.conns:
            if not gate.is_set():
                gate.set()
                self.hung += 1

    def close(self) -> None:
        self.listener.close()
        for down, up, _ in self.conns:
            down.close()
            up.close()


def test_a_cut_watch_stream_and_hung_connections_are_dropped_and_opened_again(crd: Cluster, operator: Operator,
                                                                               namespace: str, tmp_path: Path):
    """The operator's connections to the API server stop passing bytes. Its watch streams are
    noticed idle (ZEROTH_WATCH_IDLE_SECONDS) and opened again; its own calls on pooled connections
    time out (ZEROTH_API_TIMEOUT_SECONDS) and the pass is retried on a new one. The periodic resync
    is off here, so only those two bring the next run's children."""
    c, ns = crd, namespace
    kubeconfig = json.loads(operator.kubeconfig.read_text())
    server = kubeconfig["clusters"][0]["cluster"]["server"]
    host, port = server.removeprefix("https://").rsplit(":", 1)
    proxy = Blackhole((host, int(port)))
    kubeconfig["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"  # in the serving cert
    (tmp_path / "kubeconfig").write_text(json.dumps(kubeconfig))
    cut = Operator(c, tmp_path / "kubeconfig", tmp_path / "operator.log", _free_port(), _free_port(),
                   env={"ZEROTH_RESYNC_SECONDS": "3600", "ZEROTH_WATCH_IDLE_SECONDS": "5", "ZEROTH_API_TIMEOUT_SECONDS": "5"})
    operator.stop()  # the only operator watching is the one behind the proxy
    try:
        cut.start()
        c.apply(small("before"), "-n", ns)
        converge(c, ns, ["before"], cut, timeout=60)
        proxy.hang()
        assert proxy.hung >= 2  # at least the runs' and the pods' watch streams
        c.apply(small("after"), "-n", ns)
        t0 = time.monotonic()
        converge(c, ns, ["before", "after"], cut, timeout=45)
        # bounded by the idle limit plus one call's time limit (5 + 5 s, and a pass), not by kopf's or
        # the client's defaults (70 s of silence; no limit on a call). Not scaled: with a slow
        # machine's factor, the bound would pass a 70 s wait; 60 s is 4 times what it takes here.
        assert time.monotonic() - t0 < 60, f"{time.monotonic() - t0:.0f} s to reconcile a run applied after the cut"
        assert cut.proc.poll() is None
    finally:
        cut.stop()
        proxy.close()
        operator.start()
