"""The chart's alert rules as Prometheus runs them: rendered by helm, checked by promtool, each alert
shown to fire on synthetic series that should page and to stay quiet on ones that should not
(`promtool test rules`), the PrometheusRule checked against the Prometheus Operator's CRD.

Needs helm and promtool (hack/build-cluster.sh, hack/build-prometheus.sh), no cluster."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import ROOT
from tests.integration.test_chart import CHART, KUBE_VERSION
from zeroth import alerts, metrics, promql

SERVED = ("--api-versions", "monitoring.coreos.com/v1/PrometheusRule")
RUN = {"namespace": "ns", "run": "r"}


def built(script: str) -> Path:
    """The bin directory a hack/ build script prints, building it if it is not cached yet."""
    proc = subprocess.run([str(ROOT / "hack" / script)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"hack/{script} failed ({proc.returncode}), so the alert rules cannot be tested:\n{proc.stderr}")
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def helm() -> Path:
    return built("build-cluster.sh") / "helm"


@pytest.fixture(scope="session")
def promtool() -> Path:
    return built("build-prometheus.sh") / "promtool"


def render(helm: Path, *args: str) -> list[dict]:
    out = subprocess.run([str(helm), "template", "zeroth", str(CHART), "-n", "zeroth-system", "--kube-version",
                          KUBE_VERSION, *args], check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def prometheus_rule(helm: Path, *args: str) -> dict:
    (rule,) = [d for d in render(helm, *SERVED, *args) if d["kind"] == "PrometheusRule"]
    return rule


def promtool_run(promtool: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(promtool), *args], capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------------------ the object


def test_rendered_only_where_the_api_is_served_and_alerts_are_enabled(helm: Path):
    assert not [d for d in render(helm) if d["kind"] == "PrometheusRule"]
    assert not [d for d in render(helm, *SERVED, "--set", "alerts.enabled=false") if d["kind"] == "PrometheusRule"]
    rule = prometheus_rule(helm, "--set", "alerts.labels.release=prometheus")
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["metadata"]["namespace"] == "zeroth-system"
    assert rule["metadata"]["labels"]["release"] == "prometheus"  # what kube-prometheus-stack selects rules by
    assert [r["alert"] for r in rule["spec"]["groups"][0]["rules"]] == [a.name for a in alerts.alerts()]


def unknown_fields(obj, schema: dict, path: str = "") -> list[str]:
    """Fields the API server would prune from `obj` without a word: those its structural schema lacks."""
    if isinstance(obj, list):
        return [f for i, item in enumerate(obj) for f in unknown_fields(item, schema.get("items", {}), f"{path}[{i}]")]
    if not isinstance(obj, dict) or "properties" not in schema:
        return []
    found = []
    for key, value in obj.items():
        if key in schema["properties"]:
            found += unknown_fields(value, schema["properties"][key], f"{path}.{key}")
        else:
            found.append(f"{path}.{key}")
    return found


def test_the_prometheus_rule_meets_the_prometheus_operators_crd(helm: Path):
    path = subprocess.run([str(ROOT / "hack" / "monitoring-crds.sh"), "prometheusrules"], check=True,
                          capture_output=True, text=True).stdout.strip()
    crd = yaml.safe_load(Path(path).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = version["schema"]["openAPIV3Schema"]
    rule = prometheus_rule(helm)
    # OpenAPI v3.0's schemas are JSON Schema draft 4's; not checked as a schema, for Go's regexes
    # (`^(?i)...`) are not all Python's
    jsonschema.Draft4Validator(schema).validate(rule)  # `for` a duration, rules' required fields, string labels
    assert not unknown_fields(rule, schema)
    assert crd["spec"]["group"] == "monitoring.coreos.com" and crd["spec"]["names"]["kind"] == rule["kind"]


# --------------------------------------------------------------------------------- promtool


def rules_file(helm: Path, tmp_path: Path, *args: str, keep_annotations: bool = False) -> Path:
    """The PrometheusRule's spec as a Prometheus rule file. Unless `keep_annotations`, each rule's
    annotations become the run's name alone: the cases below check expressions, `for` and labels,
    and promtool compares annotations whole (the real ones are checked by `promtool check rules`
    and by the cases that keep them)."""
    spec = prometheus_rule(helm, *args)["spec"]
    if not keep_annotations:
        for rule in spec["groups"][0]["rules"]:
            rule["annotations"] = {"run": "{{ $labels.namespace }}/{{ $labels.run }}"}
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_promtool_check_rules_passes(helm: Path, promtool: Path, tmp_path: Path):
    proc = promtool_run(promtool, "check", "rules", str(rules_file(helm, tmp_path, keep_annotations=True)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alerts.alerts())} rules found" in proc.stdout


def with_run(series: str) -> str:
    """`name` or `name{labels}` with the run's labels added."""
    name, _, labels = series.removesuffix("}").partition("{")
    run = ",".join(f'{k}="{v}"' for k, v in RUN.items())
    return f"{name}{{{','.join(filter(None, [run, labels]))}}}"


