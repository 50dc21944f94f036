"""The rollout fleet follows its Ray nodes, as it follows rollout pods under `kubectl scale`.

A real multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`: a head and raylets of
their own, each rollout node offering one `zeroth-rollout` slot, as a rollout pod does): a node
added mid-run gets a worker that takes requests after loading the newest weights; a node removed
with requests in flight loses its worker, whose share is generated again by a live one. Every
step keeps its batch size, and the trainer never sees an error.
"""

from __future__ import annotations

import time

import pytest

from zeroth import validation
from zeroth.rollout import fleet as fleets
from zeroth.rollout.weights import checksum
from zeroth.trainer import models

from tests import speed
from tests.e2e.conftest import TINY

pytestmark = pytest.mark.e2e

PROMPTS, GROUP = 6, 2


@pytest.fixture
def cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head takes no actor (the trainer pod's)
    nodes = [c.add_node(num_cpus=1, resources={fleets.ROLLOUT_RESOURCE: 1}) for _ in range(2)]
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield c, nodes
    ray.shutdown()
    c.shutdown()


def tasks(n: int) -> list[dict]:
    return [{"id": f"t{i}", "prompt": f"{i % 7 + 3}={i % 7 + 3}\nnums 1 2 {i % 7}: ",
             "gold": {"numbers": [1, 2, i % 7], "target": i % 7 + 3}} for i in range(n)]


@pytest.mark.timeout(900)  # a busy machine starts Ray workers slowly
def test_workers_join_and_leave_mid_run_and_every_step_keeps_its_batch(cluster, tmp_path):
    c, nodes = cluster
    tok = models.build_tokenizer()
    models.build_model(tok, seed=0).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    spec = validation.load(TINY).spec
    spec.algorithm.prompts_per_step, spec.algorithm.group_size = PROMPTS, GROUP
    spec.algorithm.max_staleness = 1  # the next step's request is in flight when a node goes
    spec.algorithm.max_response_tokens = 4
    trainer = models.build_model(tok, seed=1)
    data = tasks(1000)

    def prompts(cursor: int, n: int) -> list[dict]:
        return data[cursor:cursor + n]

    fleet = fleets.Fleet(spec, str(tmp_path), workers=2)
    fleet.publish(0, trainer.state_dict())
    step, sizes, seen = 0, [], []

    def train_one() -> None:
        nonlocal step
        samples = fleet.batch(step, prompts)
        sizes.append(len(samples))
        assert [s.task_id for s in samples[::GROUP]] == [t["id"] for t in data[step * PROMPTS:(step + 1) * PROMPTS]]
        step += 1
        fleet.publish(step, trainer.state_dict())
        seen.append(fleet.membership())

    train_one()
    assert seen[-1]["rollout_workers"] == 2

    # scale up: a third rollout node; its worker takes requests once it has started (a Ray worker
    # process and the model: seconds here) and applied the newest weights. Training goes on meanwhile
    c.add_node(num_cpus=1, resources={fleets.ROLLOUT_RESOURCE: 1})
    deadline = time.monotonic() + speed.scaled(300)
    while seen[-1]["rollout_workers"] < 3 and time.monotonic() < deadline:
        train_one()
        time.sleep(1)  # a step's training
    assert seen[-1]["rollout_workers"] == 3, seen
    assert sum(m["rollout_workers_joined"] for m in seen) == 1, seen
    # it got the weights before any request: every worker holds the trainer's
    assert fleet.checksums() == [checksum(trainer.state_dict())] * 3
    train_one()  # and it generates its share

    # scale down with the next step's request in flight (maxStaleness 1): its share is redone
    c.remove_node(nodes[0])
    train_one()
    train_one()
    assert seen[-1]["rollout_workers"] == 2, seen
    assert sum(m["rollout_workers_lost"] for m in seen) == 1, seen
    assert sum(m["rollout_requests_resubmitted"] for m in seen) >= 1, seen
    assert sizes == [PROMPTS * GROUP] * len(sizes)
    assert fleet.checksums() == [checksum(trainer.state_dict())] * 2
