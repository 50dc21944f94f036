"""bench/gpu_check.py cannot rot: its CPU smoke mode runs here as the GPU mode does on a GPU (a
Qwen2 and a byte-level BPE tokenizer built by the script, the real `zeroth run` on a generated
manifest, weights verified after every publish), through the broadcast protocol (gloo; Ray's
object store carries the weights of every other e2e run); and its checks fail a run that went
wrong."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from tests import procs, speed
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e

SCRIPT = ROOT / "bench" / "gpu_check.py"


def gpu_check():
    spec = importlib.util.spec_from_file_location("zeroth_bench_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(2400)
def test_cpu_smoke_mode_trains_through_the_broadcast_and_passes_its_checks(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu", "--steps", "2", "--sync", "gloo", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=speed.scaled(2000), cwd=tmp_path,
        env=procs.tag({**os.environ, "COLUMNS": "250"}))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "all checks passed" in out
    assert "cpu-gloo (gloo)" in out and "cpu-objectstore" not in out
    assert out.count("✓ weights equal: versions verified [0, 1, 2]") == 1, out[-3000:]
    assert out.count("✓ log-probs agree") == 1 and "✗" not in out
    # the broadcast run really broadcast: the trainer said which sync verified each version
    logs = sorted((tmp_path / "cpu-gloo" / "runs").glob("*/trainer.log"))
    assert "(BroadcastSync," in logs[-1].read_text()


def test_the_checks_fail_a_run_that_went_wrong():
    m = gpu_check()
    records = [{"step": s, "logprob_mismatch": 0.01} for s in (1, 2)]

    def failed(**kwargs) -> list[str]:
        result = m.Result(m.Config("c", 1, "gloo"), **{"rc": 0, "records": records, "verified": {0, 1, 2}, **kwargs})
        return [name for name, passed, _ in m.checks(result, steps=2, max_mismatch=0.05) if not passed]

    assert failed() == []
    assert failed(rc=1) == ["trained"]
    assert failed(records=records[:1]) == ["trained"]  # a step missing
    assert failed(verified={0, 1}) == ["weights equal"]  # a version no one verified
    assert failed(records=[*records[:1], {"step": 2, "logprob_mismatch": 0.2}]) == ["log-probs agree"]
    assert failed(records=[]) == ["trained", "log-probs agree"]  # no record: nothing agrees


def test_configurations_follow_the_gpus():
    m = gpu_check()
    assert [(c.name, c.sync, c.separate) for c in m.configurations(1, False, None)] == \
        [("tp1-objectstore", "objectstore", False), ("tp1-gloo", "gloo", False)]
    assert [(c.name, c.separate) for c in m.configurations(2, False, None)] == [("tp1-nccl", True), ("tp2-objectstore", False)]
    assert [(c.name, c.tp) for c in m.configurations(4, False, None)] == [("tp1-nccl", 1), ("tp2-nccl", 2)]
    assert [c.name for c in m.configurations(0, True, ["gloo"])] == ["cpu-gloo"]