@dataclass
class Case:
    """Synthetic series (1 sample a minute; promtool's expanding notation) and whether the alert
    fires at `at` minutes: `labels` of the alert it should raise besides the run's, or None."""
    alert: str
    why: str
    series: dict[str, str]
    at: int
    labels: dict[str, str] | None = None

    def test(self) -> dict:
        inputs = [{"series": with_run(name), "values": values} for name, values in self.series.items()]
        severity = next(a.severity for a in alerts.alerts() if a.name == self.alert)
        expected = [] if self.labels is None else [{
            "exp_labels": {**RUN, **self.labels, "severity": severity},
            "exp_annotations": {"run": f"{RUN['namespace']}/{RUN['run']}"}}]
        return {"interval": "1m", "input_series": inputs,
                "alert_rule_test": [{"eval_time": f"{self.at}m", "alertname": self.alert, "exp_alerts": expected}]}


FIRES: dict[str, str] = {}  # marks a firing case's labels: the run's alone
STEP_STUCK = {"zeroth_step": "0+1x10 10x40", "zeroth_max_steps": "100x50"}  # no step after minute 10
REWARD = {"count": 'zeroth_reward_count{verifier="all"}', "sum": 'zeroth_reward_sum{verifier="all"}'}
SCORED = 'zeroth_verifier_seconds_count{verifier="countdown"}'
V = {"verifier": "countdown"}

