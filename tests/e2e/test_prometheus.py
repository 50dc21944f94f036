"""A real Prometheus (Debian's, hack/build-prometheus.sh) on loopback scrapes a real `zeroth run`
(trainer rank 0 and every rollout worker, found through the run's file_sd targets) and the
operator (reconciling a run of kwok GPU pods, with a price), with the chart's alert rules loaded.
Every query of the dashboards the chart ships, and every alert expression, is then evaluated
through Prometheus's HTTP API: a metric renamed on one side leaves a panel empty, and this fails.

The panels are also drawn from Prometheus's answers (PNGs under the test's tmp dir; set
ZEROTH_DASHBOARD_PICTURES=docs to redraw README's pictures).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests import procs
from tests.conftest import _free_port
from tests.e2e.conftest import records, run_dir_of, start_run, steps, until, wait_for
from tests.e2e.test_resume_async import short
from tests.integration.test_alerts import built, rules_file
from tests.integration.test_operator import running
from tests.speed import scaled
from zeroth import alerts, dashboards, metrics, promql
from zeroth.gpus import Nvml
from zeroth.trainer.report import TARGETS_FILE

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

# What a run on the CPU cannot have: MFU (no peak to measure against), and on a machine without a
# GPU, NVML's numbers. Their panels must be empty, not zero.
ABSENT = frozenset({"mfu"} | (set() if Nvml().sample() else set(metrics.exported_by("gpu"))))
SERIES = re.compile(r"\bzeroth_\w+")
PICTURES = os.environ.get("ZEROTH_DASHBOARD_PICTURES")  # a directory for README's pictures, or unset
PICTURE_SECONDS = 180


class Prometheus:
    """The server as a process of the test's, with a client for the parts of its HTTP API used here."""

    def __init__(self, binary: Path, config: dict, rules: Path, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        config = {**config, "rule_files": [str(rules)]}
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.log = directory / "prometheus.log"
        self.proc = subprocess.Popen(
            [str(binary), f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address={self.url.removeprefix('http://')}"],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env=procs.tag(dict(os.environ)))
        wait_for(self.ready, 60, "Prometheus to be ready")

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2):
                return True
        except OSError:
            return False

    def api(self, path: str, **params) -> dict:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                answer = json.loads(r.read())
        except urllib.error.HTTPError as e:  # a bad query: 400 with Prometheus's error in the body
            answer = json.loads(e.read())
        assert answer["status"] == "success", f"{path} {params}: {answer}"
        return answer["data"]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def metric_names(expr: str) -> set[str]:
    """The metrics (zeroth/metrics.py's names) a query reads."""
    stored = {promql.series(m.name, suffix): m.name for m in metrics.DEFINITIONS for suffix in promql.SUFFIXES[m.kind]}
    return {stored.get(s, s) for s in SERIES.findall(expr)}


def finite(result: list[dict]) -> bool:
    return all(math.isfinite(float(r["value"][1])) for r in result)


def test_prometheus_scrapes_a_run_and_the_operator_and_every_panel_and_alert_evaluates(crd, operator, namespace, tmp_path):
    # the run's side: a short real run, evaluated every 2 steps so that eval_accuracy exists mid-run,
    # with a KL term (the R1-Zero default has none, and then no zeroth_kl)
    # and more steps than the test waits for: it stops the run (Ctrl-C) once it has checked
    proc = start_run(tmp_path, short("scraped", eval={"everySteps": 2}, algorithm={"klCoef": 0.01, "maxSteps": 5000}))
    wait_for(lambda: list(tmp_path.glob(f"runs/scraped-*/{TARGETS_FILE}")), 300, "the run's Prometheus targets")
    targets_file = run_dir_of(tmp_path, "scraped") / TARGETS_FILE
    run_dir = targets_file.parent
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "zeroth-run", "honor_labels": True,
             "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}]},
            {"job_name": "zeroth-operator", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}]},
        ],
    }
    prometheus = Prometheus(built("build-prometheus.sh") / "prometheus", config,
                            rules_file(crd.bin / "helm", tmp_path, keep_annotations=True), tmp_path / "prometheus")
    started = time.time()
    try:
        check_targets(prometheus, targets_file, operator.metrics_port)
        # the operator's side, while Prometheus watches: a run of kwok GPU pods with a price, Running
        running(crd, operator, namespace, "priced", trainers=1, trainer_gpus=2, rollouts=1, rollout_gpus=0,
                cost={"pricePerGpuHour": 36.0, "currency": "EUR"})
        # three steps and an evaluation while Prometheus scrapes, then a few scrapes more
        first = max((r["step"] for r in steps(run_dir)), default=0)
        wait_for(lambda: any(r["step"] >= first + 3 for r in steps(run_dir))
                 and any("eval_greedy" in r and r["step"] > first for r in records(run_dir)), 900, "3 steps and an evaluation")
        time.sleep(3)
        if PICTURES:  # long enough for the pictures to show a trend, and a minute of the operator's GPU time
            wait_for(lambda: time.time() - started > PICTURE_SECONDS, PICTURE_SECONDS * 2, "the pictures' run")
        now = time.time()
        check_panels(prometheus, now, f"{math.ceil(now - started) + 5}s")
        check_values(prometheus, run_dir, now, f"{math.ceil(now - started) + 5}s")
        check_alerts(prometheus, now)
        draw(prometheus, started, now, tmp_path / "pictures")
    finally:
        prometheus.stop()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=scaled(300))


