"""What a run shows: `metrics.jsonl`, Prometheus `/metrics`, exported samples, PNG plots, and on a
cluster the run's `status.progress` (through `StatusWriter`).

Written by trainer rank 0 only. Reward and accuracy are kept apart everywhere: reward is the
weighted sum of the verifiers' scores (any partial credit is a visible verifier weight), accuracy
the fraction of samples every task verifier accepts.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from zeroth import api, metrics
from zeroth.gpus import GpuCollector
from zeroth.metrics import Metrics, exported_by
from zeroth.rollout.worker import Sample
from zeroth.trainer import compute
from zeroth.trainer.status import StatusWriter
from zeroth.trainer.status import active as status_active

TARGETS_FILE = "prometheus_targets.json"
TENSORBOARD_DIR = "tensorboard"  # event files of the same records, for `tensorboard --logdir`


PLOT_EVERY = 10


def local_gpus(trainer: int, rollout: int, visible: int, environ: Mapping[str, str] = os.environ) -> int | None:
    """The GPUs a local run's processes hold, of the `visible` ones: trainer rank r trains on GPU r
    (`trainer`: the ranks on a GPU, 0 on CPU), and the local Ray gives the rollout actors (`rollout`
    GPUs in all) the lowest-numbered free GPUs of the same visible ones, unaware of the trainer's:
    the two share from GPU 0, and no process gets a GPU beyond the visible ones. None in a pod of a
    run on a cluster (its status writable or not), where the operator counts the pods' GPU time:
    two exporters would double a dashboard's `sum by (namespace, run)`."""
    if status_active(environ):
        return None
    return min(max(trainer, rollout), visible)


class GpuTime:
    """A local run's `gpu_seconds` and `cost`: the GPUs its processes hold (`local_gpus`) times the
    wall seconds since the trainer started. The counters are this process's own, from 0 (a resumed
    run's Prometheus sees a counter reset, which increase() and rate() handle; starting from the
    records' total would read lower than the last scrape of the process before, and count it
    twice); the records hold the run's total, on from what they counted before (`recorded`). Read
    at each scrape, so the counters never wait for a step. On a cluster the operator counts the
    pods' GPU-seconds instead (status.compute)."""

    def __init__(self, labels: dict[str, str], cost: api.CostSpec, gpus: int, started: float, recorded: float,
                 clock: Callable[[], float]):
        self.labels, self.cost, self.gpus, self.started, self.recorded, self.clock = \
            labels, cost, gpus, started, recorded, clock

    def totals(self, since_start: bool = False) -> dict[str, float]:
        """The run's GPU-seconds and cost (this process's alone with `since_start`)."""
        seconds = (0.0 if since_start else self.recorded) + self.gpus * max(self.clock() - self.started, 0.0)
        return {"gpu_seconds": seconds, "cost": seconds / 3600 * self.cost.price_per_gpu_hour}

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        totals = self.totals(since_start=True)
        for name, extra in (("gpu_seconds", {}), ("cost", {"currency": self.cost.currency})):
            m = metrics.BY_NAME[name]
            family = CounterMetricFamily(m.full_name, m.help, labels=m.labels)
            family.add_metric([{**self.labels, **extra}[k] for k in m.labels], totals[name])
            yield family


