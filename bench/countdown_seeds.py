"""The spread of `make run`'s learning claim over seeds: what tests/e2e/test_countdown.py may assert.

A run is reproducible on one machine, not across CPUs (another CPU's floating point takes it down
another trajectory), so the e2e test must hold for the distribution of runs, not for one. This runs
examples/countdown-tiny.yaml with several seeds (data order, sampling and held-out set all follow
the seed; the base model is the same), scores each trained policy as the test does
(tests/e2e/scoring.py: its own greedy decoding and arithmetic, target-blind baselines, swapped
targets), and prints a table: accuracy, baseline, margin (accuracy - baseline), the
target-swapped accuracy and accuracy - swapped per seed, then min / mean / max, and whether the
e2e test's assertions would pass on each. `spread.png` plots every seed's held-out
accuracy during training against its baseline.

    python bench/countdown_seeds.py --seeds 0 1 2 3          # ~6 min a seed on 2 cores
    python bench/countdown_seeds.py --seeds 0 1 --max-staleness 2   # the asynchronous run's claim
    python bench/countdown_seeds.py --score runs/countdown-tiny-*   # score finished runs
    hack/slow.sh 0.67 python bench/countdown_seeds.py --seeds 0    # the same on a 3x slower machine
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e import scoring  # noqa: E402
from tests.e2e.test_countdown import MARGIN, READS_TARGET, SWAP_SLACK, passes  # noqa: E402
from zeroth import validation  # noqa: E402

TINY = ROOT / "examples" / "countdown-tiny.yaml"


def train(seed: int, out: Path, console: Console, max_staleness: int = 0) -> Path:
    m = yaml.safe_load(TINY.read_text())
    m["metadata"]["name"] = f"seed-{seed}"
    m["spec"]["algorithm"]["seed"] = seed
    if max_staleness:  # asynchronous: the off-policy corrections keep their defaults
        m["spec"]["algorithm"]["maxStaleness"] = max_staleness
    path = out / f"seed-{seed}.yaml"
    path.write_text(yaml.safe_dump(m))
    console.print(f"[bold]seed {seed}[/]: training ({m['spec']['algorithm']['maxSteps']} steps)")
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "zeroth", "run", str(path), "--runs", str(out), "--metrics-port", "0"],
                   check=True, stdout=subprocess.DEVNULL)
    console.print(f"  trained in {time.monotonic() - start:.0f} s")
    return sorted(out.glob(f"seed-{seed}-*"))[-1]


def evaluations(run_dir: Path) -> list[tuple[int, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["eval_greedy"]) for r in map(json.loads, lines) if "eval_greedy" in r]


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in results:
        steps, accs = zip(*r["curve"])
        line, = ax.plot(steps, accs, marker="o", label=f"seed {r['seed']}")
        ax.axhline(r["baseline"], color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out greedy accuracy (run's own eval)")
    ax.set_title("countdown-tiny over seeds (dotted: best target-blind baseline)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3])
    p.add_argument("--score", type=Path, nargs="*", default=None, help="score these finished run directories instead")
    p.add_argument("--out", type=Path, default=None, help="where runs and the summary go (default runs/seeds-<stamp>)")
    p.add_argument("--max-staleness", type=int, default=0, help="train asynchronously, up to this many versions ahead")
    args = p.parse_args()
    console = Console(width=110)
    out = args.out or ROOT / "runs" / f"seeds-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    run_dirs = args.score if args.score is not None else [train(seed, out, console, args.max_staleness) for seed in args.seeds]
    results = []
    for run_dir in run_dirs:
        run = validation.validate(json.loads((run_dir / "run.json").read_text()), source=str(run_dir / "run.json"))
        s = scoring.score(run_dir / "model", run.spec)
        results.append({"seed": run.spec.algorithm.seed, "run_dir": str(run_dir), "curve": evaluations(run_dir), **s,
                        "margin": s["accuracy"] - s["baseline"]})
    table = Table(title=f"countdown-tiny: held-out greedy accuracy over seeds ({results[0]['prompts']} held-out tasks each)")
    for col in ("seed", "accuracy", "baseline", "margin", "swapped", "accuracy - swapped", "test passes"):
        table.add_column(col, justify="right")
    for r in results:
        r["reads_target"] = r["accuracy"] - r["swapped"]
        table.add_row(str(r["seed"]), f"{r['accuracy']:.3f}", f"{r['baseline']:.3f}", f"{r['margin']:+.3f}",
                      f"{r['swapped']:.3f}", f"{r['reads_target']:+.3f}", "yes" if passes(r) else "[red]no[/]")
    table.add_section()
    spread = lambda key: " / ".join(f"{f([r[key] for r in results]):+.3f}" for f in (min, statistics.mean, max))  # noqa: E731
    table.add_row("min / mean / max", "", "", spread("margin"), "", spread("reads_target"), "")
    table.add_row("the test asks", "", "", f">= {MARGIN:+.3f}", f"<= baseline {SWAP_SLACK:+.3f}", f">= {READS_TARGET:+.3f}", "")
    console.print(table)
    (out / "summary.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "spread.png")
    console.print(f"summary: {out / 'summary.json'}, plot: {out / 'spread.png'}")


if __name__ == "__main__":
    main()
