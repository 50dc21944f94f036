"""ZeRO stages 0-3 train on this CPU with world size 2 (gloo) and agree with each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.speed import scaled
from zeroth.trainer import models

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-random")
    tok = models.build_tokenizer()
    models.build_model(tok, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def run_stage(stage: int, model_dir) -> dict:
    # no PYTHONPATH=ROOT: the repo's operator/ folder would shadow the standard library's operator
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.environ.get("ZEROTH_CACHE", os.path.expanduser("~/.cache/zeroth")), "torch_extensions"))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "tests" / "e2e" / "zero_steps.py"), str(stage), str(model_dir)],
        capture_output=True, text=True, env=env, timeout=scaled(600), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def test_zero_stages_agree(model_dir):
    results = {stage: run_stage(stage, model_dir) for stage in (0, 1, 2, 3)}
    base = results[0]
    # the steps moved the weights (the loss value itself is ~0 at ratio 1 with zero-mean advantages)
    moved = [abs(base["norms"][k] - base["initial"][k]) for k in base["norms"]]
    assert max(moved) > 1e-3
    for stage, r in results.items():
        assert r["losses"] == pytest.approx(base["losses"], abs=1e-5), stage
        for name, norm in base["norms"].items():
            assert r["norms"][name] == pytest.approx(norm, rel=1e-4), (stage, name)
