"""A local run's GPU time and cost: trainer rank 0 counts them where no operator does, a resumed
run goes on from its records, and `zeroth run` prints them at the end."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from tests.conftest import minimal_manifest
from zeroth import local, metrics, validation
from zeroth.rollout.worker import Sample
from zeroth.trainer.report import Reporter, local_gpus

RUN = {"run": "r", "namespace": "ns"}


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Status:
    """Stands for a StatusWriter: rank 0 of a run on a cluster."""

    def __init__(self):
        self.updates = []

    def update(self, force: bool = False, **fields):
        self.updates.append(fields)


def _run(price: float = 2.5, currency: str = "EUR"):
    manifest = minimal_manifest()
    manifest["spec"]["cost"] = {"pricePerGpuHour": price, "currency": currency}
    return validation.validate(manifest)


def _sample() -> Sample:
    return Sample(task_id="t", group=0, prompt_ids=[1, 1], completion_ids=[2, 2], logprobs=[-0.1, -0.1], completion="x",
                  reward=1.0, scores={"countdown": 1.0}, correct=True, truncated=False, version=0)


def _record(step: int) -> dict:
    return {"step": step, "weights_version": step, "reward_mean": 1.0, "accuracy": 1.0, "tokens_per_second": 10.0,
            "generated_tokens": 2, "trained_tokens": 2, "response_length_mean": 2.0, "step_seconds": 1.0,
            "generation_seconds": 0.25, "weight_sync_seconds": 0.25}


def _exported(reporter: Reporter, currency: str = "EUR") -> tuple[float | None, float | None]:
    get = reporter.metrics.registry.get_sample_value
    return get("zeroth_gpu_seconds_total", RUN), get("zeroth_cost_total", {**RUN, "currency": currency})


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_local_run_exports_the_gpu_seconds_its_gpus_held_and_their_cost(tmp_path):
    clock = Clock(1000.0)
    reporter = Reporter(tmp_path, "r", "ns", _run(price=2.5).spec, None, gpus=3, started=990.0, clock=clock)
    assert _exported(reporter) == (pytest.approx(30.0), pytest.approx(30.0 / 3600 * 2.5))  # 3 GPUs for 10 s
    clock.now = 1190.0  # 200 s since the start: 600 GPU-seconds, 1/6 GPU-hour at 2.5 EUR
    reporter.step(_record(1), [_sample()])
    assert _exported(reporter) == (pytest.approx(600.0), pytest.approx(2.5 / 6))
    record = _records(tmp_path)[-1]
    assert record["gpu_seconds"] == pytest.approx(600.0) and record["cost"] == pytest.approx(2.5 / 6)
    clock.now = 2190.0  # read at the scrape, not only at a step
    assert _exported(reporter) == (pytest.approx(3600.0), pytest.approx(2.5))


def test_the_final_evaluation_after_the_last_step_is_counted_in_the_records(tmp_path):
    clock = Clock(100.0)
    reporter = Reporter(tmp_path, "r", "ns", _run(price=3.6).spec, None, gpus=2, started=0.0, clock=clock)
    reporter.step(_record(4), [_sample()])  # the last step: 200 GPU-seconds
    clock.now = 400.0  # the final evaluation took 300 s more
    reporter.evaluation({"step": 4, "eval_greedy": 0.5, "eval_pass@k": 0.75, "eval_maj@k": 0.5, "eval_k": 4})
    assert _records(tmp_path)[-1]["gpu_seconds"] == pytest.approx(800.0)
    assert _records(tmp_path)[-1]["cost"] == pytest.approx(0.8)
    assert local.gpu_time(_run(price=3.6), tmp_path) == "GPU time 0.22 GPU-hours, cost 0.80 EUR"


def test_a_local_run_on_the_cpu_exports_zero_gpu_seconds(tmp_path):
    clock = Clock(50.0)
    reporter = Reporter(tmp_path, "r", "ns", _run(currency="USD").spec, None, gpus=0, started=0.0, clock=clock)
    reporter.step(_record(1), [_sample()])
    assert _exported(reporter, "USD") == (0.0, 0.0)  # present, and true: no GPU held
    assert _records(tmp_path)[-1]["gpu_seconds"] == 0.0


POD = {"ZEROTH_RUN": "r", "ZEROTH_NAMESPACE": "ns", "KUBERNETES_SERVICE_HOST": "10.0.0.1"}


def test_on_a_cluster_rank_0_leaves_gpu_seconds_and_cost_to_the_operator(tmp_path):
    """Two exporters of one run would double a dashboard's `sum by (namespace, run)`: in a run's pod
    no GPUs are counted, even where the status cannot be written (no StatusWriter, as off a cluster)."""
    assert local_gpus(4, 4, 8, environ=POD) is None
    assert local_gpus(4, 4, 8, environ={**POD, "ZEROTH_RUN": ""}) == 4  # not a run's pod: a local run
    gpus = local_gpus(4, 0, 8, environ=POD)
    reporter = Reporter(tmp_path, "r", "ns", _run().spec, None, status=Status(), gpus=gpus, started=0.0, clock=Clock(100.0))
    reporter.step(_record(1), [_sample()])
    assert _exported(reporter) == (None, None)
    assert not [f for f in reporter.metrics.registry.collect() if f.name in ("zeroth_gpu_seconds", "zeroth_cost")]
    assert "gpu_seconds" not in _records(tmp_path)[-1] and "cost" not in _records(tmp_path)[-1]


def test_a_resumed_run_goes_on_from_the_gpu_seconds_its_records_counted(tmp_path):
    spec = _run(price=3.6).spec
    clock = Clock(0.0)
    first = Reporter(tmp_path, "r", "ns", spec, None, gpus=2, started=0.0, clock=clock)
    clock.now = 100.0
    first.step(_record(1), [_sample()])  # 200 GPU-seconds
    clock.now = 150.0
    first.step(_record(2), [_sample()])  # 300; then the run stopped
    clock.now = 5000.0  # a later process: its own start, the first run's total before it
    again = Reporter(tmp_path, "r", "ns", spec, None, gpus=2, started=4990.0, clock=clock)
    # the counter is this process's own, from 0: were it 320, below what the first process's last
    # scrape may have read, Prometheus would take it for a reset and count the 320 again
    assert _exported(again) == (pytest.approx(20.0), pytest.approx(20.0 / 3600 * 3.6))
    clock.now = 5040.0
    again.step(_record(2), [_sample()])
    assert [r["gpu_seconds"] for r in _records(tmp_path)] == [pytest.approx(v) for v in (200.0, 300.0, 400.0)]
    assert _records(tmp_path)[-1]["cost"] == pytest.approx(0.4)


@pytest.mark.parametrize(("trainer", "rollout", "visible", "held"), [
    (0, 0, 0, 0),  # the CPU
    (0, 0, 8, 0),  # a GPU machine, a run on its CPU
    (1, 1, 1, 1),  # rank 0 and the one rollout actor share GPU 0
    (2, 1, 8, 2),
    (1, 4, 8, 4),  # the actors take GPUs 0-3, rank 0 trains on GPU 0
    (0, 2, 4, 2),
    (1, 2, 0, 0),  # asked for GPUs on a machine with none: the ranks train on the CPU, the actors never start
])
def test_the_gpus_a_local_run_holds(trainer, rollout, visible, held):
    assert local_gpus(trainer, rollout, visible, environ={}) == held


def _write(run_dir, *records, tail: str = "") -> None:
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_zeroth_run_prints_the_totals_of_the_last_record_that_counts_them(tmp_path):
    run = _run(price=2.5)
    assert local.gpu_time(run, tmp_path) is None  # no metrics.jsonl yet: nothing to say
    _write(tmp_path, {"step": 0, "eval_greedy": 0.5})
    assert local.gpu_time(run, tmp_path) is None  # a record, but no step's: nothing invented
    _write(tmp_path, {"step": 1, "gpu_seconds": 3600.0, "cost": 2.5}, {"step": 2, "gpu_seconds": 9000.0, "cost": 6.25},
           {"step": 2, "eval_greedy": 0.5}, tail='{"step": 3, "gpu_sec')  # the last step's eval, and a line cut short
    assert local.gpu_time(run, tmp_path) == "GPU time 2.50 GPU-hours, cost 6.25 EUR"
    out = io.StringIO()
    local._gpu_time(run, tmp_path, Console(file=out, width=200))
    assert out.getvalue() == "GPU time 2.50 GPU-hours, cost 6.25 EUR\n"


def test_zeroth_run_says_when_no_gpu_was_held_or_no_price_set(tmp_path):
    _write(tmp_path, {"step": 1, "gpu_seconds": 0.0, "cost": 0.0})
    assert local.gpu_time(_run(price=0.0, currency="USD"), tmp_path) == \
        "GPU time 0.00 GPU-hours (no GPU: this run used the CPU), cost 0.00 USD"
    _write(tmp_path, {"step": 1, "gpu_seconds": 1800.0, "cost": 0.0})
    assert local.gpu_time(_run(price=0.0, currency="USD"), tmp_path) == \
        "GPU time 0.50 GPU-hours (no price: set spec.cost.pricePerGpuHour), cost 0.00 USD"


def test_the_metrics_table_names_both_exporters_of_gpu_seconds_and_cost():
    rows = {line.split("|")[1].strip(): line.split("|")[4].strip() for line in metrics.markdown_table().splitlines()[2:]}
    for name in ("`zeroth_gpu_seconds_total`", "`zeroth_cost_total`"):
        assert rows[name] == "the operator; trainer rank 0 in a local run"
    assert rows["`zeroth_reconcile_errors_total`"] == "the operator"
    assert {"gpu_seconds", "cost"} <= set(metrics.exported_by("operator"))  # the operator's, on a cluster
    assert not {"gpu_seconds", "cost"} & set(metrics.exported_by("trainer"))
