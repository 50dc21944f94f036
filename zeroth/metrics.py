"""Every metric Zeroth exports, named once.

Trainer, rollout workers, the local runner and the operator build their prometheus-client objects
from these definitions (`Metrics`), and dashboards and alert rules may use only these names.
Labels: `run` and `namespace` on everything a run exports, `verifier` where it applies.
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PREFIX = "zeroth_"
# Where a rollout worker serves its /metrics: the first free port of PORTS_VAR ("9400" or "9400-9403":
# a rollout pod running several engines gives each a port) on ADDR_VAR; unset (a local run), any free
# port on loopback.
PORTS_VAR = "ZEROTH_METRICS_PORTS"
ADDR_VAR = "ZEROTH_METRICS_ADDR"
RUN_LABELS = ("run", "namespace")
Kind = Literal["counter", "gauge", "histogram"]


# who exports a metric: trainer rank 0, each rollout worker, each process that holds GPUs (NVML,
# read at scrape), the operator
Source = Literal["trainer", "worker", "gpu", "operator"]


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = RUN_LABELS
    buckets: tuple[float, ...] | None = None
    source: Source = "trainer"
    locally: Source | None = None  # who exports it instead in a local run (`zeroth run`: no operator)
    # a histogram observed in bursts, once a training step (the trainer's; each worker's requests and
    # their scoring): its panels look back over `$step_window`, as a step can outlast a rate window
    per_step: bool = False

    @property
    def full_name(self) -> str:
        return PREFIX + self.name


_V = (*RUN_LABELS, "verifier")
# up to an hour: a long chain of thought keeps a worker's request, or a big model's step, past 300 s
_SECONDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_UNIT = tuple(i / 10 for i in range(11))

_W = (*RUN_LABELS, "worker")
_GPU = (*RUN_LABELS, "pod", "gpu")

DEFINITIONS: tuple[Metric, ...] = (
    # rewards and what the policy writes (trainer rank 0)
    Metric("reward", "histogram", "Reward per sample, by verifier (verifier=\"all\": the weighted sum)", _V, _UNIT, per_step=True),
    Metric("accuracy", "gauge", "Fraction of the last step's samples every task verifier accepts"),
    Metric("all_equal_groups_fraction", "gauge", "Fraction of the last step's groups whose rewards are all equal (no signal)"),
    Metric("response_length_tokens", "histogram", "Completion length in tokens", RUN_LABELS,
           (4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384), per_step=True),
    Metric("truncated_fraction", "gauge", "Fraction of the last step's completions cut at the length limit"),
    Metric("generated_tokens", "counter", "Completion tokens the rollout fleet generated for training steps "
           "(groups dynamic sampling dropped included, evaluations not)"),
    Metric("trained_tokens", "counter", "Completion tokens the trainer updated on"),
    # the trainer's step
    Metric("step", "gauge", "Last completed training step"),
    Metric("max_steps", "gauge", "Training steps of the run"),
    Metric("step_seconds", "histogram", "Wall time of one training step", RUN_LABELS, _SECONDS, per_step=True),
    Metric("generation_seconds", "histogram", "Part of a step spent waiting for the rollout fleet's samples", RUN_LABELS, _SECONDS, per_step=True),
    Metric("loss", "gauge", "Policy loss of the last step"),
    Metric("kl", "gauge", "Mean per-token KL to the reference model"),
    Metric("entropy", "gauge", "Mean per-token entropy of the policy"),
    Metric("clip_fraction", "gauge", "Fraction of tokens whose importance ratio was clipped"),
    Metric("clip_fraction_low", "gauge", "Fraction of tokens clipped at 1 - epsilon (negative advantage)"),
    Metric("clip_fraction_high", "gauge", "Fraction of tokens clipped at 1 + epsilon_high (positive advantage)"),
    Metric("importance_ratio", "gauge", "Mean importance ratio pi/pi_old"),
    Metric("logprob_mismatch", "gauge", "Mean |trainer log-prob - rollout log-prob| of the same tokens under the same weights"),
    Metric("logprob_mismatch_max", "gauge", "Largest |trainer log-prob - rollout log-prob| of the last step's tokens"),
    Metric("grad_norm", "gauge", "Global gradient norm before clipping"),
    Metric("learning_rate", "gauge", "Current learning rate"),
    # weights and staleness
    Metric("weight_sync_seconds", "histogram", "Time to publish new weights to the rollout fleet", RUN_LABELS, _SECONDS, per_step=True),
    Metric("weight_sync_bytes", "counter", "Bytes of weights published to the rollout fleet"),
    Metric("weights_version", "gauge", "Version of the trainer's weights"),
    # a whole number: histogram_quantile interpolates within a bucket, so with a bound at each
    # integer alone a run all at staleness 1 would read 0.5 as its median; a narrow bucket just
    # below each bound keeps any quantile within 0.01 of the truth
    Metric("rollout_staleness", "histogram", "Trainer version minus the version a sample was generated with", RUN_LABELS,
           (0, *(b for n in (1, 2, 3, 4, 8, 16, 32, 64) for b in (n - 0.01, n))), per_step=True),
    Metric("checkpoint_step", "gauge", "Step of the newest complete checkpoint"),
    Metric("checkpoints", "counter", "Complete checkpoints written"),
    Metric("exported_samples", "counter", "Samples written to the export directory"),
    # the rollout fleet, as the trainer sees it
    Metric("rollout_workers", "gauge", "Rollout workers taking requests"),
    Metric("rollout_workers_joined", "counter", "Rollout workers that joined the fleet mid-run"),
    Metric("rollout_workers_lost", "counter", "Rollout workers the fleet lost mid-run"),
    Metric("rollout_requests_resubmitted", "counter", "Request parts generated again because their worker was lost"),
    # each rollout worker, from its own /metrics (label worker: its index in the fleet)
    Metric("worker_generated_tokens", "counter", "Tokens this rollout worker generated", _W, source="worker"),
    Metric("worker_request_seconds", "histogram", "Wall time of one generation request on this worker, scoring included", _W,
           _SECONDS, source="worker", per_step=True),
    Metric("worker_weights_version", "gauge", "Weights version this rollout worker holds", _W, source="worker"),
    Metric("worker_queue_depth", "gauge", "Request parts the trainer submitted to this rollout worker and has not collected", _W),
    # verifiers (rollout workers, where samples are scored)
    Metric("verifier_seconds", "histogram", "Verifier wall time per sample", _V, _SECONDS, source="worker", per_step=True),
    Metric("verifier_timeouts", "counter", "Samples a verifier gave up on at its time limit", _V, source="worker"),
    Metric("verifier_errors", "counter", "Samples a verifier could not score (scored 0)", _V, source="worker"),
    # held-out evaluation (kind greedy, pass or maj; k samples per prompt, 1 for greedy)
    Metric("eval_accuracy", "gauge", "Held-out accuracy: greedy, pass@k, maj@k", (*RUN_LABELS, "kind", "k")),
    # compute and cost
    Metric("tokens_per_second", "gauge", "Trained completion tokens per second of the last step's wall time (generation overlapped or not)"),
    Metric("gpu_utilization", "gauge", "GPU utilisation, 0..1 (NVML; absent where there is no GPU)", _GPU, source="gpu"),
    Metric("gpu_memory_used_bytes", "gauge", "GPU memory in use (NVML; absent where there is no GPU)", _GPU, source="gpu"),
    Metric("model_flops", "counter", "Model FLOPs of training (6 * params * tokens) and generation (2 * params * tokens)",
           (*RUN_LABELS, "phase")),
    Metric("mfu", "gauge", "Model FLOPs utilisation of the trainer, 0..1, against the GPUs' peak (absent on CPU)"),
    Metric("gpu_seconds", "counter", "GPU-seconds held by the run's pods (a local run: its processes)", source="operator",
           locally="trainer"),
    Metric("cost", "counter", "Cost of the GPU-seconds at spec.cost.pricePerGpuHour", (*RUN_LABELS, "currency"),
           source="operator", locally="trainer"),
    # the operator
    Metric("reconcile_seconds", "histogram", "Operator reconcile time", ("handler",), _SECONDS, source="operator"),
    Metric("reconcile_errors", "counter", "Operator reconcile failures", ("handler",), source="operator"),
    Metric("reconcile_conflicts", "counter", "Operator passes planned again because the run changed under them (HTTP 409)",
           ("handler",), source="operator"),
    Metric("runs", "gauge", "ReasoningRuns by phase", ("namespace", "phase"), source="operator"),
    Metric("run_phase", "gauge", "1 for a run's current phase (status.phase), 0 for the others", (*RUN_LABELS, "phase"),
           source="operator"),
    Metric("run_restarts", "gauge", "Gang restarts of a run, after failures and disruptions (status.restarts; only failures count against backoffLimit)",
           source="operator"),
)

BY_NAME = {m.name: m for m in DEFINITIONS}


def exported_by(source: Source) -> tuple[str, ...]:
    """The names of the metrics `source` exports."""
    return tuple(m.name for m in DEFINITIONS if m.source == source)


class _Whole:
    """The definitions' series as one collector that a scrape reads while no update is under way
    (`Metrics.update`). A scrape asking for some names only (`?name[]=`) comes through here too:
    the served registry maps each of those names to this collector."""

    def __init__(self, series: CollectorRegistry, updating: threading.Lock) -> None:
        self._series, self._updating = series, updating

    def describe(self):
        return list(self._series.collect())

    def collect(self):
        with self._updating:
            families = list(self._series.collect())
        return families


class Metrics:
    """prometheus-client objects for the definitions, in one registry: `metrics["reward"]`.

    `with metrics.update():` sets a group of series that a scrape sees whole: the trainer sets a
    step's series so, and a scrape waits until they are all set (otherwise it could read
    `zeroth_step` at s beside the token counters of step s+1, or the loss of step s-1). Collectors
    registered on `registry` beside them (NVML's, read at the scrape) are not read under the update,
    so a slow read of theirs never holds up a step. Not reentrant: nothing inside an update may read
    the registry."""

    def __init__(self, registry: CollectorRegistry | None = None, names: tuple[str, ...] | None = None):
        self.registry = registry or CollectorRegistry()
        self._updating = threading.Lock()
        series = CollectorRegistry()
        self._objects = {}
        for m in DEFINITIONS:
            if names is not None and m.name not in names:
                continue
            kwargs = {"registry": series, "labelnames": m.labels}
            if m.kind == "histogram":
                self._objects[m.name] = Histogram(m.full_name, m.help, buckets=m.buckets, **kwargs)
            elif m.kind == "counter":
                self._objects[m.name] = Counter(m.full_name, m.help, **kwargs)
            else:
                self._objects[m.name] = Gauge(m.full_name, m.help, **kwargs)
        self.registry.register(_Whole(series, self._updating))

    def update(self) -> threading.Lock:
        return self._updating

    def __getitem__(self, name: str) -> Counter | Gauge | Histogram:
        try:
            return self._objects[name]
        except KeyError:
            raise KeyError(f"unknown metric {name!r}; known: {sorted(self._objects)}") from None


def serve(registry: CollectorRegistry, ports: str | None, addr: str | None) -> int:
    """Serves `registry` at /metrics on the first free port of `ports` ("9400" or "9400-9403"; None:
    any free port) on `addr` (None: loopback); returns the port. OSError when every port is taken."""
    first, _, last = (ports or "0").partition("-")
    error: OSError | None = None
    for port in range(int(first), int(last or first) + 1):
        try:
            server, _ = start_http_server(port, addr=addr or "127.0.0.1", registry=registry)
        except OSError as e:
            error = e
            continue
        return server.server_port
    raise OSError(f"no free port for /metrics in {ports} on {addr}: {error}")


# ----------------------------------------------------------------------------------------- the table

SOURCE_WORDS = {"trainer": "trainer rank 0", "worker": "each rollout worker", "gpu": "each process holding GPUs",
                "operator": "the operator"}
SUFFIX = {"counter": "_total", "gauge": "", "histogram": "_bucket/_sum/_count"}
TABLE_START, TABLE_END = "<!-- metrics table: python -m zeroth.metrics -->", "<!-- end of the metrics table -->"


def markdown_table() -> str:
    """Every metric as a README table row: its exported name, kind, labels, who exports it, meaning."""
    rows = ["| metric | kind | labels | exported by | meaning |", "|---|---|---|---|---|"]
    for m in DEFINITIONS:
        name = m.full_name + (SUFFIX[m.kind] if m.kind == "counter" else "")
        by = SOURCE_WORDS[m.source] + (f"; {SOURCE_WORDS[m.locally]} in a local run" if m.locally else "")
        meaning = m.help.replace("|", "\\|")  # a pipe escaped, not ending the cell
        rows.append(f"| `{name}` | {m.kind} | {', '.join(m.labels)} | {by} | {meaning} |")
    return "\n".join(rows)


def write_table(readme: Path, check: bool) -> bool:
    """Puts the table between README's markers; with `check`, only says whether it is up to date."""
    text = readme.read_text()
    pattern = re.compile(re.escape(TABLE_START) + ".*?" + re.escape(TABLE_END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{readme}: no metrics table markers ({TABLE_START} ... {TABLE_END})")
    new = pattern.sub(lambda _: f"{TABLE_START}\n{markdown_table()}\n{TABLE_END}", text)
    if check:
        return new == text
    readme.write_text(new)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zeroth.metrics", description="writes README's table of metrics")
    parser.add_argument("--readme", type=Path, default=Path(__file__).resolve().parents[1] / "README.md")
    parser.add_argument("--check", action="store_true", help="fail if README's table differs (nothing written)")
    args = parser.parse_args(argv)
    if not write_table(args.readme, args.check):
        print(f"{args.readme}: the metrics table is out of date: run `make dashboards`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
