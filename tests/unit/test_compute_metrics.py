"""Model FLOPs, MFU, NVML's GPU metrics, and what trainer rank 0 exports about them."""

from __future__ import annotations

import json
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import minimal_manifest
from zeroth import gpus, validation
from zeroth.rollout.worker import Sample
from zeroth.trainer import compute
from zeroth.trainer.report import TARGETS_FILE, Reporter


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A10G", 125e12),
    ("NVIDIA L40S", 362e12),
    ("NVIDIA L4", 121e12),
    ("Tesla T4", 65e12),
    ("Some Future Accelerator", None),
])
def test_a_gpus_peak_is_its_data_sheets_dense_figure_or_unknown(name, peak):
    assert compute.peak_flops(name) == peak


def test_mfu_is_absent_without_a_peak_and_flops_follow_6n_and_2n():
    assert compute.model_flops(1_000, 10, training=True) == 60_000
    assert compute.model_flops(1_000, 10, training=False) == 20_000
    assert compute.mfu(60_000, 1.0, 2, None) is None  # a CPU: nothing honest to divide by
    assert compute.mfu(60_000, 0.0, 2, 1e9) is None
    assert compute.mfu(60_000, 1.0, 2, 1e5) == pytest.approx(0.3)


class FakeNvml:
    """What NVML would say of two GPUs (this machine has none)."""

    def sample(self):
        return [gpus.GpuSample(0, 0.5, 1 << 30), gpus.GpuSample(1, 0.25, 2 << 30)]


def _scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    from prometheus_client import generate_latest

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}


def test_gpu_metrics_are_absent_without_a_gpu_and_labelled_per_gpu_with_one():
    here = CollectorRegistry()
    here.register(gpus.GpuCollector({"run": "r", "namespace": "ns"}))  # the real NVML: this machine has no GPU
    assert not [k for k in _scrape(here) if "gpu" in k[0]]
    rigged = CollectorRegistry()
    collector = gpus.GpuCollector({"run": "r", "namespace": "ns"}, nvml=FakeNvml())
    rigged.register(collector)
    got = _scrape(rigged)
    pod = collector.labels["pod"]
    labels = lambda gpu: tuple(sorted({"run": "r", "namespace": "ns", "pod": pod, "gpu": gpu}.items()))  # noqa: E731
    assert got[("zeroth_gpu_utilization", labels("0"))] == 0.5
    assert got[("zeroth_gpu_utilization", labels("1"))] == 0.25
    assert got[("zeroth_gpu_memory_used_bytes", labels("1"))] == 2 << 30


def _sample(prompt: int, completion: int) -> Sample:
    return Sample(task_id="t", group=0, prompt_ids=[1] * prompt, completion_ids=[2] * completion, logprobs=[-0.1] * completion,
                  completion="x", reward=1.0, scores={"countdown": 1.0}, correct=True, truncated=False, version=0)


def _record(**more) -> dict:
    return {"step": 1, "weights_version": 1, "reward_mean": 1.0, "accuracy": 1.0, "tokens_per_second": 10.0,
            "generated_tokens": 10, "trained_tokens": 10, "response_length_mean": 5.0, "step_seconds": 1.0, "generation_seconds": 0.25,
            "weight_sync_seconds": 0.25, "weight_sync_bytes": 4096, "clip_fraction_low": 0.1, "clip_fraction_high": 0.2,
            "rollout_workers": 2, "rollout_workers_joined": 1, "rollout_workers_lost": 0, "rollout_requests_resubmitted": 0,
            **more}


