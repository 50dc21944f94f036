"""The alert rules: the chart's file is the generator's output, every series they query is a metric of
zeroth.metrics under the name its kind exports, and every threshold is a chart value."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from zeroth import alerts, metrics

CHART = alerts.PATH.parents[1]
ALERTS = ("ZerothRunNoProgress", "ZerothRewardCollapse", "ZerothVerifierErrors", "ZerothVerifierTimeouts",
          "ZerothGangRestarts", "ZerothLogprobMismatch", "ZerothRunPending")
_EXPORTED = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def rules() -> list[dict]:
    (group,) = yaml.safe_load(alerts.PATH.read_text())["groups"]
    return group["rules"]


def test_the_chart_file_is_the_generators_output():
    assert alerts.PATH.read_text() == alerts.render(), f"{alerts.PATH} is out of date: run `make alerts`"
    assert alerts.main(["--check"]) == 0


def test_check_fails_on_drift(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "alerts.yaml"
    stale.write_text(alerts.render().replace("> {{ .Values.alerts.logprobMismatchMax }}", "> 1"))
    monkeypatch.setattr(alerts, "PATH", stale)
    assert alerts.main(["--check"]) == 1
    assert "make alerts" in capsys.readouterr().err


def exported(name: str) -> metrics.Metric | None:
    """The definition a series name belongs to, if the name is one its kind exports."""
    for m in metrics.DEFINITIONS:
        if name.startswith(m.full_name) and name[len(m.full_name):] in _EXPORTED[m.kind]:
            return m
    return None


def test_every_series_in_every_rule_is_a_defined_metric_under_its_exported_name():
    for rule in rules():
        names = set(re.findall(r"\bzeroth_[a-z0-9_]+", rule["expr"]))
        assert names, rule["alert"]
        for name in names:
            assert exported(name), f"{rule['alert']} queries {name}, which zeroth.metrics does not export"


def test_series_names_each_kind_as_prometheus_stores_it():
    assert alerts.series("step") == "zeroth_step"
    assert alerts.series("verifier_errors") == "zeroth_verifier_errors_total"
    assert alerts.series("reward", "count", verifier="all") == 'zeroth_reward_count{verifier="all"}'


@pytest.mark.parametrize(("call", "error", "names"), [
    (lambda: alerts.series("stepz"), KeyError, "step"),  # unknown: the known ones listed
    (lambda: alerts.series("reward"), ValueError, "count"),  # a histogram needs its part
    (lambda: alerts.series("step", "sum"), ValueError, "sum"),  # a gauge has none
    (lambda: alerts.series("step", verifier="all"), ValueError, "verifier"),  # a label it does not carry
])
def test_series_refuses_what_no_exporter_writes(call, error, names: str):
    with pytest.raises(error, match=names):
        call()


def test_the_alerts_and_what_each_carries():
    assert tuple(r["alert"] for r in rules()) == ALERTS
    for rule in rules():
        assert re.fullmatch(r"[0-9]+m|\{\{ \.Values\.alerts\.[a-zA-Z]+ \}\}m", rule["for"]), rule
        assert rule["labels"]["severity"] in ("warning", "critical"), rule
        assert set(rule["annotations"]) == {"summary", "description"}, rule
        for text in rule["annotations"].values():
            # Prometheus's templates, escaped from Helm's tpl
            assert "{{`{{ $labels.namespace }}`}}/{{`{{ $labels.run }}`}}" in text, rule["alert"]


def test_every_threshold_is_a_chart_value_with_a_default_and_a_schema():
    used = set(re.findall(r"\{\{ \.Values\.alerts\.([a-zA-Z]+) \}\}", alerts.PATH.read_text()))
    values = yaml.safe_load((CHART / "values.yaml").read_text())["alerts"]
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["alerts"]
    assert set(values) == used | {"enabled", "labels"}
    assert set(schema["properties"]) == set(values)
    assert schema["additionalProperties"] is False
