"""Where a run's checkpoints are and which are whole: the layout the trainer writes and `zeroth run`
reads, without torch (trainer/checkpoint.py writes them).

A checkpoint is `RUN_DIR/checkpoints/step-NNNNNNNN/`; it counts only once its `trainer_state.json`
is there, the last file written.
"""

from __future__ import annotations

import json
from pathlib import Path

STATE_FILE = "trainer_state.json"


def tag(step: int) -> str:
    return f"step-{step:08d}"


def complete(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("step-*") if (p / STATE_FILE).is_file())


def newest_step(directory: Path) -> int:
    """The step of the newest complete checkpoint; 0 when there is none."""
    found = complete(directory)
    return json.loads((found[-1] / STATE_FILE).read_text())["step"] if found else 0
