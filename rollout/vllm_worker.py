"""What Zeroth adds to each of vLLM's workers: weights loaded in place, in every worker.

vLLM's V1 engine runs the model in worker processes of its own (one per tensor-parallel rank), not
in the process that holds the `LLM`. vLLM mixes a `worker_extension_cls` into its worker class, and
`LLM.collective_rpc(method, args)` calls a method of it in every worker; so each tensor-parallel
shard loads its own part of the new weights (the model's `load_weights` shards and fuses them the
way the model's loader does: q/k/v into qkv_proj, gate/up into gate_up_proj).

This module imports neither vLLM nor CUDA at import time: vLLM imports it by name inside its
workers, and the tests exercise it with a stand-in worker on the CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from zeroth.rollout.weights import checksum

# The name vLLM imports (`LLM(worker_extension_cls=...)`).
EXTENSION = f"{__name__}.WeightLoader"


def tensors(arrays: Mapping[str, np.ndarray], dtypes: Mapping[str, torch.dtype], device: torch.device | str
            ) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) on `device` for each array; a bf16 weight travels as its 16-bit pattern (int16)
    and is viewed back as bf16 when `dtypes` says so, or when the model's weights are bf16."""
    out = []
    for name, array in arrays.items():
        t = torch.from_numpy(np.array(array, copy=True))  # writable: load_weights may copy_ into it
        if t.dtype == torch.int16 and dtypes.get(name, torch.bfloat16) == torch.bfloat16:
            t = t.view(torch.bfloat16)
        out.append((name, t.to(device, non_blocking=True)))
    return out


class WeightLoader:
    """Mixed into vLLM's worker: `self.model_runner.model` is this worker's shard of the model."""

    model_runner: Any  # vLLM's, on the worker this class is mixed into
    device: Any

    def _zeroth_model(self) -> torch.nn.Module:
        return self.model_runner.model

    def zeroth_load(self, arrays: Mapping[str, np.ndarray]) -> int:
        """Loads the trainer's weights (its names and shapes, numpy); returns how many tensors."""
        model = self._zeroth_model()
        dtype = next(model.parameters()).dtype
        named = tensors(arrays, {name: dtype for name in arrays}, next(model.parameters()).device)
        loaded = model.load_weights(named)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        # load_weights returns the names it loaded (vLLM's names): a weight it skipped is a bug
        return len(loaded) if loaded is not None else len(named)

    def zeroth_checksum(self, shapes: Mapping[str, list[int]]) -> tuple[str, list[str]]:
        """The checksum of this shard's weights that have the trainer's name and shape (`shapes`):
        the unfused, unsharded ones (embeddings, norms, and at tensor parallelism 1 most others)."""
        state = self._zeroth_model().state_dict()
        same = sorted(n for n, shape in shapes.items() if n in state and list(state[n].shape) == list(shape))
        return checksum({n: state[n] for n in same}), same
