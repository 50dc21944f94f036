"""Checkpoints: DeepSpeed's own files plus the trainer state, made visible atomically.

DeepSpeed writes its shards with plain writes and no completion marker (RECIPES), so a checkpoint
counts only once rank 0 has written `trainer_state.json` — after a barrier behind every rank's
shards — by write-to-temp, fsync, rename. A checkpoint without it is ignored and pruned.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zeroth.checkpoints import STATE_FILE, complete, tag  # noqa: F401 - the layout, shared with `zeroth run`


@dataclass
class TrainerState:
    step: int = 0  # completed steps
    cursor: int = 0  # index of the next training prompt in the data order
    weights_version: int = 0
    restarts: int = 0
    rng: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state().tolist(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    if not state:
        return
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.integer | np.floating):
        return o.item()
    raise TypeError(type(o))


def mark_complete(directory: Path, state: TrainerState) -> None:
    """Rank 0, after a barrier behind all shards: the atomic 'this checkpoint exists' write."""
    path = directory / tag(state.step) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(asdict(state), default=_json_default))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def latest(directory: Path) -> tuple[str, TrainerState] | None:
    found = complete(directory)
    if not found:
        return None
    data = json.loads((found[-1] / STATE_FILE).read_text())
    return found[-1].name, TrainerState(**data)


def prune(directory: Path, keep: int) -> None:
    """Deletes all but the newest `keep` complete checkpoints, and any incomplete older ones."""
    done = complete(directory)
    for p in done[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    newest = done[-1].name if done else None
    for p in directory.glob("step-*"):
        if newest and p.name < newest and not (p / STATE_FILE).is_file():
            shutil.rmtree(p, ignore_errors=True)
