"""Validation cost: the local validator against the real API server's server-side dry run.

Both check the same manifests with the same rules (pydantic + CEL locally; the CRD's OpenAPI schema
and CEL on the server). Prints a side-by-side table with the ratio. Needs the local control plane
(started if it is not up, as the tests do).

    make bench            # or: python bench/validation.py [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.bad_manifests import CASES  # noqa: E402
from zeroth import validation  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    console = Console()
    hack = ROOT / "hack" / "cluster.py"
    subprocess.run([sys.executable, str(hack), "up"], check=True)
    env = dict(line.removeprefix("export ").split("=", 1) for line in
               subprocess.run([sys.executable, str(hack), "env"], check=True, capture_output=True, text=True).stdout.splitlines())
    kubectl = Path(env["PATH"].split(":")[0]) / "kubectl"
    kc = ["--kubeconfig", env["KUBECONFIG"]]
    subprocess.run([kubectl, *kc, "apply", "--server-side", "--force-conflicts", "-f", ROOT / "charts/zeroth/crds/reasoningruns.yaml"],
                   check=True, capture_output=True)
    subprocess.run([kubectl, *kc, "wait", "--for=condition=Established", "crd/reasoningruns.zeroth.dev"], check=True, capture_output=True)

    good = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "examples").glob("*.yaml"))]
    bad = [c.manifest() for c in CASES]
    manifests = good + bad
    body = yaml.safe_dump_all(manifests)

    local, server = [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for m in manifests:
            try:
                validation.validate(m)
            except validation.ManifestError:
                pass
        local.append(time.perf_counter() - t0)
        # one kubectl call for all documents, so process start-up is paid once, not per manifest
        t0 = time.perf_counter()
        subprocess.run([kubectl, *kc, "apply", "--dry-run=server", "-n", "default", "-f", "-"], input=body,
                       capture_output=True, text=True)
        server.append(time.perf_counter() - t0)

    n = len(manifests)
    table = Table(title=f"Validating {n} manifests ({len(good)} good, {len(bad)} bad), median of {args.rounds} rounds")
    for col in ("validator", "total (ms)", "per manifest (ms)", "ratio"):
        table.add_column(col, justify="right" if col != "validator" else "left")
    ls, ss = statistics.median(local), statistics.median(server)
    table.add_row("zeroth (pydantic + cel-python)", f"{ls * 1e3:.1f}", f"{ls / n * 1e3:.2f}", "1.00")
    table.add_row("kube-apiserver dry run (kubectl apply)", f"{ss * 1e3:.1f}", f"{ss / n * 1e3:.2f}", f"{ss / ls:.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
