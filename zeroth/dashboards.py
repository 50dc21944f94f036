"""Zeroth's Grafana dashboards as code: built with Grafana's own SDK (grafana-foundation-sdk), every
query from `zeroth.promql`, so each metric name comes from `zeroth.metrics`.

`python -m zeroth.dashboards` (`make dashboards`) writes them to charts/zeroth/dashboards/, which the
chart ships as ConfigMaps for Grafana's dashboard sidecar; `--check` fails on drift between the two.
Dev and test time only: the SDK is in the `test` extra, and nothing deployed imports this module.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (BigValueGraphMode, BigValueTextMode, LegendDisplayMode, LegendPlacement,
                                                  SortOrder, TooltipDisplayMode)
from grafana_foundation_sdk.models.dashboard import (DashboardCursorSync, DataSourceRef, VariableOption, VariableRefresh,
                                                     VariableSort)

from zeroth import promql
from zeroth.promql import RUN, gauge, increase, mean, quantile, rate

OUT = Path(__file__).resolve().parents[1] / "charts" / "zeroth" / "dashboards"
# one Prometheus chosen on the dashboard (the `datasource` variable): no instance's uid is baked in
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
GRID_WIDTH = 24

# Grafana's unit ids
SECONDS, FRACTION, BYTES, BYTES_PER_SECOND, COUNT = "s", "percentunit", "bytes", "Bps", "short"

Panel = timeseries.Panel | stat.Panel


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class PanelQuery:
    """One panel's query as shipped: what a test sends to a real Prometheus."""

    dashboard: str  # the file name without .json
    panel: str
    expr: str

    def promql(self, **values: str) -> str:
        """The expression with Grafana's variables filled in (`promql.substitute`'s defaults: every
        namespace and run)."""
        return promql.substitute(self.expr, **values)


def legend(by: tuple[str, ...] = RUN, what: str = "") -> str:
    """`{{namespace}}/{{run}}`-style legend of a query's `by` labels, then `what` it shows."""
    return " ".join(filter(None, ["/".join(f"{{{{{label}}}}}" for label in by), what]))


def q(expr: str, by: tuple[str, ...] = RUN, what: str = "") -> Query:
    return Query(expr, legend(by, what))


def _targets(queries: tuple[Query, ...]) -> list[prometheus.Dataquery]:
    return [prometheus.Dataquery().expr(query.expr).legend_format(query.legend).ref_id(chr(ord("A") + i))
            for i, query in enumerate(queries)]


def graph(title: str, unit: str, *queries: Query, span: int = 8, description: str = "") -> timeseries.Panel:
    """A time series panel; its tooltip lists every series at the cursor, to compare runs and workers."""
    return (timeseries.Panel().title(title).description(description).unit(unit).span(span).height(8)
            .datasource(DATASOURCE).targets(_targets(queries))
            .legend(common.VizLegendOptions().display_mode(LegendDisplayMode.LIST)
                    .placement(LegendPlacement.BOTTOM).show_legend(True))
            .tooltip(common.VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING)))


def big(title: str, unit: str, *queries: Query, span: int = 6, text: BigValueTextMode = BigValueTextMode.AUTO,
        description: str = "") -> stat.Panel:
    """A stat panel of each query's last value."""
    return (stat.Panel().title(title).description(description).unit(unit).span(span).height(5)
            .datasource(DATASOURCE).targets(_targets(queries)).text_mode(text).graph_mode(BigValueGraphMode.NONE)
            .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"])))


def variable(name: str, query: str) -> dashboard.QueryVariable:
    """A multi-value variable (All: `.*`) of a label's values, refreshed with the time range."""
    return (dashboard.QueryVariable(name).datasource(DATASOURCE).query(query)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True).all_value(".*"))


