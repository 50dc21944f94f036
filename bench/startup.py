"""What a run's processes pay to import their libraries, with the virtualenv's bytecode and without it.

Every process a local run starts (the trainer ranks, each Ray rollout worker, the model build)
imports torch, transformers and, in the trainer, DeepSpeed. `make venv` compiles the virtualenv to
bytecode; without that, and with PYTHONDONTWRITEBYTECODE set (as in many CI and container
environments), each of those processes compiles the libraries from source again. "without" points
Python's bytecode cache at an empty folder (PYTHONPYCACHEPREFIX), which is what an uncompiled
virtualenv looks like to it. Each import set runs in a fresh interpreter, REPEAT times, alternating.

    python bench/startup.py             # the virtualenv this Python runs in
    python bench/startup.py --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from rich.console import Console
from rich.table import Table

# what each kind of process imports before it does any work (their modules' own imports)
PROCESSES = {
    "trainer rank": "import zeroth.trainer.main, zeroth.trainer.loop, zeroth.trainer.engine, transformers.models.gpt2.modeling_gpt2",
    "rollout worker": "import ray, zeroth.rollout.worker, transformers.models.gpt2.modeling_gpt2",
    "operator": "import kopf, zeroth.operator.handlers",
}


def seconds(code: str, without: str | None) -> float:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if without:
        env["PYTHONPYCACHEPREFIX"] = without  # empty, and never written to: every module compiled from source
    else:
        env.pop("PYTHONPYCACHEPREFIX", None)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    console = Console()
    table = Table(title=f"import time of a run's processes ({args.repeat} runs each, median)")
    for column in ("process", "with bytecode (s)", "compiled from source (s)", "ratio"):
        table.add_column(column, justify="right" if column != "process" else "left")
    with tempfile.TemporaryDirectory() as empty, console.status("importing") as status:
        for name, code in PROCESSES.items():
            with_, without = [], []
            for i in range(args.repeat):
                status.update(f"{name}: run {i + 1} of {args.repeat}")
                with_.append(seconds(code, None))
                without.append(seconds(code, empty))
            a, b = statistics.median(with_), statistics.median(without)
            table.add_row(name, f"{a:.1f}", f"{b:.1f}", f"{b / a:.2f}x")
    console.print(table)


if __name__ == "__main__":
    main()
