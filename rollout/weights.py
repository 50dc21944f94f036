"""Weight sync between the trainer and the rollout fleet, with a version number.

`WeightSync` is the interface; `ObjectStoreSync` ships a state dict through Ray's object store as
numpy arrays (zero-copy on arrival, RECIPES: 0.10 s put / 0.02 s receive for 128 MiB, against 1.2 s
for torch tensors). An NCCL broadcast for large models on GPUs implements the same interface.
`checksum` is computed identically on both sides, so a test can prove that after a sync the
rollout's weights equal the trainer's.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping, Protocol

import numpy as np
import torch


def to_numpy(state_dict: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Contiguous CPU numpy copies (bf16 travels as its raw 16-bit pattern)."""
    out = {}
    for name, t in state_dict.items():
        t = t.detach().cpu().contiguous()
        out[name] = t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()
    return out


def from_numpy(weights: Mapping[str, np.ndarray], like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors viewing the arrays (no copy), typed like `like` (bf16 from its 16-bit pattern)."""
    missing = set(like) - set(weights)
    if missing:
        raise KeyError(f"weights lack {sorted(missing)[:5]}")
    out = {}
    for name, dst in like.items():
        src = torch.from_numpy(np.asarray(weights[name]))
        out[name] = src.view(torch.bfloat16) if dst.dtype == torch.bfloat16 else src
    return out


def checksum(state: Mapping[str, torch.Tensor] | Mapping[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        v = state[name]
        if isinstance(v, torch.Tensor):
            v = to_numpy({name: v})[name]
        a = np.ascontiguousarray(v)
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class WeightSync(Protocol):
    version: int  # the newest weights put, -1 before any

    def put(self, version: int, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Makes weights `version` the ones `send` delivers."""

    def send(self, worker: Any) -> Any:
        """Starts applying the newest weights on `worker`; a handle that completes when applied."""


class ObjectStoreSync:
    """Puts the weights in Ray's object store once; each worker pulls them by reference, and a
    worker that joins later pulls the same object."""

    def __init__(self) -> None:
        self.version = -1
        self._ref: Any = None

    def put(self, version: int, state_dict: Mapping[str, torch.Tensor]) -> None:
        import ray

        self.version, self._ref = version, ray.put(to_numpy(state_dict))

    def send(self, worker: Any) -> Any:
        # a list around the ref keeps Ray from resolving it in the caller: the worker fetches it
        return worker.set_weights.remote(self.version, [self._ref])
