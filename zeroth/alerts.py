"""Prometheus alert rules for Zeroth's runs, generated so that every series they query comes from
`zeroth.metrics`.

The rules go to `charts/zeroth/files/alerts.yaml` with Helm placeholders where thresholds and
durations go (`{{ .Values.alerts.noProgressMinutes }}m`), so that the chart's values tune them and
`templates/prometheusrule.yaml` renders the file with `tpl` into a PrometheusRule; the tests render
it with helm and run promtool on the result. `python -m zeroth.alerts` rewrites the file, `--check`
fails when it differs from what this module generates (`make alerts`).

Run-scoped rules group by `namespace` and `run`, the labels every run's metrics carry.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from zeroth import promql

PATH = Path(__file__).resolve().parents[1] / "charts" / "zeroth" / "files" / "alerts.yaml"
_RUN = "namespace, run"


def series(name: str, part: str | None = None, **labels: str) -> str:
    """The series Prometheus stores metric `name` under (`zeroth.promql.series`: counters end in
    `_total`, histograms in `_bucket`, `_sum` or `_count` by `part`), with a label selector. Unknown
    names, parts and labels raise, so a rule cannot query what no exporter writes."""
    stored = promql.series(name, f"_{part}" if part else None)
    known = promql.definition(name).labels
    unknown = set(labels) - set(known)
    if unknown:
        raise ValueError(f"metric {name!r} has no label {sorted(unknown)}; it has: {list(known)}")
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return stored + (f"{{{selector}}}" if selector else "")


def value(key: str) -> str:
    """A Helm placeholder for the chart value `alerts.<key>`."""
    return f"{{{{ .Values.alerts.{key} }}}}"


def minutes(key: str) -> str:
    """A Prometheus duration from the chart value `alerts.<key>`, a whole number of minutes."""
    return value(key) + "m"


def prom(template: str) -> str:
    """Prometheus's own template text (`$labels.run`) kept literal through Helm's `tpl`."""
    return f"{{{{`{{{{ {template} }}}}`}}}}"


RUN_NAME = f"{prom('$labels.namespace')}/{prom('$labels.run')}"


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str  # how long the expression must hold before the alert fires
    severity: str
    summary: str
    description: str

    def rule(self) -> dict:
        return {"alert": self.name, "expr": self.expr, "for": self.for_, "labels": {"severity": self.severity},
                "annotations": {"summary": self.summary, "description": self.description}}


def _mean_reward(window: str) -> str:
    """Mean reward (verifier="all", the weighted sum) of the samples scored in the last `window`."""
    def rate(part: str) -> str:
        return f"sum by ({_RUN}) (rate({series('reward', part, verifier='all')}[{window}]))"
    return f"(\n  {rate('sum')}\n/\n  {rate('count')}\n)"


def _verifier_fraction(counter: str, window: str) -> str:
    """Fraction of each verifier's samples (each one's latency is observed once) that `counter` counted."""
    def rate(name: str, part: str | None = None) -> str:
        return f"sum by ({_RUN}, verifier) (rate({series(name, part)}[{window}]))"
    return f"{rate(counter)}\n  /\n{rate('verifier_seconds', 'count')}"


def _no_progress() -> Alert:
    # The offset term keeps a run younger than the window (no step yet, loading the model) quiet
    # until the window is full: changes() over a short series would be 0 from the first scrape.
    window, step = minutes("noProgressMinutes"), series("step")
    return Alert(
        "ZerothRunNoProgress",
        f"{step} < {series('max_steps')}\nand changes({step}[{window}]) == 0\nand {step} offset {window}",
        "1m", "critical",
        f"Run {RUN_NAME} makes no progress",
        f"Run {RUN_NAME} has been at step {prom('$value')} for {value('noProgressMinutes')} minutes, "
        f"short of its max_steps: the trainer or the rollout fleet is stuck.")


def _reward_collapse() -> Alert:
    # the best is filtered (> rewardMinBest) before the comparison: a run that never earned any
    # reward has nothing to collapse from
    recent, best = _mean_reward(minutes("rewardWindowMinutes")), minutes("rewardBestWindowMinutes")
    return Alert(
        "ZerothRewardCollapse",
        f"{recent}\n< {value('rewardCollapseFraction')} * (\n  max_over_time({recent}[{best}:])\n  "
        f"> {value('rewardMinBest')}\n)",
        "5m", "warning",
        f"Run {RUN_NAME}'s reward collapsed",
        f"Run {RUN_NAME}'s mean reward over the last {value('rewardWindowMinutes')} minutes is "
        f"{prom('$value | humanize')}, below {value('rewardCollapseFraction')} of its best over the last "
        f"{value('rewardBestWindowMinutes')} minutes: the policy may have collapsed.")


def _verifier(kind: str, counter: str, key: str) -> Alert:
    window = minutes("verifierWindowMinutes")
    return Alert(
        f"ZerothVerifier{kind.title()}s",
        f"{_verifier_fraction(counter, window)}\n> {value(key)}",
        "5m", "warning",
        f"Verifier {prom('$labels.verifier')} {kind}s on run {RUN_NAME}",
        f"{prom('$value | humanizePercentage')} of the samples verifier {prom('$labels.verifier')} scored "
        f"for run {RUN_NAME} in the last {value('verifierWindowMinutes')} minutes were {kind}s, "
        f"above {value(key)}.")


def _gang_restarts() -> Alert:
    # run_restarts is a gauge (status.restarts): delta(), not increase(), which reads a drop (a run
    # deleted and created again under its name) as a counter reset and then as a rise.
    return Alert(
        "ZerothGangRestarts",
        f"delta({series('run_restarts')}[{minutes('restartWindowMinutes')}]) > 0",
        "0m", "warning",  # each restart is an event: the window, not a hold, keeps it visible
        f"Run {RUN_NAME} restarted its gang",
        f"Run {RUN_NAME} restarted all its pods in the last {value('restartWindowMinutes')} minutes "
        f"(a pod failed, or a disruption took one); failures count against its backoffLimit, disruptions do not.")


def _logprob_mismatch() -> Alert:
    return Alert(
        "ZerothLogprobMismatch",
        f"{series('logprob_mismatch')} > {value('logprobMismatchMax')}",
        minutes("logprobMismatchMinutes"), "warning",
        f"Run {RUN_NAME}'s trainer and rollout disagree on log-probs",
        f"Run {RUN_NAME}'s mean per-token |trainer - rollout| log-prob of the same tokens is "
        f"{prom('$value | humanize')}, above {value('logprobMismatchMax')} for "
        f"{value('logprobMismatchMinutes')} minutes: the rollout fleet may hold other weights, or "
        f"its numerics differ from the trainer's.")


def _pending() -> Alert:
    return Alert(
        "ZerothRunPending",
        f"{series('run_phase', phase='Pending')} == 1",
        minutes("pendingMinutes"), "warning",
        f"Run {RUN_NAME} is still Pending",
        f"Run {RUN_NAME} has been Pending for {value('pendingMinutes')} minutes: its pods are not "
        f"scheduled (no GPUs free, a queue not admitting it, or an image that does not pull).")


def alerts() -> list[Alert]:
    return [_no_progress(), _reward_collapse(), _verifier("error", "verifier_errors", "verifierErrorFraction"),
            _verifier("timeout", "verifier_timeouts", "verifierTimeoutFraction"), _gang_restarts(),
            _logprob_mismatch(), _pending()]


class _Dumper(yaml.SafeDumper):
    """Multi-line expressions as literal blocks, so the file reads like PromQL."""


_Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def render() -> str:
    """The file's text: a Prometheus rule file (spec.groups of a PrometheusRule) with Helm placeholders."""
    header = "# Generated by zeroth/alerts.py (make alerts): edit that, not this file.\n"
    groups = {"groups": [{"name": "zeroth-runs", "rules": [a.rule() for a in alerts()]}]}
    return header + yaml.dump(groups, Dumper=_Dumper, sort_keys=False, width=1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help=f"fail if {PATH.name} differs from the generator's output")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not PATH.exists() or PATH.read_text() != text:
            print(f"{PATH} is out of date: run `make alerts`", file=sys.stderr)
            return 1
        return 0
    PATH.parent.mkdir(parents=True, exist_ok=True)
    PATH.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