def step_window() -> dashboard.IntervalVariable:
    """`$step_window`: how far back the panels of the trainer's per-step histograms look."""
    options = [VariableOption(text=w, value=w, selected=w == promql.STEP_WINDOW_DEFAULT) for w in promql.STEP_WINDOWS]
    return (dashboard.IntervalVariable(promql.STEP_WINDOW.removeprefix("$")).label("Per-step window")
            .description("Window of the panels of per-step values (rewards, lengths, step times, staleness, "
                         "request and verifier latency): "
                         "longer than a training step, or those panels show gaps between steps.")
            .values(",".join(promql.STEP_WINDOWS)).options(options)
            .current(VariableOption(text=promql.STEP_WINDOW_DEFAULT, value=promql.STEP_WINDOW_DEFAULT, selected=True)))


def build(uid: str, title: str, description: str, runs_from: str, rows: list[tuple[str, list[Panel]]]) -> dict:
    """A dashboard of `rows` (each filling whole lines of the grid), with `$namespace` and `$run`
    taken from the labels of the gauge `runs_from`, and `$step_window` where a panel uses it, as a
    JSON-ready dict."""
    name = promql.series(runs_from)
    board = (dashboard.Dashboard(title).uid(uid).description(description).tags(["zeroth"])
             .time("now-6h", "now").refresh("30s").tooltip(DashboardCursorSync.CROSSHAIR)
             .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
             .with_variable(variable("namespace", f"label_values({name}, namespace)"))
             .with_variable(variable("run", f'label_values({name}{{namespace=~"$namespace"}}, run)')))
    if any(promql.STEP_WINDOW in query.expr for _, panels in rows for p in panels for query in p.build().targets):
        board.with_variable(step_window())
    ids = itertools.count(1)
    for row, panels in rows:
        widths = sum(p.build().grid_pos.w for p in panels)
        if widths % GRID_WIDTH:
            raise ValueError(f"{uid}: row {row!r} is {widths} wide, not whole lines of {GRID_WIDTH}")
        board.with_row(dashboard.Row(row).id(next(ids)))
        for panel in panels:
            board.with_panel(panel.id(next(ids)))
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def overview() -> dict:
    verifier = ("namespace", "run", "verifier")
    return build("zeroth-overview", "Zeroth / Run overview", "How a run learns, how fast, and what it costs.", "step", [
        ("Progress", [
            big("Step", COUNT, q(gauge("step"))),
            big("Progress", FRACTION, q(f"{gauge('step')} / {gauge('max_steps')}")),
            big("GPU-hours in range", COUNT, q(f"{increase('gpu_seconds')} / 3600"),
                description="GPU-seconds the run's pods held over the dashboard's time range, in hours."),
            big("Cost in range", COUNT, q(increase("cost", RUN + ("currency",)), RUN + ("currency",)),
                description="At spec.cost.pricePerGpuHour, over the dashboard's time range."),
            graph("Step and max steps", COUNT, q(gauge("step"), what="step"), q(gauge("max_steps"), what="max steps"),
                  span=12),
            graph("GPUs held", COUNT, q(rate("gpu_seconds", window="5m")), span=12,
                  description="GPU-seconds per second over 5 minutes: how many GPUs the run's pods hold. "
                              "The operator counts GPU time to the minute, so a shorter window jumps."),
        ]),
        ("Reward", [
            graph("Reward (mean)", COUNT, q(mean("reward", matchers=('verifier="all"',))),
                  description="Mean weighted reward of the samples scored in each rate window (verifier=\"all\")."),
            graph("Reward by verifier (mean)", COUNT, q(mean("reward", verifier, ('verifier!="all"',)), verifier)),
            graph("Accuracy", FRACTION, q(gauge("accuracy")),
                  description="Fraction of the last step's samples every task verifier accepts."),
        ]),
        ("Evaluation and responses", [
            graph("Held-out eval accuracy", FRACTION,
                  q(gauge("eval_accuracy", RUN + ("kind", "k")), RUN, "{{kind}}@{{k}}"),
                  description="greedy@1, pass@k and maj@k on the held-out prompts."),
            graph("Response length (tokens)", COUNT, q(mean("response_length_tokens"), what="mean"),
                  q(quantile(0.9, "response_length_tokens"), what="p90")),
            graph("Truncated at the length limit", FRACTION, q(gauge("truncated_fraction"))),
        ]),
        ("Throughput", [
            graph("Tokens/s", COUNT, q(gauge("tokens_per_second"), what="trained, last step"),
                  q(rate("generated_tokens"), what="generated"), q(rate("trained_tokens"), what="trained")),
            graph("MFU", FRACTION, q(gauge("mfu")), description="Model FLOPs utilisation of the trainer (absent on CPU)."),
            graph("Step time breakdown (mean)", SECONDS, q(mean("step_seconds"), what="step"),
                  q(mean("generation_seconds"), what="waiting for samples"),
                  q(mean("weight_sync_seconds"), what="weight sync")),
        ]),
    ])


