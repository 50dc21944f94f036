"""Chaos: runs applied while the operator is SIGKILLed at random moments and restarted. Afterwards
every run has exactly the children it should, none missing, none twice, and no spurious restart.

The operator keeps no state of its own: what it does next is decided from what the API server
holds (operator/plan.py), and every child has a fixed name. This test is where that claim is checked.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from tests.conftest import Cluster, Operator
from tests.integration.test_operator import run_manifest, wait_for

pytestmark = pytest.mark.cluster

RUNS = 20
KILLS = 6
SUPPORT = {"configmap": ["{r}-config"], "secret": ["{r}-ray-token-{u}"], "serviceaccount": ["{r}"], "role": ["{r}"],
           "rolebinding": ["{r}"], "service": ["{r}-ray-head", "{r}-trainer"], "networkpolicy": ["{r}"]}
PODS = ["{r}-ray-head", "{r}-rollout-0", "{r}-trainer-0", "{r}-trainer-1"]


def small(name: str) -> dict:
    """A run of the children PODS and SUPPORT list, on CPU nodes."""
    return run_manifest(name, trainers=2, trainer_gpus=0, rollouts=1, rollout_gpus=0)


def test_runs_converge_to_their_children_through_operator_kills(crd: Cluster, operator: Operator, namespace: str):
    c, ns = crd, namespace
    rng = random.Random(0)
    names = [f"chaos-{i:02d}" for i in range(RUNS)]
    manifests = [small(n) for n in names]

    def apply_all():
        for m in manifests:
            c.apply(m, "-n", ns)
            time.sleep(rng.uniform(0, 0.3))

    applier = threading.Thread(target=apply_all)
    applier.start()
    kills = 0
    while kills < KILLS:
        time.sleep(rng.uniform(0.2, 2.0))
        operator.kill()
        kills += 1
        time.sleep(rng.uniform(0, 0.5))  # sometimes the API server moves on while no operator watches
        operator.start()
    applier.join()

    converge(c, ns, names, operator)
    assert kills == KILLS


def converge(c: Cluster, ns: str, names: list[str], operator: Operator, timeout: float = 180) -> None:
    """Waits until runs `names` are all Running, then asserts that each has exactly its children,
    owned by it alone, with no spurious restart: what every fault below must come back to."""
    seen: dict[str, str | None] = {}

    def all_running():
        runs = [r for r in c.get("reasoningruns", "-n", ns)["items"] if r["metadata"]["name"] in names]
        seen.clear()
        seen.update({r["metadata"]["name"]: (r.get("status") or {}).get("phase") for r in runs})
        return sorted(seen) == sorted(names) and set(seen.values()) == {"Running"}
    try:
        wait_for(f"{len(names)} runs Running", all_running, timeout=timeout, operator=operator)
    except AssertionError as e:
        raise AssertionError(f"phases: {seen}") from e

    kinds = ",".join([*SUPPORT, "pod"])
    listed = c.get(kinds, "-n", ns, "-l", "zeroth.dev/run")["items"]
    by_run: dict[str, dict[str, list[str]]] = {}
    for o in listed:
        run = o["metadata"]["labels"]["zeroth.dev/run"]
        by_run.setdefault(run, {}).setdefault(o["kind"].lower(), []).append(o["metadata"]["name"])
    for r in names:
        uid = c.get("reasoningrun", r, "-n", ns)["metadata"]["uid"]
        want = {kind: sorted(n.format(r=r, u=uid[:8]) for n in ns_) for kind, ns_ in SUPPORT.items()} | {
            "pod": sorted(n.format(r=r) for n in PODS)}
        got = {kind: sorted(v) for kind, v in by_run.get(r, {}).items()}
        assert got == want, r
        for o in listed:
            if o["metadata"]["labels"]["zeroth.dev/run"] == r:
                assert [ref["uid"] for ref in o["metadata"]["ownerReferences"]] == [uid]
        status = c.get("reasoningrun", r, "-n", ns)["status"]
        assert status["restarts"] == 0, r  # no fault may look like a failed trainer
        pods = c.get("pods", "-n", ns, "-l", f"zeroth.dev/run={r},zeroth.dev/role=trainer")["items"]
        assert {p["metadata"]["labels"]["zeroth.dev/attempt"] for p in pods} == {"0"}
