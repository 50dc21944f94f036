"""Metric names are defined once and follow Prometheus conventions."""

from __future__ import annotations

import re
import threading
import urllib.request

import pytest
from prometheus_client import generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily

from zeroth import metrics


def test_names_are_unique_and_conventional():
    names = [m.full_name for m in metrics.DEFINITIONS]
    assert len(names) == len(set(names))
    for m in metrics.DEFINITIONS:
        assert re.fullmatch(r"zeroth_[a-z][a-z0-9_]*", m.full_name), m.name
        # prometheus-client appends _total to counters itself; a name ending in it would double it
        assert not m.name.endswith("_total"), m.name
        if m.kind == "histogram":
            assert m.buckets and list(m.buckets) == sorted(m.buckets), m.name


def test_every_definition_exports():
    reg = metrics.Metrics()
    for m in metrics.DEFINITIONS:
        obj = reg[m.name].labels(**{label: "x" for label in m.labels})
        if m.kind == "histogram":
            obj.observe(1.0)
        elif m.kind == "counter":
            obj.inc()
        else:
            obj.set(1.0)
    text = generate_latest(reg.registry).decode()
    for m in metrics.DEFINITIONS:
        suffix = {"counter": "_total", "histogram": "_count", "gauge": ""}[m.kind]
        assert f"\n{m.full_name}{suffix}{{" in text, m.full_name


def test_unknown_metric_lists_known():
    reg = metrics.Metrics(names=("loss",))
    try:
        reg["losss"]
    except KeyError as e:
        assert "loss" in str(e)
    else:
        raise AssertionError("unknown metric accepted")


def test_the_readmes_table_lists_every_metric_as_the_module_defines_it():
    """README's table is generated (`python -m zeroth.metrics`); this fails when it is stale."""
    readme = (metrics.Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split(metrics.TABLE_START)[1].split(metrics.TABLE_END)[0]
    assert table.strip() == metrics.markdown_table(), "README's metrics table is stale: run `make dashboards`"
    for m in metrics.DEFINITIONS:
        assert f"| `{m.full_name}" in table, m.name


def test_each_metric_has_one_exporter_and_the_exporters_split_them():
    names = [n for source in metrics.SOURCE_WORDS for n in metrics.exported_by(source)]
    assert sorted(names) == sorted(metrics.BY_NAME)  # none twice, none by nobody


@pytest.mark.parametrize("query", ["", "?name[]=zeroth_step&name[]=zeroth_loss"])
def test_a_scrape_waits_for_a_group_of_updates_to_finish(query):
    """The trainer sets a step's series inside `metrics.update()`: a scrape that comes meanwhile
    (over HTTP, as Prometheus's does; all names, or some) is answered once they are all set, never
    between two of them. A collector beside them (NVML's) is not read under the update."""
    reg = metrics.Metrics(names=("step", "loss"))
    reg.registry.register(_Constant())
    server, _ = start_http_server(0, addr="127.0.0.1", registry=reg.registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    answers: list[str] = []
    try:
        with reg.update():
            reg["step"].labels(run="r", namespace="n").set(7)
            assert "zeroth_gpu_utilization" in urllib.request.urlopen(f"{url}?name[]=zeroth_gpu_utilization", timeout=30).read().decode()
            scrape = threading.Thread(target=lambda: answers.append(urllib.request.urlopen(url + query, timeout=30).read().decode()))
            scrape.start()
            scrape.join(timeout=3.0)  # a scrape that did not wait is back well within this
            assert answers == [], "the scrape read the series halfway through the update"
            reg["loss"].labels(run="r", namespace="n").set(0.25)
        scrape.join(timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    (text,) = answers
    assert 'zeroth_step{namespace="n",run="r"} 7.0' in text and 'zeroth_loss{namespace="n",run="r"} 0.25' in text


class _Constant:
    """A collector read at the scrape, as NVML's is."""

    def describe(self):
        return self.collect()

    def collect(self):
        family = GaugeMetricFamily("zeroth_gpu_utilization", "a constant", labels=["gpu"])
        family.add_metric(["0"], 50.0)
        return [family]
