"""Weights travel as numpy and land bit-identical; the checksum sees any difference."""

from __future__ import annotations

import torch

from zeroth.rollout.weights import checksum, from_numpy, to_numpy


def _model(seed: int, dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2)).to(dtype)


def test_round_trip_is_exact():
    for dtype in (torch.float32, torch.bfloat16):
        src, dst = _model(0, dtype), _model(1, dtype)
        assert checksum(src.state_dict()) != checksum(dst.state_dict())
        dst.load_state_dict(from_numpy(to_numpy(src.state_dict()), dst.state_dict()))
        assert checksum(src.state_dict()) == checksum(dst.state_dict())
        for (name, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
            assert torch.equal(a, b), name


def test_checksum_sees_one_changed_value():
    m = _model(0)
    before = checksum(m.state_dict())
    with torch.no_grad():
        m[0].weight[0, 0] += 1e-6
    assert checksum(m.state_dict()) != before


def test_missing_weights_fail():
    m = _model(0)
    weights = to_numpy(m.state_dict())
    weights.pop("0.weight")
    try:
        from_numpy(weights, m.state_dict())
    except KeyError as e:
        assert "0.weight" in str(e)
    else:
        raise AssertionError("loaded incomplete weights")