class Reporter:
    def __init__(self, run_dir: Path, name: str, namespace: str, spec: api.ReasoningRunSpec, metrics_port: int | None,
                 metrics_addr: str = "127.0.0.1", export_dir: Path | None = None, status: StatusWriter | None = None,
                 gpus: int | None = None, started: float | None = None, clock: Callable[[], float] = time.monotonic):
        """`gpus`: what a local run's processes hold (`local_gpus`), held since `started` (by `clock`,
        now when None); None on a cluster, where the operator counts the pods' GPU time."""
        self.run_dir = run_dir
        self.spec = spec
        self.status = status
        self.labels = {"run": name, "namespace": namespace}
        self.metrics = Metrics(names=exported_by("trainer"))  # workers, NVML and the operator export the rest
        self.metrics.registry.register(GpuCollector(self.labels))
        self.parameters, self.devices, self.peak = 0, 1, None
        self._workers: set[str] = set()  # the rollout workers whose queue depth is exported
        self._tb = None  # TensorBoard's writer, made at the first record
        self._purge_step: int | None = None
        self.history: list[dict[str, Any]] = []
        path = run_dir / "metrics.jsonl"
        if path.exists():
            self.history = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        self.jsonl = open(path, "a")
        self.gpu_time = None
        if gpus is not None:
            recorded = next((r["gpu_seconds"] for r in reversed(self.history) if "gpu_seconds" in r), 0.0)
            self.gpu_time = GpuTime(self.labels, spec.cost, gpus, clock() if started is None else started, recorded, clock)
            self.metrics.registry.register(self.gpu_time)
        self.export_dir = export_dir or run_dir / "samples"
        self.export_dir.mkdir(parents=True, exist_ok=True)
        self.port = None
        if metrics_port is not None:
            self.port = metrics.serve(self.metrics.registry, str(metrics_port), metrics_addr)
            (run_dir / "metrics_port").write_text(str(self.port))
        self.metrics["max_steps"].labels(**self.labels).set(spec.algorithm.max_steps)
        # from the start, not from the first step: a trainer stuck before it (loading, the first weight
        # sync, a rendezvous after a restart) stays at step 0 or its checkpoint's, which the
        # no-progress alert sees; an absent series would keep it quiet
        self._m("step").set(0)
        for counter in ("checkpoints", "exported_samples", "rollout_workers_joined", "rollout_workers_lost",
                        "rollout_requests_resubmitted", "generated_tokens", "trained_tokens", "weight_sync_bytes"):
            self._m(counter)  # counted from 0 at the start: rate() and increase() see the first rise
        # the per-step histograms too: created at the first step, already holding its observations,
        # they would leave the panels at 0/0 until the second step after every (re)start
        for m in metrics.DEFINITIONS:
            if m.kind == "histogram" and m.source == "trainer":
                for verifier in (("all", *(v.name for v in spec.verifiers)) if "verifier" in m.labels else (None,)):
                    self._m(m.name, **({"verifier": verifier} if verifier else {}))
        self._progress(maxSteps=spec.algorithm.max_steps)

    def _progress(self, force: bool = False, **fields: Any) -> None:
        if self.status is not None:
            self.status.update(force=force, **fields)

    def _m(self, name: str, **extra: str):
        return self.metrics[name].labels(**self.labels, **extra)

    def compute(self, parameters: int, devices: int, peak: float | None, workers: list[str]) -> None:
        """What model FLOPs and MFU are counted from: the policy's parameters, the trainer's GPUs
        (or ranks) and one GPU's peak (None: no MFU); and the rollout workers' /metrics endpoints."""
        self.parameters, self.devices, self.peak = parameters, devices, peak
        self.targets(workers)

    def targets(self, workers: list[str]) -> None:
        """A Prometheus file_sd file of this run's /metrics endpoints (rank 0's and each rollout
        worker's), for a Prometheus next to a local run (`file_sd_configs`); rewritten as workers
        come and go. On a cluster the operator's PodMonitor finds the pods instead."""
        if self.port is None:
            return
        groups = [{"targets": [f"127.0.0.1:{self.port}"], "labels": {"job": "zeroth-trainer"}},
                  {"targets": sorted(workers), "labels": {"job": "zeroth-rollout"}}]
        tmp = self.run_dir / (TARGETS_FILE + ".tmp")
        tmp.write_text(json.dumps(groups, indent=2) + "\n")
        tmp.replace(self.run_dir / TARGETS_FILE)

    def step(self, record: dict[str, Any], samples: list[Sample]) -> None:
        """One training step: metrics.jsonl, Prometheus, exported samples."""
        m = self._m
        self._flops(record, samples)
        if self.gpu_time is not None:
            record.update(self.gpu_time.totals())  # in metrics.jsonl: a resumed run goes on from them
        with self.metrics.update():  # a scrape sees the step's series all set, or none of them
            for s in samples:
                m("reward", verifier="all").observe(s.reward)
                for name, score in s.scores.items():
                    m("reward", verifier=name).observe(score)
                m("response_length_tokens").observe(len(s.completion_ids))
                m("rollout_staleness").observe(record["weights_version"] - 1 - s.version)  # version trained from
            m("generated_tokens").inc(record["generated_tokens"])
            m("trained_tokens").inc(record["trained_tokens"])
            m("step_seconds").observe(record["step_seconds"])
            m("generation_seconds").observe(record["generation_seconds"])
            m("weight_sync_seconds").observe(record["weight_sync_seconds"])
            m("weight_sync_bytes").inc(record.get("weight_sync_bytes", 0))
            m("model_flops", phase="train").inc(record["model_flops_train"])
            m("model_flops", phase="generation").inc(record["model_flops_generation"])
            depths = record.get("worker_queue_depth", {})
            for gone in self._workers - set(depths):  # a lost worker's series ends with it
                self.metrics["worker_queue_depth"].remove(*self.labels.values(), gone)
            self._workers = set(depths)
            for index, depth in depths.items():
                m("worker_queue_depth", worker=index).set(depth)
            if "rollout_workers" in record:
                m("rollout_workers").set(record["rollout_workers"])
                for key in ("rollout_requests_resubmitted", "rollout_workers_joined", "rollout_workers_lost"):
                    m(key).inc(record[key])
            for key in ("step", "accuracy", "all_equal_groups_fraction", "truncated_fraction", "loss", "kl", "entropy",
                        "clip_fraction", "clip_fraction_low", "clip_fraction_high", "importance_ratio", "logprob_mismatch",
                        "logprob_mismatch_max", "grad_norm", "learning_rate", "weights_version", "tokens_per_second", "mfu"):
                if record.get(key) is not None:
                    m(key).set(record[key])
        self._write(record)
        self._export(record["step"], samples)
        self._say(f"step {record['step']}/{self.spec.algorithm.max_steps}", record, "reward_mean", "accuracy", "loss",
                  "kl", "tokens_per_second", "step_seconds")
        self._progress(step=record["step"], rewardMean=record["reward_mean"],
                       tokensPerSecond=record["tokens_per_second"], weightsVersion=record["weights_version"])

    def _flops(self, record: dict[str, Any], samples: list[Sample]) -> None:
        """The step's model FLOPs (`compute`: every prompt and completion token, trained and generated:
        with dynamic sampling the fleet generated groups the step dropped, `generated_sequence_tokens`)
        and the trainer's MFU over its own part of the step (not generation, not the weight sync)."""
        tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
        record["model_flops_train"] = compute.model_flops(self.parameters, tokens, training=True)
        generated = record.get("generated_sequence_tokens", tokens)
        record["model_flops_generation"] = compute.model_flops(self.parameters, generated, training=False)
        training = record["step_seconds"] - record["generation_seconds"] - record["weight_sync_seconds"]
        mfu = compute.mfu(record["model_flops_train"], training, self.devices, self.peak)
        if mfu is not None:
            record["mfu"] = mfu

    def checkpoint(self, step: int, written: bool = True) -> None:
        """A complete checkpoint at `step` (`written`: by this process now, not found on resume);
        status.progress is patched now (the last step always checkpoints)."""
        self._m("checkpoint_step").set(step)
        if written:
            self._m("checkpoints").inc()
        else:
            self._m("step").set(step)  # resumed from it: the last step done
            if self._tb is None:
                self._purge_step = step + 1  # TensorBoard forgets what came after
        if self._tb is not None:
            self._tb.flush()
        self._say(f"checkpoint step {step}", {})
        self._progress(force=True, lastCheckpointStep=step)

    def evaluation(self, record: dict[str, Any]) -> None:
        k = str(record["eval_k"])
        for kind, key, samples in (("greedy", "eval_greedy", "1"), ("pass", "eval_pass@k", k), ("maj", "eval_maj@k", k)):
            self._m("eval_accuracy", kind=kind, k=samples).set(record[key])
        if self.gpu_time is not None:
            record.update(self.gpu_time.totals())  # the final evaluation's GPU time too, after the last step's
        self._write(record)
        self._say(f"eval step {record['step']}", record, "eval_greedy", "eval_pass@k", "eval_maj@k")
        self._progress(accuracy=record["eval_greedy"])  # status shows held-out accuracy, not the training samples'

    @staticmethod
    def _say(head: str, record: dict[str, Any], *keys: str) -> None:
        """One line on stdout (`kubectl logs` of rank 0; trainer.log locally): `step 3/8 reward_mean=0.412 ...`."""
        values = " ".join(f"{k}={record[k]:.4g}" for k in keys if isinstance(record.get(k), (int, float)))
        print(f"{head} {values}".rstrip(), flush=True)

    def _write(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        self._tensorboard(record)

    def _tensorboard(self, record: dict[str, Any]) -> None:
        """The record's numbers as TensorBoard scalars at its step: `train/KEY` for a step's
        (`train/reward_by_verifier/NAME` for a map), `eval/KEY` for an evaluation's. A resumed run
        purges the steps after its checkpoint, which it trains again."""
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=self._purge_step, flush_secs=10)
        step, when = record["step"], record.get("time")
        group = "eval" if any(k.startswith("eval_") for k in record) else "train"
        for key, value in record.items():
            if key in ("step", "time"):
                continue
            values = value.items() if isinstance(value, dict) else [(None, value)]
            for sub, v in values:
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    tag = f"{group}/{key.removeprefix('eval_')}" + (f"/{sub}" if sub is not None else "")
                    self._tb.add_scalar(tag, v, step, walltime=when)

    def _export(self, step: int, samples: list[Sample]) -> None:
        export = self.spec.export
        if not export.enabled:
            return
        keep = [s for s in samples if export.which == "all" or s.correct]
        if not keep:
            return
        with open(self.export_dir / f"step-{step:08d}.jsonl", "w") as f:
            for s in keep:
                f.write(json.dumps({
                    "task_id": s.task_id, "prompt_ids": s.prompt_ids, "completion": s.completion,
                    "reward": s.reward, "scores": s.scores, "correct": s.correct, "weights_version": s.version,
                }) + "\n")
        self._m("exported_samples").inc(len(keep))

    def plot(self, force: bool = False) -> None:
        """Redraws the PNGs from the history every `PLOT_EVERY` records (atomically, so a viewer
        never sees half a file); a redraw costs ~0.1 s, too much for every step of a fast run."""
        if force and self._tb is not None:
            self._tb.flush()  # the last step's or a stop's: the event files are whole when the run ends
        if not force and len(self.history) % PLOT_EVERY:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r for r in self.history if "reward_mean" in r]
        evals = [r for r in self.history if "eval_greedy" in r]
        if not steps:
            return
        x = np.array([r["step"] for r in steps])
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for key, label, color in (("reward_mean", "reward (mean)", "tab:blue"), ("accuracy", "accuracy (train samples)", "tab:orange")):
            y = np.array([r[key] for r in steps])
            ax.plot(x, y, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(x, _smooth(y), color=color, label=f"{label}, 10-step mean")
        if evals:
            ex = [r["step"] for r in evals]
            ax.plot(ex, [r["eval_greedy"] for r in evals], "o-", color="tab:green", label="held-out accuracy (greedy)")
            ax.plot(ex, [r["eval_pass@k"] for r in evals], "s--", color="tab:red", label="held-out pass@k")
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, max(1.02, max(r["reward_mean"] for r in steps) + 0.05))
        ax.set_title(f"{self.labels['run']}: reward and accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
        self._save(fig, "reward.png")
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.plot(x, [r["response_length_mean"] for r in steps], label="mean response length (tokens)")
        ax.set_xlabel("step")
        ax.set_title(f"{self.labels['run']}: response length")
        ax.grid(alpha=0.3)
        ax.legend()
        self._save(fig, "response_length.png")
        plt.close("all")

    def _save(self, fig, name: str) -> None:
        tmp = self.run_dir / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
        os.replace(tmp, self.run_dir / name)


def _smooth(y: np.ndarray, window: int = 10) -> np.ndarray:
    """Trailing mean over up to `window` points (the first points average what there is)."""
    c = np.cumsum(np.insert(y, 0, 0.0))
    n = np.minimum(np.arange(1, len(y) + 1), window)
    return (c[1:] - c[np.arange(1, len(y) + 1) - n]) / n
