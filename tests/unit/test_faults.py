"""Faults in the engine, made for real: a trainer SIGKILLed in the middle of writing a checkpoint
(the previous checkpoint is the one resumed, the partial one is ignored, then pruned); the run
directory's disk full while the trained model is exported (a 64 KiB tmpfs: one clear error naming
the path and the way out, nothing half-written left, and the export works once there is room); and
a verifier that times out on every sample (each scores 0, the step trains on all-zero advantages,
and the timeout metric counts every sample).

DeepSpeed runs for real on a one-rank gloo group (tests/unit/conftest.py), on a tiny random GPT-2.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from tests import procs
from tests.conftest import ROOT
from tests.speed import scaled
from tests.tiny import save_random_tiny
from tests.unit.test_engine import load, make_samples, make_spec, weights_of
from zeroth.local import free_port
from zeroth.trainer import checkpoint as ckpt
from zeroth.trainer import loop
from zeroth.trainer.engine import Policy

ADVANTAGES = torch.tensor([1.0, -1.0, 0.5, -0.5] * 2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_random_tiny(tmp_path_factory.mktemp("tiny-random"))


def train(policy: Policy, seed: int) -> None:
    samples = make_samples(8, seed=seed)
    policy.train_step(samples, ADVANTAGES, sum(len(s.completion_ids) for s in samples), weights_version=0)


# A trainer rank as torchrun starts it (`zeroth.trainer.main`'s set-up), through `loop._save`: the
# checkpoint of step 2 completes; the one of step 3 is SIGKILLed once its first file is on disk.
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path

import deepspeed
import torch

from tests.unit.test_faults import train
from tests.unit.test_engine import make_spec
from zeroth.trainer import checkpoint as ckpt, loop, main
from zeroth.trainer.engine import Policy

model_dir, directory = sys.argv[1], Path(sys.argv[2])
main.skip_shared_memory_allreduce()
deepspeed.init_distributed(dist_backend="gloo")
policy = Policy(make_spec(model_dir), model_dir, per_rank=8)
state = ckpt.TrainerState()
train(policy, seed=2)
state.step = 2
loop._save(policy, state, None, directory, keep=2)
torch.save(policy.state_dict(), directory.parent / "weights-at-2.pt")  # what the engine held then

real_save = torch.save


def save_then_die(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    if ckpt.tag(3) in str(f):
        os.kill(os.getpid(), signal.SIGKILL)


torch.save = save_then_die  # DeepSpeed's checkpoint engine writes every file with torch.save
train(policy, seed=3)
state.step = 3
loop._save(policy, state, None, directory, keep=2)
sys.exit("the writer was not killed")
"""


