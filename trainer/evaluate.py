"""`zeroth eval RUN_DIR`: held-out greedy accuracy, pass@k and maj@k of a run's trained model.

Loads `RUN_DIR/model` (written when the run finishes) through `from_pretrained` and samples with
the same rollout worker the run used, on this process, without Ray or DeepSpeed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def evaluate(run_dir: Path, k: int | None = None, limit: int | None = None, model: Path | None = None) -> dict:
    from zeroth import validation
    from zeroth.rollout.worker import RolloutWorker
    from zeroth.trainer import data
    from zeroth.trainer.loop import pass_maj

    run = validation.validate(json.loads((run_dir / "run.json").read_text()), source=str(run_dir / "run.json"))
    spec = run.spec
    k = k or spec.eval.samples_per_prompt
    held_out = data.load_tasks(spec.dataset, spec.dataset.eval_split, spec.algorithm.seed,
                               limit=limit or spec.dataset.eval_size)
    tasks = [{"id": t.id, "prompt": t.prompt, "gold": t.gold} for t in held_out]
    worker = RolloutWorker(str(model or run_dir / "model"), spec.model_dump(by_alias=True, mode="json"))
    greedy = worker.generate(tasks, 1, seed=0, greedy=True)
    sampled = worker.generate(tasks, k, seed=1, temperature=spec.eval.temperature)
    pass_k, maj_k = pass_maj(sampled, k)
    return {"greedy": float(np.mean([s.correct for s in greedy])), f"pass@{k}": pass_k, f"maj@{k}": maj_k,
            "k": k, "prompts": len(tasks)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="zeroth eval", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--k", type=int, default=None, help="samples per prompt (default: spec.eval.samplesPerPrompt)")
    p.add_argument("--limit", type=int, default=None, help="held-out prompts (default: spec.dataset.evalSize)")
    p.add_argument("--model", type=Path, default=None, help="a model folder other than RUN_DIR/model")
    args = p.parse_args(argv)
    print(json.dumps(evaluate(args.run_dir, args.k, args.limit, args.model)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
