"""The worker extension vLLM mixes into each of its workers (`zeroth.rollout.vllm_worker`).

vLLM itself does not run here (no GPU), so the extension is mixed into a stand-in worker whose
`model_runner.model` is a real model with a vLLM-style `load_weights`: like vLLM's, it fuses the
trainer's separate q/k/v projections into one `qkv_proj`, so the test shows the trainer's names and
shapes arrive and are loaded through the model's own loader, in the model's dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zeroth.rollout import vllm_worker
from zeroth.rollout.weights import checksum, to_numpy


class FusedAttention(torch.nn.Module):
    """A vLLM-shaped block: q, k and v in one fused weight, an output projection, a norm."""

    def __init__(self, dim: int, dtype: torch.dtype):
        super().__init__()
        self.qkv_proj = torch.nn.Linear(dim, 3 * dim, bias=False, dtype=dtype)
        self.o_proj = torch.nn.Linear(dim, dim, bias=False, dtype=dtype)
        self.norm = torch.nn.LayerNorm(dim, dtype=dtype)

    def load_weights(self, weights):
        """vLLM's contract: (trainer name, tensor) pairs in; the names loaded out."""
        params, loaded = dict(self.named_parameters()), set()
        with torch.no_grad():
            for name, w in weights:
                for i, part in enumerate(("q_proj", "k_proj", "v_proj")):
                    if name == f"{part}.weight":
                        rows = self.qkv_proj.weight.shape[0] // 3
                        self.qkv_proj.weight[i * rows:(i + 1) * rows].copy_(w)
                        loaded.add("qkv_proj.weight")
                        break
                else:
                    params[name].copy_(w)
                    loaded.add(name)
        return loaded


class TrainerAttention(torch.nn.Module):
    """The same block as Hugging Face names it: separate q, k and v."""

    def __init__(self, dim: int, dtype: torch.dtype):
        super().__init__()
        for part in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self, part, torch.nn.Linear(dim, dim, bias=False, dtype=dtype))
        self.norm = torch.nn.LayerNorm(dim, dtype=dtype)


class StandInWorker(vllm_worker.WeightLoader):
    def __init__(self, model):
        self.model_runner = type("Runner", (), {"model": model})()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_worker_loads_the_trainers_weights_through_the_models_loader(dtype):
    torch.manual_seed(0)
    trainer, served = TrainerAttention(8, dtype), FusedAttention(8, dtype)
    worker = StandInWorker(served)
    arrays = to_numpy(trainer.state_dict())  # what the object store carries (bf16 as int16)
    assert worker.zeroth_load(arrays) == 4  # 6 trainer tensors into qkv_proj, o_proj and the norm, as vLLM names them
    got = served.qkv_proj.weight.detach()
    want = torch.cat([trainer.q_proj.weight, trainer.k_proj.weight, trainer.v_proj.weight]).detach()
    assert got.dtype == dtype and torch.equal(got, want)
    assert torch.equal(served.o_proj.weight, trainer.o_proj.weight)


def test_the_checksum_covers_the_weights_with_the_trainers_names_and_shapes():
    torch.manual_seed(0)
    trainer, served = TrainerAttention(8, torch.bfloat16), FusedAttention(8, torch.bfloat16)
    worker = StandInWorker(served)
    worker.zeroth_load(to_numpy(trainer.state_dict()))
    shapes = {n: list(t.shape) for n, t in trainer.state_dict().items()}
    value, names = worker.zeroth_checksum(shapes)
    assert names == ["norm.bias", "norm.weight", "o_proj.weight"]  # the fused qkv has no trainer name
    assert value == checksum({n: trainer.state_dict()[n] for n in names})
    with torch.no_grad():
        served.o_proj.weight.add_(1)
    assert worker.zeroth_checksum(shapes)[0] != value


def test_arrays_are_copied_so_a_loader_may_write_into_them():
    frozen = np.arange(4, dtype=np.float32)
    frozen.flags.writeable = False  # what Ray's object store hands a worker
    ((_, t),) = vllm_worker.tensors({"w": frozen}, {"w": torch.float32}, "cpu")
    t.add_(1)  # no error, and the store's copy is untouched
    assert frozen.tolist() == [0, 1, 2, 3]


def test_the_engine_names_an_importable_extension_and_loads_through_every_worker(monkeypatch):
    """VLLMEngine asks vLLM for the extension by a name vLLM can import, and its weight calls reach
    every worker: a stand-in `LLM` whose `collective_rpc` calls each of two workers, as vLLM's does
    for two tensor-parallel ranks."""
    import importlib
    import sys
    from types import ModuleType

    from tests.unit.test_generation import spec as spec_with  # the run spec of the engine tests
    from zeroth.rollout import generation

    module, _, cls = generation.vllm_engine_kwargs("/m", spec_with("m", rollout={"engine": "vllm", "gpusPerReplica": 1})
                                                   )["worker_extension_cls"].rpartition(".")
    assert getattr(importlib.import_module(module), cls) is vllm_worker.WeightLoader

    torch.manual_seed(0)
    trainer = TrainerAttention(8, torch.bfloat16)
    ranks = [StandInWorker(FusedAttention(8, torch.bfloat16)) for _ in range(2)]

    class LLM:
        def __init__(self, **kw):
            self.resets = 0

        def collective_rpc(self, method, args=()):
            return [getattr(w, method)(*args) for w in ranks]

        def reset_prefix_cache(self):
            self.resets += 1

    fake = ModuleType("vllm")
    fake.LLM = LLM
    monkeypatch.setitem(sys.modules, "vllm", fake)
    engine = generation.make_engine("/m", spec_with("m", rollout={"engine": "vllm", "gpusPerReplica": 1}), None, [2])
    engine.load_weights(to_numpy(trainer.state_dict()))
    for w in ranks:
        assert torch.equal(w.model_runner.model.o_proj.weight, trainer.o_proj.weight)
    assert engine.llm.resets == 1  # no cached prefix of the old weights is reused
    common = {n: trainer.state_dict()[n] for n in ("norm.bias", "norm.weight", "o_proj.weight")}
    assert engine.checksum() == checksum(common)
    with torch.no_grad():
        ranks[1].model_runner.model.norm.weight.add_(1)
    assert engine.checksum().startswith("ranks differ")