def test_a_checkpoint_killed_mid_write_is_ignored_the_previous_one_resumes_and_the_next_save_prunes_it(
        tmp_path, model_dir, process_group):
    directory = tmp_path / "checkpoints"
    env = procs.tag({**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
                     "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    child = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(model_dir), str(directory)], cwd=ROOT, env=env,
                           check=False, capture_output=True, text=True, timeout=scaled(300))
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    partial = directory / ckpt.tag(3)
    assert any(partial.iterdir()), "killed before any file of step 3 was written"

    policy = Policy(make_spec(model_dir), str(model_dir), per_rank=8)  # a restarted trainer
    state = loop._resume(policy, directory)
    assert (state.step, state.restarts) == (2, 1)
    assert not (partial / ckpt.STATE_FILE).exists()
    saved = torch.load(tmp_path / "weights-at-2.pt")
    resumed = weights_of(policy)
    assert list(resumed) == list(saved)
    for name, tensor in resumed.items():
        torch.testing.assert_close(tensor, saved[name], atol=0, rtol=0, msg=name)
    base = load(model_dir).state_dict()
    assert any(not torch.equal(saved[k], base[k]) for k in saved)  # a trained checkpoint, not the base model

    train(policy, seed=4)
    state.step = 4
    loop._save(policy, state, None, directory, keep=2)
    assert sorted(p.name for p in directory.glob("step-*")) == [ckpt.tag(2), ckpt.tag(4)]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("where", ["rendezvous", "stderr-redirected"])
def test_a_rank_killed_by_an_abort_leaves_its_python_stack_in_the_log(tmp_path, model_dir, where):
    """gloo and NCCL end a process from C++ ("terminate called ...", SIGABRT), and torchrun's report
    says only "Signal 6": the trainer turns faulthandler on, so the rank's log shows where it was.
    Rank 0 of 2 is aborted where it waits for a rank 1 that never comes (its rendezvous: its store
    listens), or while DeepSpeed's op probe has pointed its fd 2 at a temporary file to hide a test
    compile (a C compiler that hangs holds it there: once in CI an abort in that window left the
    log empty)."""
    manifest = {"apiVersion": "zeroth.dev/v1alpha1", "kind": "ReasoningRun", "metadata": {"name": "abort"},
                "spec": {"model": {"name": str(model_dir), "dtype": "float32"},
                         "dataset": {"source": "builtin:countdown"}, "verifiers": [{"name": "countdown"}],
                         "trainer": {"replicas": 2, "gpusPerReplica": 0}, "rollout": {"engine": "hf", "gpusPerReplica": 0}}}
    config, run_dir, port = tmp_path / "run.json", tmp_path / "run", free_port()
    config.write_text(json.dumps(manifest))
    env = procs.tag({**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0",
                     "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    env.pop("PYTHONFAULTHANDLER", None)
    if where == "stderr-redirected":
        compiler = tmp_path / "cc"
        compiler.write_text("#!/bin/sh\nexec sleep 600\n")
        compiler.chmod(0o755)
        env["CC"] = str(compiler)
    rank = subprocess.Popen([sys.executable, "-m", "zeroth.trainer.main", "--run-dir", str(run_dir), "--config", str(config)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = os.readlink(f"/proc/{rank.pid}/fd/2")  # the pipe this test reads

    def there() -> bool:
        if where == "rendezvous":  # past its pid file (`_train`), and its store listens
            return (run_dir / "pids" / "rank-0.pid").exists() and _listening(port)
        try:
            return os.readlink(f"/proc/{rank.pid}/fd/2") != log
        except FileNotFoundError:  # the rank ended: the loop says so
            return False

    try:
        deadline = time.monotonic() + scaled(120)
        while not there():
            assert rank.poll() is None and time.monotonic() < deadline, f"the rank ended or never reached its {where}"
            time.sleep(0.1)
        rank.send_signal(signal.SIGABRT)
        _, stderr = rank.communicate(timeout=scaled(60))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(rank.pid, signal.SIGKILL)  # the hung compiler too
        rank.wait()
    assert rank.returncode == -signal.SIGABRT
    assert "Fatal Python error: Aborted" in stderr, stderr[-2000:]
    assert "in _train" in stderr and "in main" in stderr, stderr[-2000:]
    if where == "stderr-redirected":
        assert "in has_function" in stderr, stderr[-2000:]


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (a real filesystem that fills up), unmounted at the end whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_full_disk_during_the_export_is_one_clear_error_and_nothing_half_written_stays(model_dir, process_group,
                                                                                           small_disk):
    from transformers import AutoModelForCausalLM

    policy = Policy(make_spec(model_dir), str(model_dir), per_rank=8)
    train(policy, seed=5)
    with pytest.raises(SystemExit) as failed:
        loop._export_model(policy, small_disk / "model")  # the model is ~3 MB
    message = str(failed.value)
    assert f"exporting the trained model to {small_disk / 'model'} failed" in message, message
    assert "No space left on device" in message and "free space" in message, message
    assert f"zeroth run --resume {small_disk}`" in message, message
    assert list(small_disk.iterdir()) == []  # neither `model` nor a half-written `model.tmp`

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    loop._export_model(policy, small_disk / "model")
    assert [p.name for p in small_disk.iterdir()] == ["model"]
    exported = AutoModelForCausalLM.from_pretrained(small_disk / "model").state_dict()
    for name, tensor in weights_of(policy).items():
        torch.testing.assert_close(exported[name], tensor, atol=0, rtol=0, msg=name)


def test_a_verifier_timing_out_on_every_sample_gives_a_step_of_zero_rewards_and_counts_every_timeout(
        tmp_path, process_group):
    """math-verify given 1 µs cannot answer any sample in time: each is scored through the rollout
    worker's own path (generation, then its verification), the step trains on all-zero advantages, the
    worker's `verifier_timeouts` counter counts them and metrics.jsonl records the step."""
    from tests.unit import tiny_chat
    from zeroth import api
    from zeroth.rollout.worker import RolloutWorker
    from zeroth.trainer import grpo
    from zeroth.trainer.report import Reporter

    model = tiny_chat.save(tmp_path / "model", tiny_chat.tokenizer(), rig="12")  # writes 1s and 2s: always an answer
    spec = tiny_chat.spec_dict(model, verifiers=[{"name": "math", "timeoutSeconds": 1e-6, "answer": {"mode": "line"}}],
                               algorithm={"groupSize": 4, "promptsPerStep": 2, "maxResponseTokens": 8},
                               trainer={"gpusPerReplica": 0, "microBatchSize": 8})
    worker = RolloutWorker(str(model), spec)
    samples = worker.generate([{"id": "a", "prompt": "1+2=", "gold": "3"}, {"id": "b", "prompt": "2*6=", "gold": "12"}],
                              group_size=4, seed=0)
    assert len(samples) == 8
    assert all(s.completion.strip() for s in samples)  # an answer to check in every sample
    assert [s.verifier_timeouts for s in samples] == [["math"]] * 8
    assert [(s.reward, s.scores, s.correct) for s in samples] == [(0.0, {"math": 0.0}, False)] * 8

    run = api.ReasoningRunSpec.model_validate(spec)
    rewards = torch.tensor([s.reward for s in samples])
    advantages = grpo.group_advantages(rewards, 4, run.algorithm.scale_rewards, run.algorithm.only_positive_advantages)
    policy = Policy(run, str(model), per_rank=8)
    stats = policy.train_step(samples, advantages, sum(len(s.completion_ids) for s in samples), weights_version=0)
    assert stats["grad_norm"] == 0.0  # nothing to learn from, and nothing broken
    state = ckpt.TrainerState(step=1, weights_version=1)
    record = loop._record(state, samples, [stats], run.algorithm, 1.0, 0.5, 0.0)
    (tmp_path / "run").mkdir()
    reporter = Reporter(tmp_path / "run", "timeouts", "default", run, None)
    reporter.step(record, samples)
    # the worker, where samples are scored, counts the timeouts (as none of them an error)
    labels = {"run": "", "namespace": "", "verifier": "math"}
    assert worker.metrics.registry.get_sample_value("zeroth_verifier_timeouts_total", labels) == 8
    assert not worker.metrics.registry.get_sample_value("zeroth_verifier_errors_total", labels)
    written = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(written) == 1 and '"reward_mean": 0.0' in written[0] and '"accuracy": 0.0' in written[0]