CASES = [
    # defaults: noProgressMinutes 15 (for 1m)
    Case("ZerothRunNoProgress", "no step for 20 minutes", STEP_STUCK, 30, FIRES),
    Case("ZerothRunNoProgress", "the last step 10 minutes ago", STEP_STUCK, 20),
    Case("ZerothRunNoProgress", "a step a minute", {"zeroth_step": "0+1x50", "zeroth_max_steps": "100x50"}, 40),
    Case("ZerothRunNoProgress", "finished: at max_steps", {"zeroth_step": "0+1x10 10x40", "zeroth_max_steps": "10x50"}, 30),
    Case("ZerothRunNoProgress", "younger than the window, no step yet", {"zeroth_step": "0x10", "zeroth_max_steps": "100x10"}, 10),
    # the trainer exports step 0 from its start: one stuck before its first step (loading, the first sync)
    Case("ZerothRunNoProgress", "stuck before its first step for 30 minutes", {"zeroth_step": "0x30", "zeroth_max_steps": "100x30"},
         30, FIRES),
    # defaults: mean reward over 30m below 0.5 of its best over 360m, a best above 0.1 (for 5m)
    Case("ZerothRewardCollapse", "mean reward 0.8, then 0.2 from minute 200",
         {REWARD["count"]: "0+10x300", REWARD["sum"]: "0+8x200 1600+2x100"}, 260, FIRES),
    Case("ZerothRewardCollapse", "mean reward 0.8 throughout", {REWARD["count"]: "0+10x300", REWARD["sum"]: "0+8x300"}, 260),
    Case("ZerothRewardCollapse", "0.05 then 0.01: never above rewardMinBest",
         {REWARD["count"]: "0+10x300", REWARD["sum"]: "0+0.5x200 100+0.1x100"}, 260),
    Case("ZerothRewardCollapse", "0.8 then 0.6: not below half the best",
         {REWARD["count"]: "0+10x300", REWARD["sum"]: "0+8x200 1600+6x100"}, 260),
    # defaults: above 5% of a verifier's samples over 10m (for 5m)
    Case("ZerothVerifierErrors", "20% errors from minute 20",
         {SCORED: "0+10x60", 'zeroth_verifier_errors_total{verifier="countdown"}': "0x20 0+2x40"}, 40, V),
    Case("ZerothVerifierErrors", "1% errors", {SCORED: "0+10x60", 'zeroth_verifier_errors_total{verifier="countdown"}': "0+0.1x60"}, 40),
    Case("ZerothVerifierErrors", "timeouts are not errors",
         {SCORED: "0+10x60", 'zeroth_verifier_errors_total{verifier="countdown"}': "0x60",
          'zeroth_verifier_timeouts_total{verifier="countdown"}': "0+5x60"}, 40),
    Case("ZerothVerifierTimeouts", "half the samples time out from minute 20",
         {SCORED: "0+10x60", 'zeroth_verifier_timeouts_total{verifier="countdown"}': "0x20 0+5x40"}, 40, V),
    Case("ZerothVerifierTimeouts", "1% time out",
         {SCORED: "0+10x60", 'zeroth_verifier_timeouts_total{verifier="countdown"}': "0+0.1x60"}, 40),
    # defaults: a restart within 30m (for 0m)
    Case("ZerothGangRestarts", "restarted at minute 11", {"zeroth_run_restarts": "0x10 1x40"}, 20, FIRES),
    Case("ZerothGangRestarts", "the restart 39 minutes ago", {"zeroth_run_restarts": "0x10 1x40"}, 50),
    Case("ZerothGangRestarts", "never restarted", {"zeroth_run_restarts": "0x50"}, 20),
    Case("ZerothGangRestarts", "the run deleted and created again (3 to 0)", {"zeroth_run_restarts": "3x10 0x40"}, 20),
    # defaults: mismatch above 0.1 for 10m
    Case("ZerothLogprobMismatch", "0.3 from minute 11", {"zeroth_logprob_mismatch": "0.05x10 0.3x30"}, 25, FIRES),
    Case("ZerothLogprobMismatch", "0.3 for 7 minutes only", {"zeroth_logprob_mismatch": "0.05x10 0.3x30"}, 18),
    Case("ZerothLogprobMismatch", "0.05 throughout", {"zeroth_logprob_mismatch": "0.05x40"}, 25),
    # defaults: Pending for 30m
    Case("ZerothRunPending", "Pending for 40 minutes", {'zeroth_run_phase{phase="Pending"}': "1x60"}, 40, {"phase": "Pending"}),
    Case("ZerothRunPending", "Pending for 25 minutes so far", {'zeroth_run_phase{phase="Pending"}': "1x60"}, 25),
    Case("ZerothRunPending", "Pending for 20 minutes, then Running",
         {'zeroth_run_phase{phase="Pending"}': "1x20 0x40", 'zeroth_run_phase{phase="Running"}': "0x20 1x40"}, 40),
]


def promtool_test(promtool: Path, rules: Path, tests: list[dict]) -> subprocess.CompletedProcess:
    """`promtool test rules` on a unit-test file of `tests` next to `rules`."""
    path = rules.with_name("tests.yaml")
    path.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": tests}))
    return promtool_run(promtool, "test", "rules", str(path))


def test_every_alert_has_a_case_that_fires_and_one_that_does_not():
    for alert in alerts.alerts():
        outcomes = {c.labels is not None for c in CASES if c.alert == alert.name}
        assert outcomes == {True, False}, alert.name


