"""The dashboards' panels of the histograms observed once a step (the trainer's, each rollout
worker's requests and their scoring), as Prometheus evaluates them
(`promtool test rules`), on a run whose steps are slower than Grafana's rate interval: each panel
has a value between two steps, not the gap (0 / 0) a window shorter than a step gives.

Needs helm and promtool (hack/build-cluster.sh, hack/build-prometheus.sh), no cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_alerts import helm, promtool, promtool_test, rules_file  # noqa: F401 (fixtures)
from zeroth import dashboards, metrics

SCRAPE = 30  # seconds: kube-prometheus-stack's default
RATE_INTERVAL = "2m"  # Grafana's $__rate_interval for that scrape interval: 4 scrapes
STEP_MINUTES = 10  # a step every 10 minutes, as a big model's GRPO step takes
STEPS = 4  # at minutes 10, 20, 30, 40
END_MINUTES = 60
OBSERVATIONS = 4  # each step observes each histogram 4 times, every observation 1.0
LABELS = ('namespace="ns"', 'run="r"')
STARTED_MINUTES = 2  # no series before the trainer starts; from then on, 0 until the first step


def per_step_histograms() -> list[metrics.Metric]:
    return [m for m in metrics.DEFINITIONS if m.kind == "histogram" and m.per_step]


def counts() -> str:
    """The cumulative count of observations at each scrape (`_`: no sample), as the processes export
    them: absent before the trainer starts, 0 from its start, OBSERVATIONS more at each step."""
    values = []
    for scrape in range(END_MINUTES * 60 // SCRAPE + 1):
        minute = scrape * SCRAPE / 60
        values.append("_" if minute < STARTED_MINUTES else str(OBSERVATIONS * min(STEPS, int(minute // STEP_MINUTES))))
    return " ".join(values)


def input_series() -> list[dict]:
    """Every per-step histogram's `_sum`, `_count` and `_bucket` series of one run, as the trainer
    and a worker export them (the reward's for verifier "all" and one verifier)."""
    counted = counts()
    none = " ".join(v if v == "_" else "0" for v in counted.split())  # a bucket below every observation
    out = []
    for m in per_step_histograms():
        labels = (*LABELS, 'worker="0"') if "worker" in m.labels else LABELS
        verifiers = ("all", "countdown") if m.name == "reward" else ("countdown",)  # "all": the reward's sum
        label_sets = [(*labels, f'verifier="{v}"') for v in verifiers] if "verifier" in m.labels else [labels]
        for labels in label_sets:
            def line(suffix: str, *extra: str) -> str:
                return f"{m.full_name}{suffix}{{{', '.join((*labels, *extra))}}}"
            out.append({"series": line("_sum"), "values": counted})  # every observation is 1.0
            out.append({"series": line("_count"), "values": counted})
            for le in (*m.buckets, "+Inf"):
                every = le == "+Inf" or le >= 1.0
                out.append({"series": line("_bucket", f'le="{le}"'), "values": counted if every else none})
    return out


def per_step_queries() -> list[dashboards.PanelQuery]:
    names = [m.full_name for m in per_step_histograms()]
    return [q for q in dashboards.panel_queries() if any(name in q.expr for name in names)]


def test_every_per_step_histogram_has_a_panel():
    shown = {name for q in per_step_queries() for name in (m.full_name for m in per_step_histograms()) if name in q.expr}
    assert shown == {m.full_name for m in per_step_histograms()}


@pytest.mark.parametrize(("step", "minutes_after"), [(1, 5), (1, 9), (3, 1), (3, 5), (3, 9)])
def test_per_step_panels_have_a_value_between_slow_steps(helm: Path, promtool: Path, tmp_path: Path,  # noqa: F811
                                                         step: int, minutes_after: int):
    """Minutes after the first and the third step, every per-step panel query, with Grafana's
    variables as a 30 s scrape and the dashboard's default `$step_window` give them, returns a
    value (NaN and no series both fail): a mean of exactly 1 (every observation is 1), a quantile
    above 0. After the first step only because the series were at 0 before it."""
    eval_time = f"{step * STEP_MINUTES + minutes_after}m"
    cases = []
    for query in per_step_queries():
        expr = query.promql(namespace="ns", run="r", rate_interval=RATE_INTERVAL)
        if expr.startswith("histogram_quantile("):
            check = f"count(({expr}) > 0) or vector(0)"
        else:
            check = f"count(abs(({expr}) - 1) < 1e-9) or vector(0)"
        cases.append({"expr": check, "eval_time": eval_time, "exp_samples": [{"labels": "{}", "value": 1}]})
    assert cases
    test = {"interval": f"{SCRAPE}s", "input_series": input_series(), "promql_expr_test": cases}
    proc = promtool_test(promtool, rules_file(helm, tmp_path), [test])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
