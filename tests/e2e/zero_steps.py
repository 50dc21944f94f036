"""Run by tests/e2e/test_zero_stages.py under torchrun: two GRPO steps of the real Policy on fixed
samples with a given ZeRO stage; rank 0 prints the losses and the final weights' norms as JSON."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch


def main(stage: int, model_dir: Path) -> None:
    import deepspeed
    import torch.distributed as dist

    from zeroth import validation
    from zeroth.rollout.worker import Sample
    from zeroth.trainer.engine import Policy

    deepspeed.init_distributed(dist_backend="gloo")
    m = {"apiVersion": "zeroth.dev/v1alpha1", "kind": "ReasoningRun", "metadata": {"name": "zero"},
         "spec": {"dataset": {"source": "builtin:countdown"}, "verifiers": [{"name": "countdown"}]}}
    m["spec"]["model"] = {"name": str(model_dir), "dtype": "float32"}
    m["spec"]["algorithm"] = {"groupSize": 4, "promptsPerStep": 4, "learningRate": 1e-3}
    m["spec"]["trainer"] = {"replicas": 2, "gpusPerReplica": 0, "microBatchSize": 4, "deepspeed": {"zeroStage": stage}}
    m["spec"]["rollout"] = {"engine": "hf", "gpusPerReplica": 0}
    spec = validation.validate(m).spec
    policy = Policy(spec, str(model_dir), per_rank=8)
    rank = dist.get_rank()
    initial = {k: float(v.float().norm()) for k, v in policy.state_dict().items()}
    rng = random.Random(rank)
    samples = [Sample(task_id=f"t{i}", group=i // 4, prompt_ids=[1] + [rng.randrange(4, 20) for _ in range(5)],
                      completion_ids=[rng.randrange(4, 20) for _ in range(3 + i % 4)], logprobs=[0.0] * (3 + i % 4),
                      completion="", reward=0.0, scores={}, correct=False, truncated=False, version=0)
               for i in range(8)]
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5] * 2)
    tokens = 2 * sum(len(s.completion_ids) for s in samples)
    losses = [policy.train_step(samples, advantages, tokens, weights_version=0)["loss"] for _ in range(2)]
    weights = policy.state_dict()
    if rank == 0:
        print(json.dumps({"losses": losses, "initial": initial,
                          "norms": {k: float(v.float().norm()) for k, v in weights.items()}}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
