"""Weight sync through Ray's object store: after a publish, every worker holds the trainer's weights."""

from __future__ import annotations

import pytest
import torch

from zeroth import validation
from zeroth.rollout import fleet as fleets
from zeroth.rollout.weights import checksum
from zeroth.trainer import models

from tests.e2e.conftest import TINY

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    fleets.connect(2)  # a local Ray of its own, with two rollout slots
    yield ray
    fleets.shutdown()


def test_publish_makes_workers_equal_to_trainer(ray_local, tmp_path):
    tok = models.build_tokenizer()
    models.build_model(tok, seed=0).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    spec = validation.load(TINY).spec
    fleet = fleets.Fleet(spec, str(tmp_path), workers=2)
    trainer = models.build_model(tok, seed=1)  # other weights than the workers loaded
    before = fleet.checksums()
    assert checksum(trainer.state_dict()) not in before
    fleet.publish(1, trainer.state_dict())
    assert fleet.checksums() == [checksum(trainer.state_dict())] * 2

    with torch.no_grad():
        for p in trainer.parameters():
            p.mul_(0.5)
    fleet.publish(2, trainer.state_dict())
    assert fleet.checksums() == [checksum(trainer.state_dict())] * 2
    tasks = [{"id": f"t{i}", "prompt": f"{i + 3}={i + 3}\nnums 1 2 {i}: ", "gold": {"numbers": [1, 2, i], "target": i + 3}}
             for i in range(4)]
    fleet.cursor = 0
    samples = fleet.batch(0, lambda c, n: tasks[c:c + n] if c + n <= len(tasks) else tasks[:n])
    assert {s.version for s in samples} == {2}
    assert [s.group for s in samples] == sorted(s.group for s in samples)
