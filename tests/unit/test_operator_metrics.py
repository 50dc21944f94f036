"""The operator's own metrics, as its /metrics serves them from the start."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

PROBE = """
import json
from zeroth.operator import handlers
registry, labels = handlers._metrics.registry, {"handler": "reconcile"}
print(json.dumps({name: registry.get_sample_value(name, labels) for name in
                  ("zeroth_reconcile_seconds_count", "zeroth_reconcile_errors_total", "zeroth_reconcile_conflicts_total")}))
"""


def test_the_reconcile_series_are_there_at_0_before_any_reconcile():
    """rate() sees a series' first rise only from a 0 before it: a histogram created at its first
    observation hides it, and the "Reconcile time" panel of a quiet operator reads 0/0. In a fresh
    process (no other test has reconciled), as the operator starts."""
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, cwd=ROOT / "tests")
    assert proc.returncode == 0, proc.stderr[-2000:]
    values = json.loads(proc.stdout.strip().splitlines()[-1])
    assert values == {"zeroth_reconcile_seconds_count": 0.0, "zeroth_reconcile_errors_total": 0.0,
                      "zeroth_reconcile_conflicts_total": 0.0}