@pytest.mark.parametrize("alert", [a.name for a in alerts.alerts()])
def test_promtool_cases(helm: Path, promtool: Path, tmp_path: Path, alert: str):
    cases = [c for c in CASES if c.alert == alert]
    proc = promtool_test(promtool, rules_file(helm, tmp_path), [c.test() for c in cases])
    assert proc.returncode == 0, "\n".join(f"{c.why} at {c.at}m: {'fires' if c.labels is not None else 'quiet'}"
                                           for c in cases) + "\n" + proc.stdout + proc.stderr


def test_the_annotations_name_the_run(helm: Path, promtool: Path, tmp_path: Path):
    """The real annotations, Prometheus's templates through Helm's tpl, for an alert that fires."""
    test = Case("ZerothRunPending", "Pending", {'zeroth_run_phase{phase="Pending"}': "1x60"}, 40, {"phase": "Pending"}).test()
    test["alert_rule_test"][0]["exp_alerts"][0]["exp_annotations"] = {
        "summary": "Run ns/r is still Pending",
        "description": "Run ns/r has been Pending for 30 minutes: its pods are not scheduled (no GPUs free, a queue "
                       "not admitting it, or an image that does not pull)."}
    proc = promtool_test(promtool, rules_file(helm, tmp_path, keep_annotations=True), [test])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_values_reach_the_rules(helm: Path, promtool: Path, tmp_path: Path):
    """noProgressMinutes=5: the rendered window changes, and a run 7 minutes past its last step,
    quiet under the default 15, now fires."""
    def no_progress(*args: str) -> dict:
        (group,) = prometheus_rule(helm, *args)["spec"]["groups"]
        return next(r for r in group["rules"] if r["alert"] == "ZerothRunNoProgress")
    assert "changes(zeroth_step[15m])" in no_progress()["expr"]
    assert "changes(zeroth_step[5m])" in no_progress("--set", "alerts.noProgressMinutes=5")["expr"]
    assert no_progress("--set", "alerts.pendingMinutes=5")["expr"] == no_progress()["expr"]
    # a decimal through --set (which passes it as a string) reaches its rule as a number
    (group,) = prometheus_rule(helm, "--set", "alerts.logprobMismatchMax=0.25")["spec"]["groups"]
    assert "zeroth_logprob_mismatch > 0.25" in [r["expr"] for r in group["rules"]]
    seven_minutes = Case("ZerothRunNoProgress", "the last step 7 minutes ago", STEP_STUCK, 17)
    assert promtool_test(promtool, rules_file(helm, tmp_path), [seven_minutes.test()]).returncode == 0
    seven_minutes.labels = FIRES
    proc = promtool_test(promtool, rules_file(helm, tmp_path, "--set", "alerts.noProgressMinutes=5"), [seven_minutes.test()])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("staleness", [0, 1, 2])
def test_the_staleness_buckets_give_prometheus_quantiles_the_whole_staleness(helm: Path, promtool: Path,
                                                                            tmp_path: Path, staleness: int):
    """Staleness is a whole number: Prometheus' histogram_quantile interpolates within a bucket, so
    with the metric's own buckets a run whose samples are all `staleness` versions old must read
    that (within 0.01) as its median and p95, not a fraction below it."""
    buckets = metrics.BY_NAME["rollout_staleness"].buckets
    bucket = promql.series("rollout_staleness", "_bucket")
    series = {f'{bucket}{{le="{le}"}}': ("0+10x20" if staleness <= le else "0x20") for le in buckets}
    series[f'{bucket}{{le="+Inf"}}'] = "0+10x20"
    expr = lambda q: f"abs(histogram_quantile({q}, sum by (le) (rate({bucket}[5m]))) - {staleness}) <= bool 0.01"  # noqa: E731
    test = {"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series.items()],
            "promql_expr_test": [{"expr": expr(q), "eval_time": "10m", "exp_samples": [{"labels": "{}", "value": 1}]}
                                 for q in (0.5, 0.95)]}
    proc = promtool_test(promtool, rules_file(helm, tmp_path), [test])
    assert proc.returncode == 0, proc.stdout + proc.stderr
