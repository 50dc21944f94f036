"""PromQL over Zeroth's metrics, built from `zeroth.metrics` so that a query can name only a metric
that exists, under the series name prometheus-client really exports.

Dashboards get every series name through `series`: renaming or removing a metric, or asking a
gauge for `_total`, fails when the queries are generated instead of leaving a panel that shows
"No data". Grafana's variables (`$namespace`, `$run`, `$__rate_interval`, `$__range`, and the
dashboards' own `$step_window`) stay in the expressions; `substitute` fills them in, so the same expression can be sent to Prometheus itself.
"""

from __future__ import annotations

import re

from zeroth.metrics import BY_NAME, Metric

# the series prometheus-client exports for each kind (a counter's name gets `_total` appended)
SUFFIXES = {"gauge": ("",), "counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
# the labels every run's metrics carry, each filtered by the dashboard variable of the same name
RUN = ("namespace", "run")
RATE_WINDOW = "$__rate_interval"
# Some histograms are observed once a step (the trainer's; each worker's requests), and a step can
# outlast Grafana's rate interval (a few scrape intervals): a rate over that window would be empty
# between steps and the panel would show gaps. Their panels average over the dashboard variable `$step_window` instead, whose choices
# and default are these.
STEP_WINDOW = "$step_window"
STEP_WINDOWS = ("5m", "15m", "1h", "6h")  # 5m: at least 5 scrapes at 60 s
STEP_WINDOW_DEFAULT = "15m"
RANGE = "$__range"


def definition(name: str) -> Metric:
    """The metric `name` (without the `zeroth_` prefix), or KeyError listing the known ones."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; zeroth/metrics.py defines {sorted(BY_NAME)}") from None


def series(name: str, suffix: str | None = None) -> str:
    """The series name of metric `name` as Prometheus stores it: `zeroth_` + name + the kind's
    suffix. A histogram has three series, so it needs `suffix` (`_bucket`, `_sum` or `_count`)."""
    metric = definition(name)
    allowed = SUFFIXES[metric.kind]
    if suffix is None and len(allowed) == 1:
        suffix = allowed[0]
    if suffix not in allowed:
        raise ValueError(f"{metric.full_name} is a {metric.kind}: its series end in {allowed}, not {suffix!r}")
    return metric.full_name + suffix


def selector(name: str, suffix: str | None = None, matchers: tuple[str, ...] = ()) -> str:
    """`series{...}` filtered by the `$namespace` and `$run` variables on those of the two labels the
    metric carries (operator-wide metrics carry neither), plus `matchers` (`'verifier="all"'`)."""
    labels = definition(name).labels
    filters = [f'{label}=~"${label}"' for label in RUN if label in labels] + list(matchers)
    return series(name, suffix) + (f"{{{', '.join(filters)}}}" if filters else "")


def _by(labels: tuple[str, ...]) -> str:
    return f"by ({', '.join(labels)}) " if labels else ""


def gauge(name: str, by: tuple[str, ...] = RUN, matchers: tuple[str, ...] = (), agg: str = "max") -> str:
    """A gauge aggregated over what the scrape adds (pod, instance), one series per `by`."""
    return f"{agg} {_by(by)}({selector(name, matchers=matchers)})"


def rate(name: str, by: tuple[str, ...] = RUN, matchers: tuple[str, ...] = (), window: str = RATE_WINDOW) -> str:
    """Per-second rate of a counter over `window` (default: Grafana's rate interval), summed per `by`."""
    return f"sum {_by(by)}(rate({selector(name, matchers=matchers)}[{window}]))"


def increase(name: str, by: tuple[str, ...] = RUN, window: str = RANGE) -> str:
    """How much a counter grew over `window` (default: the dashboard's time range), summed per `by`;
    restarts of the exporting process are accounted for, unlike the raw counter."""
    return f"sum {_by(by)}(increase({selector(name)}[{window}]))"


def histogram_window(name: str) -> str:
    """The window a histogram's panels look back over: `$step_window` for those observed once a
    step (`Metric.per_step`), Grafana's rate interval for the others (observed all the time)."""
    return STEP_WINDOW if definition(name).per_step else RATE_WINDOW


def mean(name: str, by: tuple[str, ...] = RUN, matchers: tuple[str, ...] = ()) -> str:
    """Mean of a histogram's observations in each window (`histogram_window`): rate of `_sum` over
    rate of `_count`."""
    def part(suffix: str) -> str:
        return f"sum {_by(by)}(rate({selector(name, suffix, matchers)}[{histogram_window(name)}]))"
    return f"{part('_sum')} / {part('_count')}"


def quantile(q: float, name: str, by: tuple[str, ...] = RUN, matchers: tuple[str, ...] = ()) -> str:
    """The `q` quantile of a histogram's observations in each window (`histogram_window`), per `by`."""
    buckets = f"rate({selector(name, '_bucket', matchers)}[{histogram_window(name)}])"
    return f"histogram_quantile({q}, sum {_by(('le', *by))}({buckets}))"


def substitute(expr: str, namespace: str = ".*", run: str = ".*", rate_interval: str = "1m", range_: str = "1h",
               step_window: str = STEP_WINDOW_DEFAULT) -> str:
    """`expr` with Grafana's variables replaced, ready for Prometheus's own query API; an unknown
    variable raises (it would reach Prometheus as a syntax error)."""
    values = {"namespace": namespace, "run": run, "__rate_interval": rate_interval, "__range": range_,
              "step_window": step_window}

    def value(match: re.Match) -> str:
        if match.group(1) not in values:
            raise KeyError(f"no value for Grafana variable ${match.group(1)} in {expr!r}")
        return values[match.group(1)]
    return re.sub(r"\$(\w+)", value, expr)