def rollout_fleet() -> dict:
    worker, verifier = RUN + ("worker",), RUN + ("verifier",)
    return build("zeroth-rollout-fleet", "Zeroth / Rollout fleet", "The rollout workers, weight sync and the verifiers.",
                 "step", [
        ("Fleet", [
            graph("Rollout workers", COUNT, q(gauge("rollout_workers"))),
            graph("Workers joined and lost", COUNT, q(increase("rollout_workers_joined", window=promql.RATE_WINDOW), what="joined"),
                  q(increase("rollout_workers_lost", window=promql.RATE_WINDOW), what="lost")),
            graph("Request parts resubmitted", COUNT, q(increase("rollout_requests_resubmitted", window=promql.RATE_WINDOW)),
                  description="Generated again because their worker was lost."),
        ]),
        ("Per worker", [
            graph("Throughput per worker (tokens/s)", COUNT, q(rate("worker_generated_tokens", worker), worker), span=12),
            graph("Request latency per worker", SECONDS, q(quantile(0.5, "worker_request_seconds", worker), worker, "p50"),
                  q(quantile(0.95, "worker_request_seconds", worker), worker, "p95"), span=12),
            graph("Weights version per worker", COUNT, q(gauge("worker_weights_version", worker), worker),
                  q(gauge("weights_version"), what="trainer"), span=12),
            graph("Queue depth per worker", COUNT, q(gauge("worker_queue_depth", worker), worker), span=12),
        ]),
        ("Weights and staleness", [
            graph("Rollout staleness (versions)", COUNT, *(q(quantile(p, "rollout_staleness"), what=f"p{round(p * 100)}")
                                                           for p in (0.5, 0.95, 0.99))),
            graph("Weight-sync time", SECONDS, q(mean("weight_sync_seconds"), what="mean"),
                  q(quantile(0.95, "weight_sync_seconds"), what="p95")),
            graph("Weight-sync bytes/s", BYTES_PER_SECOND, q(rate("weight_sync_bytes"))),
        ]),
        ("Verifiers", [
            graph("Verifier latency (p95)", SECONDS, q(quantile(0.95, "verifier_seconds", verifier), verifier), span=6),
            graph("Verifier timeouts/s", COUNT, q(rate("verifier_timeouts", verifier), verifier), span=6),
            graph("Verifier errors/s", COUNT, q(rate("verifier_errors", verifier), verifier), span=6),
            graph("All-equal groups", FRACTION, q(gauge("all_equal_groups_fraction")), span=6,
                  description="Groups whose rewards are all equal carry no signal."),
        ]),
    ])


def training_health() -> dict:
    gpu = RUN + ("pod", "gpu")
    return build("zeroth-training-health", "Zeroth / Training health", "The policy update's signals and the GPUs.", "step", [
        ("Policy", [
            graph("Loss", COUNT, q(gauge("loss"))),
            graph("KL to the reference", COUNT, q(gauge("kl"))),
            graph("Entropy", COUNT, q(gauge("entropy"))),
            graph("Clip fractions", FRACTION, q(gauge("clip_fraction"), what="all"),
                  q(gauge("clip_fraction_low"), what="low (1 - ε)"), q(gauge("clip_fraction_high"), what="high (1 + ε_high)")),
            graph("Importance ratio", COUNT, q(gauge("importance_ratio"))),
            graph("Train/rollout log-prob mismatch", COUNT, q(gauge("logprob_mismatch"), what="mean"),
                  q(gauge("logprob_mismatch_max"), what="max"),
                  description="|trainer log-prob - rollout log-prob| of the same tokens under the same weights."),
            graph("Grad norm (before clipping)", COUNT, q(gauge("grad_norm")), span=12),
            graph("Learning rate", COUNT, q(gauge("learning_rate")), span=12),
        ]),
        ("GPUs", [
            graph("GPU utilisation", FRACTION, q(gauge("gpu_utilization", gpu), gpu), span=12),
            graph("GPU memory used", BYTES, q(gauge("gpu_memory_used_bytes", gpu), gpu), span=12),
        ]),
    ])