def check_targets(prometheus: Prometheus, targets_file: Path, operator_port: int) -> None:
    """Rank 0, each rollout worker and the operator are scraped, and answer."""
    listed = [t for group in json.loads(targets_file.read_text()) for t in group["targets"]]
    assert len(listed) == 3, listed  # rank 0 and the run's 2 rollout workers
    want = set(listed) | {f"127.0.0.1:{operator_port}"}

    def up():
        targets = prometheus.api("targets")["activeTargets"]
        return {t["labels"]["instance"] for t in targets if t["health"] == "up"} >= want or targets
    until(f"{sorted(want)} up", lambda: up() is True, 30, lambda: json.dumps(up(), indent=1))


def check_panels(prometheus: Prometheus, at: float, window: str) -> None:
    """Each shipped panel's each query returns series with finite values (rates over `window`, the
    whole time Prometheus has scraped); queries of what a CPU cannot measure return nothing."""
    empty, not_finite, present_on_cpu = [], [], []
    queries = dashboards.panel_queries(dashboards.shipped())
    assert len(queries) > 40  # all four dashboards
    answers = {}
    for query in queries:
        answers[query.panel] = result = prometheus.api(
            "query", query=query.promql(rate_interval=window, range_=window), time=at)["result"]
        where = f"{query.dashboard} / {query.panel}: {query.expr}"
        if metric_names(query.expr) & ABSENT:
            if result:
                present_on_cpu.append(f"{where} -> {result}")
        elif not result:
            empty.append(where)
        elif not finite(result):
            not_finite.append(f"{where} -> {result}")
    assert not empty, "panels with no data:\n" + "\n".join(empty)
    assert not not_finite, "panels with values that are not finite:\n" + "\n".join(not_finite)
    assert not present_on_cpu, "panels of what this machine cannot measure, with data:\n" + "\n".join(present_on_cpu)
    # GPU time and cost from both exporters: the operator (the priced kwok run, in its currency)
    # and, for a local run, rank 0 (no GPU held here: 0)
    for panel in ("GPU-hours in range", "Cost in range", "GPUs held"):
        assert {r["metric"]["run"] for r in answers[panel]} == {"priced", "scraped"}, (panel, answers[panel])
    assert {r["metric"]["currency"] for r in answers["Cost in range"] if r["metric"]["run"] == "priced"} == {"EUR"}
    # the dashboards' $run variable (label_values of zeroth_step) lists the run
    runs = prometheus.api("label/run/values", **{"match[]": promql.series("step")})
    assert "scraped" in runs, runs


def scraped(series: str, *matchers: str) -> str:
    """The selector of `series` of this test's run ("scraped"), with `matchers`."""
    labels = ", ".join(['run="scraped"', *matchers])
    return f"{series}{{{labels}}}"


# What Prometheus must hold at a scrape that saw step s done, from metrics.jsonl's records up to s:
# a gauge the record's own value, a counter (or a histogram's sum or count) the total over steps.
GAUGES = {scraped(promql.series(key)): key for key in ("loss", "accuracy", "kl", "entropy", "grad_norm",
                                                       "learning_rate", "weights_version")}
TOTALS = {
    scraped(promql.series("trained_tokens")): lambda r: r["trained_tokens"],
    scraped(promql.series("generated_tokens")): lambda r: r["generated_tokens"],
    scraped(promql.series("model_flops"), 'phase="train"'): lambda r: r["model_flops_train"],
    scraped(promql.series("reward", "_count"), 'verifier="all"'): lambda r: r["samples"],
    scraped(promql.series("reward", "_sum"), 'verifier="all"'): lambda r: r["reward_mean"] * r["samples"],
    scraped(promql.series("response_length_tokens", "_sum")): lambda r: r["response_length_mean"] * r["samples"],
    scraped(promql.series("step_seconds", "_sum")): lambda r: r["step_seconds"],
}


