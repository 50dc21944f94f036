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
# by file name, known without generating: a generator that raises fails the tests, not their collection
FILES = sorted(f"{name}.json" for name in dashboards.DASHBOARDS)


@pytest.fixture(scope="module")
def boards() -> dict[str, dict]:
    return dashboards.dashboards()


def exported_as(series: str) -> metrics.Metric | None:
    """The metric whose export holds this series name (prometheus-client's suffix for its kind)."""
    found = [m for m in metrics.DEFINITIONS for suffix in EXPORTED_SUFFIXES[m.kind] if m.full_name + suffix == series]
    assert len(found) <= 1, f"{series}: more than one metric exports it"
    return found[0] if found else None


def variable_queries(board: dict) -> dict[str, str]:
    return {v["name"]: v["query"] for v in board["templating"]["list"] if v["type"] == "query"}


def expressions(board: dict) -> list[tuple[str, str]]:
    """(where, expression) of each panel query and variable query of a dashboard."""
    panels = [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", ())]
    return panels + [(f"${name}", query) for name, query in variable_queries(board).items()]


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


@pytest.mark.parametrize("file", FILES)
def test_every_query_names_series_zeroth_exports(boards: dict[str, dict], file: str):
    wrong = []
    for where, expr in expressions(boards[file]):
        names = [series for series, _ in SELECTOR.findall(expr)]
        if not names:
            wrong.append(f"{where}: no zeroth_ metric in {expr!r}")
        wrong += [f"{where}: zeroth/metrics.py exports no series {s} (a metric's name plus its kind's suffix)"
                  for s in names if exported_as(s) is None]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("file", FILES)
def test_run_scoped_queries_filter_by_namespace_and_run(boards: dict[str, dict], file: str):
    unfiltered = []
    for where, expr in expressions(boards[file]):
        if where.startswith("$"):
            continue  # the variables' own queries list the namespaces and runs to choose from
        for series, braces in SELECTOR.findall(expr):
            metric = exported_as(series)
            labels = metric.labels if metric else ()
            wanted = [f for f, label in zip(RUN_FILTERS, ("namespace", "run"), strict=True) if label in labels]
            unfiltered += [f"{where}: {series} lacks {f}" for f in wanted if f not in braces]
    assert not unfiltered, "\n".join(unfiltered)


@pytest.mark.parametrize("file", FILES)
def test_each_dashboard_picks_namespace_and_run(boards: dict[str, dict], file: str):
    board = boards[file]
    queries = variable_queries(board)
    assert {"namespace", "run"} <= queries.keys()
    assert re.fullmatch(r"label_values\(zeroth_[a-z0-9_]+, namespace\)", queries["namespace"])
    assert re.fullmatch(r'label_values\(zeroth_[a-z0-9_]+\{namespace=~"\$namespace"\}, run\)', queries["run"])
    assert board["uid"] == f"zeroth-{file.removesuffix('.json')}"  # stable: links and bookmarks survive


@pytest.mark.parametrize("file", FILES)
def test_every_variable_a_query_uses_is_on_its_dashboard(boards: dict[str, dict], file: str):
    """A variable missing from the dashboard reaches Prometheus as `$name`, a syntax error; the
    histograms observed once a step look back over `$step_window` (Grafana's rate interval can be
    shorter than a step), and nothing else does."""
    board = boards[file]
    defined = {v["name"]: v for v in board["templating"]["list"]}
    used = {name for _, expr in expressions(board) for name in re.findall(r"\$\{?(\w+)", expr) if not name.startswith("__")}
    assert used <= defined.keys(), (file, used - defined.keys())
    for panel in (p for p in board["panels"] if p["type"] != "row"):
        for target in panel["targets"]:
            for name in re.findall(r"\b(zeroth_[a-z0-9_]+?)(?:_bucket|_sum|_count)\b", target["expr"]):
                per_step = metrics.BY_NAME[name.removeprefix(metrics.PREFIX)].per_step
                windows = set(re.findall(r"\[(\$\w+)\]", target["expr"]))
                assert windows == ({"$step_window"} if per_step else {"$__rate_interval"}), (file, panel["title"], name)
    if "step_window" in defined:
        window = defined["step_window"]
        assert window["type"] == "interval" and "step_window" in used
        assert window["query"].split(",") == [o["value"] for o in window["options"]]
        assert window["current"]["value"] in window["query"].split(",")


def test_panels_have_titles_units_and_fit_a_config_map(boards: dict[str, dict]):
    for file, board in boards.items():
        panels = [p for p in board["panels"] if p["type"] != "row"]
        assert panels, file
        for panel in panels:
            assert panel["title"] and panel["fieldConfig"]["defaults"]["unit"], (file, panel.get("title"))
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (file, panel["title"])
        # a ConfigMap holds at most 1 MiB
        assert len(json.dumps(board, indent=2)) < 256 * 1024, file


def test_panel_queries_become_plain_promql():
    queries = dashboards.panel_queries()
    assert {q.dashboard for q in queries} == set(dashboards.DASHBOARDS)
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