def operator() -> dict:
    handler, phase = ("handler",), ("phase",)
    return build("zeroth-operator", "Zeroth / Operator", "Reconcile time and errors, and the runs by phase.", "run_phase", [
        ("Reconcile", [
            graph("Reconcile time", SECONDS, *(q(quantile(p, "reconcile_seconds", handler), handler, f"p{round(p * 100)}")
                                               for p in (0.5, 0.95, 0.99))),
            graph("Reconcile errors/s", COUNT, q(rate("reconcile_errors", handler), handler)),
            graph("Reconcile conflicts/s", COUNT, q(rate("reconcile_conflicts", handler), handler),
                  description="Passes planned again because the run changed under them (HTTP 409)."),
        ]),
        ("Runs", [
            graph("Runs by phase", COUNT, q(gauge("runs", phase, agg="sum"), phase)),
            big("Current phase", COUNT, q(f"{gauge('run_phase', RUN + phase)} == 1", RUN, "{{phase}}"),
                span=8, text=BigValueTextMode.NAME).height(8),
            graph("Gang restarts", COUNT, q(gauge("run_restarts")),
                  description="status.restarts: after failures (against backoffLimit) and disruptions (not)."),
        ]),
    ])


# file name (without .json) -> builder; the uids above stay put so that links and bookmarks survive
DASHBOARDS: dict[str, Callable[[], dict]] = {
    "overview": overview, "rollout-fleet": rollout_fleet, "training-health": training_health, "operator": operator,
}


def dashboards() -> dict[str, dict]:
    """Every dashboard as a JSON-ready dict, keyed by its file name (`overview.json`)."""
    return {f"{name}.json": make() for name, make in DASHBOARDS.items()}


def shipped(directory: Path = OUT) -> dict[str, dict]:
    """The dashboards as the chart ships them (the committed files), keyed by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def panel_queries(boards: dict[str, dict] | None = None) -> list[PanelQuery]:
    """Every panel's query in `boards` (default: the generator's), in the order the dashboards show them."""
    return [PanelQuery(file.removesuffix(".json"), panel["title"], target["expr"])
            for file, board in (boards or dashboards()).items() for panel in board["panels"]
            for target in panel.get("targets", ())]


def render() -> dict[str, str]:
    """Each dashboard file's text as committed: sorted keys, indent 2, a trailing newline."""
    return {file: json.dumps(board, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
            for file, board in dashboards().items()}


def drift(directory: Path = OUT) -> list[str]:
    """Files in `directory` that differ from the generator's, are missing, or are not its own."""
    texts = render()
    present = {p.name for p in directory.glob("*.json")}
    differ = [f for f, text in texts.items() if f not in present or (directory / f).read_text() != text]
    return sorted(differ + list(present - texts.keys()))


def write(directory: Path = OUT) -> None:
    """Writes every dashboard to `directory` and removes JSON files no dashboard makes any more."""
    directory.mkdir(parents=True, exist_ok=True)
    texts = render()
    for stale in set(p.name for p in directory.glob("*.json")) - texts.keys():
        (directory / stale).unlink()
    for file, text in texts.items():
        (directory / file).write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zeroth.dashboards", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help=f"exit 1 naming each file of {OUT} that differs (drift)")
    args = parser.parse_args(argv)
    if not args.check:
        write()
        return 0
    stale = drift()
    for file in stale:
        print(f"{OUT / file}: differs from zeroth/dashboards.py; run `make dashboards`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
