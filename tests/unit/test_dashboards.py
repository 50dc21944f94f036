"""The chart's Grafana dashboards: committed as generated, every query on a series that
zeroth/metrics.py really exports, each run's metrics filtered to the chosen namespace and run."""

from __future__ import annotations

import json
import re

import pytest

from zeroth import dashboards, metrics, promql

# what prometheus-client appends to each kind's name (tests/unit/test_metrics.py checks it exports so)
EXPORTED_SUFFIXES = {"gauge": ("",), "counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
SELECTOR = re.compile(r"\b(zeroth_[a-z0-9_]+)(\{[^}]*\})?")
RUN_FILTERS = ('namespace=~"$namespace"', 'run=~"$run"')
BOARDS = dashboards.dashboards()


def exported_as(series: str) -> tuple[metrics.Metric, str]:
    """The metric a series name belongs to, and its suffix, as prometheus-client exports them."""
    found = [(m, suffix) for m in metrics.DEFINITIONS for suffix in EXPORTED_SUFFIXES[m.kind]
             if m.full_name + suffix == series]
    assert len(found) == 1, f"{series}: {'no' if not found else 'more than one'} metric of zeroth/metrics.py exports it"
    return found[0]


def variable_queries(board: dict) -> dict[str, str]:
    return {v["name"]: v["query"] for v in board["templating"]["list"] if v["type"] == "query"}


def panel_expressions() -> list:
    return [pytest.param(f"{q.dashboard}: {q.panel}", q.expr, id=f"{q.dashboard}: {q.panel}") for q in dashboards.panel_queries()]


def every_expression() -> list:
    """(where, expression) of every panel query and every variable query."""
    variables = [pytest.param(f"{file}: ${name}", query, id=f"{file}: ${name}")
                 for file, board in BOARDS.items() for name, query in variable_queries(board).items()]
    return panel_expressions() + variables


def test_committed_dashboards_are_what_the_generator_makes():
    texts = dashboards.render()
    for file, text in texts.items():
        path = dashboards.OUT / file
        assert path.exists() and path.read_text() == text, f"{path} drifted from zeroth/dashboards.py: run `make dashboards`"
    assert sorted(p.name for p in dashboards.OUT.glob("*.json")) == sorted(texts), \
        "charts/zeroth/dashboards/ holds a file the generator does not make: run `make dashboards`"


def test_check_names_each_file_that_drifted(tmp_path):
    dashboards.write(tmp_path)
    assert dashboards.drift(tmp_path) == []
    overview = tmp_path / "overview.json"
    overview.write_text(overview.read_text().replace("zeroth_step", "zeroth_steps"))
    (tmp_path / "operator.json").unlink()
    (tmp_path / "retired.json").write_text("{}\n")
    assert dashboards.drift(tmp_path) == ["operator.json", "overview.json", "retired.json"]
    dashboards.write(tmp_path)  # and writing puts it right, the retired dashboard removed
    assert dashboards.drift(tmp_path) == [] and not (tmp_path / "retired.json").exists()


def test_check_passes_on_the_committed_files(capsys):
    assert dashboards.main(["--check"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize(("where", "expr"), every_expression())
def test_every_query_names_series_zeroth_exports(where: str, expr: str):
    names = [series for series, _ in SELECTOR.findall(expr)]
    assert names, f"{where}: no zeroth_ metric in {expr!r}"
    for series in names:
        exported_as(series)


@pytest.mark.parametrize(("where", "expr"), panel_expressions())
def test_run_scoped_queries_filter_by_namespace_and_run(where: str, expr: str):
    for series, braces in SELECTOR.findall(expr):
        labels = exported_as(series)[0].labels
        wanted = [f for f, label in zip(RUN_FILTERS, ("namespace", "run"), strict=True) if label in labels]
        missing = [f for f in wanted if f not in braces]
        assert not missing, f"{where}: {series} carries {labels} but is not filtered by {missing} in {expr!r}"


@pytest.mark.parametrize("file", sorted(BOARDS))
def test_each_dashboard_picks_namespace_and_run(file: str):
    board = BOARDS[file]
    queries = variable_queries(board)
    assert {"namespace", "run"} <= queries.keys()
    assert re.fullmatch(r"label_values\(zeroth_[a-z0-9_]+, namespace\)", queries["namespace"])
    assert re.fullmatch(r'label_values\(zeroth_[a-z0-9_]+\{namespace=~"\$namespace"\}, run\)', queries["run"])
    assert board["uid"] == f"zeroth-{file.removesuffix('.json')}"  # stable: links and bookmarks survive


def test_panels_have_titles_units_and_fit_a_config_map():
    for file, board in BOARDS.items():
        panels = [p for p in board["panels"] if p["type"] != "row"]
        assert panels, file
        for panel in panels:
            assert panel["title"] and panel["fieldConfig"]["defaults"]["unit"], (file, panel.get("title"))
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (file, panel["title"])
        # a ConfigMap holds at most 1 MiB
        assert len(json.dumps(board, indent=2)) < 256 * 1024, file


def test_panel_queries_become_plain_promql():
    queries = dashboards.panel_queries()
    assert {q.dashboard for q in queries} == {f.removesuffix(".json") for f in BOARDS}
    for q in queries:
        expr = q.promql(namespace="team-a", run="countdown")
        assert "$" not in expr, expr
        assert ('run=~"countdown"' in expr) == ("$run" in q.expr), expr
    with pytest.raises(KeyError, match="interval"):
        promql.substitute("rate(zeroth_loss[$interval])")


def test_an_unknown_metric_or_suffix_raises():
    with pytest.raises(KeyError, match="unknown metric 'losss'.*'loss'"):
        promql.series("losss")
    with pytest.raises(ValueError, match="gauge"):
        promql.series("loss", "_total")
    with pytest.raises(ValueError, match="histogram"):
        promql.series("reward")  # a histogram has three series: which one?
    assert promql.series("generated_tokens") == "zeroth_generated_tokens_total"
    assert promql.series("reward", "_bucket") == "zeroth_reward_bucket"


def test_a_metric_renamed_in_zeroth_metrics_breaks_generation(monkeypatch):
    monkeypatch.setitem(metrics.BY_NAME, "policy_loss", metrics.BY_NAME["loss"])
    monkeypatch.delitem(metrics.BY_NAME, "loss")
    with pytest.raises(KeyError, match="unknown metric 'loss'"):
        dashboards.dashboards()
