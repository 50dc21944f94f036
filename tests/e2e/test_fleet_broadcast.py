"""The fleet with weights by broadcast (gloo here, NCCL on GPUs: the same code but the
communicator), on real Ray actors: every version reaches every worker whole; a worker lost
between versions leaves the group, which the next publish rebuilds without it; a worker that joins
gets the newest weights through a group of its own before it takes requests, and the next publish
takes it into the group."""

from __future__ import annotations

import time

import pytest

from zeroth import validation
from zeroth.rollout import fleet as fleets
from zeroth.rollout.weights import BroadcastSync, checksum
from zeroth.trainer import models

from tests import speed
from tests.e2e.conftest import TINY

pytestmark = pytest.mark.e2e


@pytest.fixture
def ray_local():
    ray = pytest.importorskip("ray")
    fleets.connect(2)  # two rollout slots: a lost worker's slot is taken by a new one
    yield ray
    fleets.shutdown()


def tasks(n: int) -> list[dict]:
    return [{"id": f"t{i}", "prompt": f"{i % 7 + 3}={i % 7 + 3}\nnums 1 2 {i % 7}: ",
             "gold": {"numbers": [1, 2, i % 7], "target": i % 7 + 3}} for i in range(n)]


@pytest.mark.timeout(900)
def test_broadcast_reaches_every_worker_as_workers_leave_and_join(ray_local, tmp_path):
    import torch

    ray = ray_local
    tok = models.build_tokenizer()
    models.build_model(tok, seed=0).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    spec = validation.load(TINY).spec
    spec.algorithm.prompts_per_step, spec.algorithm.group_size, spec.algorithm.max_response_tokens = 4, 2, 4
    trainer = models.build_model(tok, seed=1)
    sync = BroadcastSync("gloo", timeout=speed.scaled(120), bucket_bytes=64 << 10)  # several buckets
    fleet = fleets.Fleet(spec, str(tmp_path), workers=2, sync=sync)

    def publish(version: int) -> None:
        with torch.no_grad():
            for p in trainer.parameters():
                p.mul_(0.9)
        fleet.publish(version, trainer.state_dict())
        assert fleet.verify(trainer.state_dict()) == []
        assert fleet.checksums() == [checksum(trainer.state_dict())] * len(fleet.workers)
        assert ray.get([w.get_version.remote() for w in fleet.workers]) == [version] * len(fleet.workers)

    publish(1)
    first = sync._sender.generation
    publish(2)
    assert sync._sender.generation == first  # the same members: the same group
    assert len(sync.weights.buckets) > 1

    # a worker is lost between versions: the next publish builds a group without it
    ray.kill(fleet.workers[0], no_restart=True)
    publish(3)
    assert len(fleet.workers) == 1 and fleet.membership()["rollout_workers_lost"] == 1
    assert sync._sender.generation == first + 1

    # its slot is free again: a new actor joins, takes version 3 (a group of its own), then works
    deadline = time.monotonic() + speed.scaled(300)
    while len(fleet.workers) < 2 and time.monotonic() < deadline:
        fleet._follow()
        time.sleep(0.5)
    assert len(fleet.workers) == 2 and fleet.membership()["rollout_workers_joined"] == 1
    assert sync._sender.generation == first + 2  # the joiner's own group
    assert fleet.checksums() == [checksum(trainer.state_dict())] * 2
    publish(4)  # both in one group again
    assert sync._sender.generation == first + 3
    data = tasks(100)
    samples = fleet.batch(0, lambda c, n: data[c:c + n])
    assert len(samples) == 8 and {s.version for s in samples} == {4}