def check_values(prometheus: Prometheus, run_dir: Path, at: float, window: str) -> None:
    """Prometheus holds the run's own numbers, not just some finite ones: each scrape of rank 0 is
    matched to the step its `zeroth_step` says was done, and the gauges and totals it read are
    compared with metrics.jsonl's records. Every scrape agrees: the trainer sets a step's series
    while its scrapes wait (`Metrics.update`). The totals run from step 1: one trainer process, as
    its counters start at 0 in each."""
    def samples(selector: str) -> dict[float, float]:
        result = prometheus.api("query", query=f"{selector}[{window}]", time=at)["result"]
        assert len(result) == 1, f"{selector}: one series wanted, got {result}"
        return {t: float(v) for t, v in result[0]["values"]}

    done = {t: int(s) for t, s in samples(scraped(promql.series("step"))).items() if s >= 1}
    assert len(set(done.values())) >= 2, f"fewer than 2 steps scraped: {done}"
    read = {selector: samples(selector) for selector in [*GAUGES, *TOTALS]}
    by_step = {r["step"]: r for r in steps(run_dir)}
    totals, running = {}, dict.fromkeys(TOTALS, 0.0)
    for step in sorted(by_step):
        for selector, value in TOTALS.items():
            running[selector] += value(by_step[step])
        totals[step] = dict(running)
    wrong = {}
    for t, step in sorted(done.items()):
        want = {selector: by_step[step][key] for selector, key in GAUGES.items()} | totals[step]
        diff = {q: (read[q].get(t), v) for q, v in want.items() if read[q].get(t) != pytest.approx(v, rel=1e-6, abs=1e-9)}
        if diff:
            wrong[f"scrape at {t}, step {step}"] = diff
    assert not wrong, f"Prometheus read other numbers than the run's records (query: (read, recorded)): {wrong}"


def check_alerts(prometheus: Prometheus, at: float) -> None:
    """Each alert rule, as the chart renders it, is loaded, evaluated by Prometheus without error,
    and its expression is valid through the query API."""
    def loaded():
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules) else None
    rules = until("every rule evaluated once", loaded, 30)
    assert [r["name"] for r in rules] == [a.name for a in alerts.alerts()]
    broken = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
    assert not broken, broken
    for rule in rules:
        prometheus.api("query", query=rule["query"], time=at)  # status success, or the assertion names it


# ------------------------------------------------------------------------------ the pictures


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or "value"


def draw(prometheus: Prometheus, start: float, end: float, out: Path) -> None:
    """Each dashboard's panels as small plots of Prometheus's answers over the run, one PNG each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    step = max(1.0, (end - start) / 120)
    for file, board in dashboards.shipped().items():
        panels = [p for p in board["panels"] if p.get("targets")]
        cols = 4
        rows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.4 * rows), squeeze=False)
        for ax, panel in zip(axes.flat, panels):
            drawn = 0
            for target in panel["targets"]:
                expr = promql.substitute(target["expr"], rate_interval="30s", range_=f"{math.ceil(end - start)}s")
                for series in prometheus.api("query_range", query=expr, start=start, end=end, step=step)["result"]:
                    t = [float(v[0]) - start for v in series["values"]]
                    ax.plot(t, [float(v[1]) for v in series["values"]], lw=1.2,
                            label=legend(target.get("legendFormat", ""), series["metric"]))
                    drawn += 1
            ax.set_title(panel["title"], fontsize=9)
            ax.tick_params(labelsize=7)
            if drawn:
                ax.legend(fontsize=6, loc="best")
            else:
                ax.text(0.5, 0.5, "no data\n(no GPU on this machine)", ha="center", va="center", transform=ax.transAxes,
                        fontsize=8, color="grey")
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.suptitle(f"{board['title']}: Prometheus's answers over a {end - start:.0f} s CPU run (x: seconds)", fontsize=11)
        fig.tight_layout()
        fig.savefig(out / file.replace(".json", ".png"), dpi=70)
        plt.close(fig)
    if PICTURES:
        Path(PICTURES).mkdir(parents=True, exist_ok=True)
        for png in out.glob("*.png"):
            shutil.copy(png, Path(PICTURES) / f"dashboard-{png.name}")