def test_rank_0_exports_flops_mfu_counters_and_a_file_sd_of_every_endpoint(tmp_path):
    spec = validation.validate(minimal_manifest()).spec
    reporter = Reporter(tmp_path, "r", "ns", spec, 0)
    reporter.compute(parameters=1_000, devices=2, peak=1e6, workers=["127.0.0.1:9", "127.0.0.1:8"])
    samples = [_sample(3, 5), _sample(3, 5)]  # 16 tokens through the model
    reporter.step(_record(worker_queue_depth={"0": 1, "1": 0}), samples)
    reporter.step(_record(step=2, worker_queue_depth={"1": 2}), samples)  # worker 0 left
    reporter.checkpoint(2)
    text = urllib.request.urlopen(f"http://127.0.0.1:{reporter.port}/metrics", timeout=10).read().decode()
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    run = {"run": "r", "namespace": "ns"}

    def value(name, **labels):
        return got.get((name, tuple(sorted({**run, **labels}.items()))))

    assert value("zeroth_model_flops_total", phase="train") == 2 * 6 * 1_000 * 16
    assert value("zeroth_model_flops_total", phase="generation") == 2 * 2 * 1_000 * 16
    # the trainer's own half of the step (1 s less generation and sync), 2 devices of 1e6 FLOP/s
    assert value("zeroth_mfu") == pytest.approx(6 * 1_000 * 16 / (0.5 * 2 * 1e6))
    assert value("zeroth_weight_sync_bytes_total") == 2 * 4096
    assert value("zeroth_rollout_workers_joined_total") == 2
    assert value("zeroth_clip_fraction_high") == 0.2 and value("zeroth_clip_fraction_low") == 0.1
    assert value("zeroth_generation_seconds_count") == 2
    assert value("zeroth_checkpoints_total") == 1 and value("zeroth_exported_samples_total") == 4
    assert value("zeroth_worker_queue_depth", worker="1") == 2
    assert value("zeroth_worker_queue_depth", worker="0") is None  # its series ended with it
    # what the workers and NVML export themselves is not exported here too
    assert not [k for k in got if k[0].startswith(("zeroth_verifier_", "zeroth_gpu_utilization", "zeroth_gpu_memory"))]
    targets = json.loads((tmp_path / TARGETS_FILE).read_text())
    assert targets == [{"targets": [f"127.0.0.1:{reporter.port}"], "labels": {"job": "zeroth-trainer"}},
                       {"targets": ["127.0.0.1:8", "127.0.0.1:9"], "labels": {"job": "zeroth-rollout"}}]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["model_flops_train"] == 6 * 1_000 * 16 and "mfu" in records[-1]


def test_no_mfu_on_a_cpu(tmp_path):
    spec = validation.validate(minimal_manifest()).spec
    reporter = Reporter(tmp_path, "r", "ns", spec, None)
    reporter.compute(parameters=1_000, devices=2, peak=None, workers=[])
    reporter.step(_record(), [_sample(3, 5)])
    assert reporter.metrics.registry.get_sample_value("zeroth_mfu", {"run": "r", "namespace": "ns"}) is None
    assert "mfu" not in json.loads((tmp_path / "metrics.jsonl").read_text())
    assert not (tmp_path / TARGETS_FILE).exists()  # no /metrics served, nothing to scrape


def test_a_step_sets_its_series_while_scrapes_wait(tmp_path):
    """Every series a step sets is set inside the registry's update (`Metrics.update`), so a scrape
    never reads part of a step: each of them is taken while the update is held."""
    spec = validation.validate(minimal_manifest()).spec
    reporter = Reporter(tmp_path, "r", "ns", spec, None)
    taken, real = [], reporter._m

    def m(name, **extra):
        taken.append((name, reporter.metrics.update().locked()))
        return real(name, **extra)

    reporter._m = m
    reporter.step(_record(worker_queue_depth={"0": 1}), [_sample(3, 5)])
    assert {"step", "accuracy", "trained_tokens", "reward", "worker_queue_depth"} <= {name for name, _ in taken}
    # exported_samples alone counts later, once the samples are on disk (no file is written under the update)
    assert [name for name, held in taken if not held] == ["exported_samples"]


