"""A namespace-scoped operator against the real control plane: the chart's watchNamespaces, run as
that release's ServiceAccount (so the Roles `helm install` creates are all it has), serves its
namespaces and no other. No cluster-wide operator runs in this module: it would serve them all.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.conftest import Cluster, Operator, _free_port, install_chart, service_account_kubeconfig
from tests.integration.test_chaos import converge, small
from tests.integration.test_operator import wait_for
from tests.speed import scaled

pytestmark = pytest.mark.cluster


def fresh_namespace(c: Cluster, prefix: str, restricted: bool = True) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    labels = {"pod-security.kubernetes.io/enforce": "restricted"} if restricted else {}
    c.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
    return name


@pytest.fixture(scope="module")
def scoped(crd: Cluster, tmp_path_factory):
    """The chart installed with watchNamespaces (two fresh namespaces) and its operator running as
    that release's ServiceAccount with the chart's scope: (operator, watched, other)."""
    system, watched, other = (fresh_namespace(crd, "zeroth-system"), [fresh_namespace(crd, "watched") for _ in range(2)],
                              fresh_namespace(crd, "other"))
    release = f"scoped-{system[-6:]}"
    objects = install_chart(crd, system, release, "--set", "replicaCount=0", "--set", f"watchNamespaces={{{','.join(watched)}}}")
    account = next(o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount")
    (container,) = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    namespaces = tuple(command[i + 1] for i, a in enumerate(command) if a == "--namespace")  # as the chart runs it
    tmp = tmp_path_factory.mktemp("scoped")
    op = Operator(crd, service_account_kubeconfig(crd, system, account, tmp / "kubeconfig"), tmp / "operator.log",
                  _free_port(), _free_port(), env={"ZEROTH_RESYNC_SECONDS": "2"}, namespaces=namespaces)
    op.start()
    yield op, watched, other
    op.stop()
    crd.run("helm", "uninstall", release, "--namespace", system, check=False)
    for ns in (system, *watched, other):
        crd.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_a_scoped_operator_serves_its_namespaces_and_no_other(crd: Cluster, scoped):
    """The unserved namespace's run is never touched by this operator: not in its log, not in its
    run count. (What is on the server there is not asserted: on a shared control plane another
    test's cluster-wide operator may serve that namespace.)"""
    op, watched, other = scoped
    started = time.monotonic()
    for ns in (other, *watched):  # the unserved one first: it had the most time to be (wrongly) served
        crd.apply(small("scoped"), "-n", ns)
    for ns in watched:
        converge(crd, ns, ["scoped"], op, timeout=30)
    # served from its watches at once: not after kopf retried cluster-wide reads it may not make
    assert time.monotonic() - started < scaled(30)
    time.sleep(scaled(5))  # two more resync rounds (ZEROTH_RESYNC_SECONDS=2), which list runs per namespace
    log = op.log.read_text()
    assert other not in log and "Forbidden" not in log, log[-3000:]
    counted = {line.split('namespace="')[1].split('"')[0] for line in op.metrics().splitlines()
               if line.startswith("zeroth_runs{")}
    assert counted == set(watched)
    assert op.proc.poll() is None


def test_a_scoped_operators_resync_lists_runs_in_its_namespaces(crd: Cluster, scoped):
    """No watch sees a Service go (the operator watches runs and pods only): only the periodic
    resync, which lists the runs of each watched namespace, creates it again."""
    op, watched, _ = scoped
    ns = watched[1]
    crd.apply(small("resynced"), "-n", ns)
    converge(crd, ns, ["resynced"], op, timeout=90)
    crd.kubectl("delete", "service", "resynced-trainer", "-n", ns)
    wait_for("the deleted Service created again by the resync",
             lambda: crd.kubectl("get", "service", "resynced-trainer", "-n", ns, check=False).returncode == 0,
             timeout=30, operator=op)
    assert "listing runs for the resync failed" not in op.log.read_text()
