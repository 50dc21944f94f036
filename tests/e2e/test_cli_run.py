"""`zeroth run` as a user sees it: /metrics while it trains, Ctrl-C then --resume, `zeroth eval`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.speed import scaled
from tests.e2e.conftest import finish, records, run_dir_of, start_run, steps, wait_for
from tests.e2e.test_resume_async import short
from zeroth import checkpoints, local, metrics, validation

pytestmark = pytest.mark.e2e


def test_ctrl_c_checkpoints_then_resume_finishes_and_eval_scores(tmp_path):
    proc = start_run(tmp_path, short("interrupted"))
    wait_for(lambda: list(tmp_path.glob("runs/interrupted-*/metrics_port")), 300, "the metrics server")
    run_dir = run_dir_of(tmp_path, "interrupted")
    wait_for(lambda: any(r["step"] >= 3 for r in steps(run_dir)), 600, "step 3")

    port = int((run_dir / "metrics_port").read_text())
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for name in ("step", "accuracy", "loss", "weights_version"):
        assert f'{metrics.BY_NAME[name].full_name}{{namespace="default",run="interrupted"}}' in text, name
    assert f'{metrics.BY_NAME["reward"].full_name}_count{{namespace="default",run="interrupted",verifier="countdown"}}' in text
    # each rollout worker serves its own /metrics, listed beside rank 0's in the run's file_sd targets
    groups = {g["labels"]["job"]: g["targets"] for g in json.loads((run_dir / "prometheus_targets.json").read_text())}
    assert groups["zeroth-trainer"] == [f"127.0.0.1:{port}"] and len(groups["zeroth-rollout"]) == 2, groups
    for target in groups["zeroth-rollout"]:
        worker = urllib.request.urlopen(f"http://{target}/metrics", timeout=10).read().decode()
        assert f'{metrics.BY_NAME["worker_generated_tokens"].full_name}_total{{namespace="default",run="interrupted",worker=' in worker
        assert f'{metrics.BY_NAME["verifier_seconds"].full_name}_count{{namespace="default",run="interrupted",verifier="countdown"}}' in worker

    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    out, _ = proc.communicate(timeout=scaled(300))
    assert proc.returncode == 130, out[-3000:]
    assert "--resume" in out
    stopped_at = max(r["step"] for r in steps(run_dir))
    # it finished the step and checkpointed it before stopping
    assert checkpoints.newest_step(run_dir / "checkpoints") == stopped_at, (run_dir / "trainer.log").read_text()[-4000:]

    out = finish(start_run(tmp_path, resume=run_dir))
    # no GPU held: GPU time (counted by rank 0 in a local run, on from the interrupted part) is 0
    assert "GPU time 0.00 GPU-hours (no GPU: this run used the CPU), cost 0.00 USD" in " ".join(out.split()), out[-2000:]
    assert [r["step"] for r in steps(run_dir)] == list(range(1, 9))  # nothing lost, nothing repeated
    # rank 0 says each step on its stdout (trainer.log here; `kubectl logs` in a pod)
    log = (run_dir / "trainer.log").read_text()
    assert "step 8/8 reward_mean=" in log and "checkpoint step 8" in log, log[-3000:]

    proc = subprocess.run([sys.executable, "-m", "zeroth", "eval", str(run_dir), "--k", "4", "--limit", "16"],
                          capture_output=True, text=True, timeout=scaled(300))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["prompts"] == 16 and result["k"] == 4
    assert 0 <= result["greedy"] <= 1 and 0 <= result["maj@4"] <= result["pass@4"] <= 1
    # the final evaluation the run wrote used the same held-out prompts and the same model; batches
    # are padded differently (one worker here, two in the run), so one greedy tie may break otherwise
    final = [r for r in records(run_dir) if "eval_greedy" in r][-1]
    assert final["step"] == 8 and final["eval_size"] == 16
    assert result["greedy"] == pytest.approx(final["eval_greedy"], abs=1 / 16 + 1e-9)


def test_a_stop_that_loses_its_step_says_so_and_where_to_resume(tmp_path):
    """Ctrl-C, then rank 0 dies before its checkpoint: `zeroth run` names the step that was lost
    and the checkpoint to resume from, instead of "stopped" (the CI failure that the local Ray's
    own session mended ended this way, and the user was told all was well)."""
    proc = start_run(tmp_path, short("lost", algorithm={"maxSteps": 512}, checkpoint={"everySteps": 512}))
    wait_for(lambda: list(tmp_path.glob("runs/lost-*/metrics_port")), 300, "the metrics server")
    run_dir = run_dir_of(tmp_path, "lost")
    wait_for(lambda: steps(run_dir), 600, "step 1")
    rank0 = int((run_dir / "pids" / "rank-0.pid").read_text())
    os.kill(rank0, signal.SIGSTOP)  # frozen before the stop reaches it
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: "death signal" in (run_dir / "trainer.log").read_text(), 120, "torchrun to pass the stop on")
    os.kill(rank0, signal.SIGKILL)
    out, _ = proc.communicate(timeout=scaled(300))
    text = " ".join(out.split())
    trained = max(r["step"] for r in steps(run_dir))
    assert proc.returncode not in (0, 130), out[-3000:]
    assert f"stopping failed: step {trained} was trained but not checkpointed" in text, out[-3000:]
    assert f"continue from the last checkpoint (step 0): zeroth run --resume {run_dir}" in text, out[-3000:]
    assert "stopped; resume with" not in text and "Traceback" not in out, out[-3000:]


def test_a_failing_trainer_gives_one_clear_message_not_a_traceback(tmp_path):
    proc = start_run(tmp_path, short("fails"), env={"ZEROTH_COLLECTIVE_TIMEOUT": "soon"})
    out, _ = proc.communicate(timeout=scaled(300))
    run_dir = run_dir_of(tmp_path, "fails")
    assert proc.returncode != 0
    text = " ".join(out.split())  # as a terminal would show it, without rich's line wrapping
    assert "training failed" in text and "ZEROTH_COLLECTIVE_TIMEOUT='soon' must be a number of seconds" in text, out
    assert str(run_dir / "trainer.log") in text and f"zeroth run --resume {run_dir}" in text, out
    assert "Traceback" not in out, out
    assert "must be a number of seconds" in (run_dir / "trainer.log").read_text()  # the whole story is in the log


SLOW_STOPPER = """
import pathlib, signal, sys, time
here = pathlib.Path(sys.argv[1])
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
(here / "ready").write_text("")
while not stop:
    time.sleep(0.1)
time.sleep(40)  # a step and its checkpoint on a loaded CPU: longer than torchrun's default 30 s
(here / "checkpointed").write_text("")
"""


def test_torchrun_lets_a_rank_finish_a_step_longer_than_its_default_grace(tmp_path):
    """Ctrl-C reaches torchrun, which passes SIGTERM on and then waits for the ranks: with its default
    30 s it killed a rank mid-step under load, and the step in flight was lost (CI saw this)."""
    run = validation.load(Path(__file__).parents[2] / "examples" / "countdown-tiny.yaml")
    command = local.trainer_command(run, tmp_path, 0)
    launcher = command[:command.index("zeroth.trainer.main") - 1]
    (tmp_path / "rank.py").write_text(SLOW_STOPPER)
    proc = subprocess.Popen([*launcher, str(tmp_path / "rank.py"), str(tmp_path)],
                            env=local.trainer_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (tmp_path / "ready").exists(), 120, "the rank")
        proc.send_signal(signal.SIGTERM)  # what `zeroth run` sends torchrun on Ctrl-C
        out, _ = proc.communicate(timeout=scaled(180))
    finally:
        proc.kill()
    assert (tmp_path / "checkpointed").exists(), out[-3000:]
