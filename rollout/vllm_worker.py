"""What Zeroth adds to each of vLLM's workers: weights loaded in place, in every worker.

vLLM's V1 engine runs the model in worker processes of its own (one per tensor-parallel rank), not
in the process that holds the `LLM`. vLLM mixes a `worker_extension_cls` into its worker class, and
`LLM.collective_rpc(method, args)` calls a method of it in every worker; so each tensor-parallel
shard loads its own part of the new weights (the model's `load_weights` shards and fuses them the
way the model's loader does: q/k/v into qkv_proj, gate/up into gate_up_proj).

Two ways in: `zeroth_load` takes numpy arrays (from Ray's object store); `zeroth_join` and
`zeroth_receive` make each worker a rank of the trainer's broadcast group
(`zeroth.rollout.broadcast`): rank `first_rank + self.rank`, its buffers on this worker's GPU.

This module imports neither vLLM nor CUDA at import time: vLLM imports it by name inside its
workers, and the tests exercise it with a stand-in worker on the CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from zeroth.rollout.broadcast import Receiver
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
    rank: int  # the worker's rank within its engine (its tensor-parallel rank)

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

    def zeroth_join(self, group: Mapping[str, Any], first_rank: int) -> None:
        """Joins the trainer's broadcast group (a new one replaces the old)."""
        if getattr(self, "_zeroth_receiver", None) is None:
            self._zeroth_receiver = Receiver()
        self._zeroth_receiver.join(group, first_rank + self.rank, self.device)

    def zeroth_receive(self, bucket: Mapping[str, Any]) -> int | None:
        """One bucket of a version, loaded through the model's loader as it arrives; the version
        once its last bucket is in. As vLLM's own loader does, a version that left a parameter of
        the model unloaded is an error."""
        got = self._zeroth_receiver.receive(bucket)
        model = self._zeroth_model()
        if got.first:
            self._zeroth_loaded: set[str] | None = set()
        loaded = model.load_weights(got.tensors)
        if loaded is None:  # a loader that does not say what it loaded: nothing to check
            self._zeroth_loaded = None
        elif self._zeroth_loaded is not None:
            self._zeroth_loaded.update(loaded)
        if got.version is not None:
            if self._zeroth_loaded is not None:
                missing = {name for name, _ in model.named_parameters()} - self._zeroth_loaded
                if missing:
                    raise RuntimeError(f"weights version {got.version} left {sorted(missing)[:5]} unloaded "
                                       f"({len(missing)} parameters)")
            if torch.cuda.is_available():
                torch.cuda.synchronize()
        return got.version

    def zeroth_checksum(self, shapes: Mapping[str, list[int]]) -> tuple[str, list[str]]:
        """The checksum of this shard's weights that have the trainer's name and shape (`shapes`):
        the unfused, unsharded ones (embeddings, norms, and at tensor parallelism 1 most others)."""
        state = self._zeroth_model().state_dict()
        same = sorted(n for n, shape in shapes.items() if n in state and list(state[n].shape) == list(shape))
        return checksum({n: state[n] for n in same}), same
