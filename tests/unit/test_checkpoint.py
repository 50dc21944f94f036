"""Checkpoints count only once their marker is written; pruning keeps the newest complete ones."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from zeroth.trainer import checkpoint as ckpt


def _fake(directory, step, complete=True):
    d = directory / ckpt.tag(step)
    d.mkdir(parents=True)
    (d / "shard.pt").write_bytes(b"x")
    if complete:
        ckpt.mark_complete(directory, ckpt.TrainerState(step=step, cursor=step * 10, weights_version=step))


def test_incomplete_checkpoint_is_ignored(tmp_path):
    _fake(tmp_path, 4)
    _fake(tmp_path, 8, complete=False)  # a crash between the shards and the marker
    tag, state = ckpt.latest(tmp_path)
    assert tag == ckpt.tag(4) and state.step == 4 and state.cursor == 40
    assert not list(tmp_path.glob("**/*.tmp"))


def test_prune_keeps_newest(tmp_path):
    for step in (2, 4, 6, 8):
        _fake(tmp_path, step)
    _fake(tmp_path, 5, complete=False)
    ckpt.prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.tag(6), ckpt.tag(8)]


def test_no_checkpoint(tmp_path):
    assert ckpt.latest(tmp_path / "missing") is None


def test_rng_round_trip_through_json(tmp_path):
    import json

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = json.loads(json.dumps(ckpt.rng_state(), default=ckpt._json_default))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ckpt.restore_rng(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_ranks_sharing_a_volume_keep_one_manifest(tmp_path, monkeypatch):
    """Two ranks in two containers (the same process id in each) copy the manifest to the shared run
    directory at once: rank A's rename comes after rank B wrote and renamed its own copy. Neither
    fails and the copy is whole (the first version named its temporary file by pid and failed here)."""
    from zeroth.trainer import main as trainer_main

    target = tmp_path / "run.json"
    real_replace = os.replace
    nested = []

    def replace_after_the_other_rank(src, dst):
        if not nested:
            nested.append(1)
            trainer_main._keep_copy('{"rank": "B"}', target)  # B runs whole while A is between write and rename
        real_replace(src, dst)

    monkeypatch.setattr(trainer_main.os, "getpid", lambda: 7)
    monkeypatch.setattr(trainer_main.os, "replace", replace_after_the_other_rank)
    target.unlink(missing_ok=True)
    trainer_main._keep_copy('{"rank": "A"}', target)
    assert target.read_text() in ('{"rank": "A"}', '{"rank": "B"}')
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary file left