def test_the_step_is_exported_before_the_first_step_and_on_resume_is_the_checkpoints(tmp_path):
    """ZerothRunNoProgress watches zeroth_step: a trainer stuck before its first step must have it."""
    spec = validation.validate(minimal_manifest()).spec
    step = {"run": "r", "namespace": "ns"}
    for directory in ("fresh", "resumed"):
        (tmp_path / directory).mkdir()
    fresh = Reporter(tmp_path / "fresh", "r", "ns", spec, None)
    assert fresh.metrics.registry.get_sample_value("zeroth_step", step) == 0
    # the per-step histograms are there at 0 too, so rate() over the first step's observations has
    # a 0 before them (each verifier's reward and the weighted sum's)
    verifiers = [{"verifier": v} for v in ("all", *(v.name for v in spec.verifiers))]
    for name in ("reward", "response_length_tokens", "step_seconds", "generation_seconds", "weight_sync_seconds",
                 "rollout_staleness"):
        for extra in (verifiers if name == "reward" else [{}]):
            assert fresh.metrics.registry.get_sample_value(f"zeroth_{name}_count", {**step, **extra}) == 0, (name, extra)
    resumed = Reporter(tmp_path / "resumed", "r", "ns", spec, None)
    resumed.checkpoint(7, written=False)
    assert resumed.metrics.registry.get_sample_value("zeroth_step", step) == 7
    resumed.checkpoint(8)  # written by this process after its step 8: the step is the step's own
    resumed.step(_record(step=8), [_sample(3, 5)])
    assert resumed.metrics.registry.get_sample_value("zeroth_step", step) == 8


def test_a_steps_record_averages_the_ranks_means_and_keeps_the_largest_of_their_maxima():
    from zeroth.trainer import checkpoint, loop

    spec = validation.validate(minimal_manifest()).spec
    samples = [_sample(3, 5) for _ in range(spec.algorithm.group_size)]
    ranks = [{"loss": 1.0, "logprob_mismatch_max": 0.1}, {"loss": 3.0, "logprob_mismatch_max": 0.9}]
    record = loop._record(checkpoint.TrainerState(step=1, weights_version=1), samples, ranks, spec.algorithm, 1.0, 0.5, 0.0)
    assert record["loss"] == 2.0 and record["logprob_mismatch_max"] == 0.9
    # 4 samples of 5 tokens over the step's 1 s, not over the 0.5 s waited for them (0 when prefetched)
    assert record["tokens_per_second"] == spec.algorithm.group_size * 5 / 1.0


def _scalars(directory) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_event_files_hold_the_records_and_a_resume_replaces_the_steps_after_its_checkpoint(tmp_path):
    """Read back with TensorBoard's own reader, as `tensorboard --logdir` would."""
    spec = validation.validate(minimal_manifest()).spec
    first = Reporter(tmp_path, "r", "ns", spec, None)
    first.compute(parameters=10, devices=1, peak=None, workers=[])
    first.evaluation({"step": 0, "eval_greedy": 0.25, "eval_pass@k": 0.5, "eval_maj@k": 0.25, "eval_k": 4, "eval_size": 8})
    for step, loss in ((1, 0.9), (2, 0.8), (3, 0.7)):
        first.step(_record(step=step, loss=loss, reward_by_verifier={"countdown": step / 10}), [_sample(3, 5)])
    first.plot(force=True)
    # killed after step 3; the newest checkpoint was step 1: steps 2 and 3 are trained again
    again = Reporter(tmp_path, "r", "ns", spec, None)
    again.checkpoint(1, written=False)
    again.step(_record(step=2, loss=0.5, reward_by_verifier={"countdown": 0.6}), [_sample(3, 5)])
    again.plot(force=True)
    got = _scalars(tmp_path / "tensorboard")
    assert got["train/loss"] == [(1, pytest.approx(0.9)), (2, pytest.approx(0.5))]
    assert got["train/reward_by_verifier/countdown"] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.6))]
    assert got["eval/greedy"] == [(0, 0.25)] and got["eval/pass@k"] == [(0, 0.5)]
    assert "train/time" not in got and "train/step" not in got
