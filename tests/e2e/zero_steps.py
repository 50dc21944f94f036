"""Run by tests/e2e/test_zero_stages.py under torchrun: for each loss type of LOSSES, two GRPO steps
of the real Policy with a given ZeRO stage on the fixed samples of `rank_samples`, with gradient
accumulation (MICRO samples a micro-batch, PER_RANK a rank). Rank 0 prints the losses and the final
weights' norms as JSON and saves the full (unpartitioned) gradient of the first optimizer step,
taken at the accumulation boundary just before `engine.step()` applies it, to `<out>/grads.pt`.

The samples and the loss options live here so that the test computes its single-process reference
from the same data; this module imports nothing but the standard library at import time.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

WORLD = 2
PER_RANK = 8  # samples on each rank a step
MICRO = 2  # samples a micro-batch: 4 accumulation steps
TEMPERATURE = 0.7
MAX_RESPONSE_TOKENS = 8  # dr-grpo's constant normaliser; no completion is longer
CLIP = 0.2  # clipLow and clipHigh
IS_CAP = 3.0  # importanceSamplingCap: caps 7 of the 68 tokens' weights
# Loss type -> extra `algorithm` fields. dapo also turns on truncated importance sampling, which
# weighs each token by min(exp(trainer logp - behaviour logp), cap): the behaviour log-probs count.
LOSSES: dict[str, dict] = {"grpo": {}, "dapo": {"importanceSampling": True}, "dr-grpo": {}}


def rank_samples(rank: int) -> list[dict]:
    """This rank's PER_RANK samples: prompts and completions of varying lengths (so micro-batches pad
    and hold different token counts, and the ranks hold different token counts), behaviour log-probs
    and advantages that are not zero (and do not average to zero)."""
    rng = random.Random(1000 + rank)
    out = []
    for _ in range(PER_RANK):
        n = rng.randint(1, MAX_RESPONSE_TOKENS)
        out.append({"prompt_ids": [1] + [rng.randrange(4, 20) for _ in range(rng.randint(1, 6))],
                    "completion_ids": [rng.randrange(4, 20) for _ in range(n)],
                    "logprobs": [-rng.uniform(1.0, 5.0) for _ in range(n)],
                    "advantage": rng.uniform(-1.0, 2.0)})
    return out


def global_tokens() -> int:
    return sum(len(s["completion_ids"]) for rank in range(WORLD) for s in rank_samples(rank))


def manifest(stage: int, model_dir: Path, loss_type: str) -> dict:
    m = {"apiVersion": "zeroth.dev/v1alpha1", "kind": "ReasoningRun", "metadata": {"name": "zero"},
         "spec": {"dataset": {"source": "builtin:countdown"}, "verifiers": [{"name": "countdown"}]}}
    m["spec"]["model"] = {"name": str(model_dir), "dtype": "float32"}
    m["spec"]["algorithm"] = {"groupSize": 4, "promptsPerStep": 4, "learningRate": 1e-3, "lossType": loss_type,
                              "temperature": TEMPERATURE, "maxResponseTokens": MAX_RESPONSE_TOKENS,
                              "clipLow": CLIP, "clipHigh": CLIP, "importanceSamplingCap": IS_CAP, **LOSSES[loss_type]}
    m["spec"]["trainer"] = {"replicas": WORLD, "gpusPerReplica": 0, "microBatchSize": MICRO,
                            "deepspeed": {"zeroStage": stage}}
    m["spec"]["rollout"] = {"engine": "hf", "gpusPerReplica": 0}
    return m


def capture_first_step(policy) -> dict:
    """Wraps `policy.engine.step` (on this policy only) to record, once, the full gradient of every
    parameter at the first accumulation boundary, before the step applies and clears it. Every rank
    records (the gathers are collective under ZeRO 1-3); the dict fills on each."""
    from deepspeed.utils import safe_get_full_grad

    engine, grads = policy.engine, {}
    step = engine.step

    def recording_step(*args, **kwargs):
        if not grads and engine.is_gradient_accumulation_boundary():
            for name, param in engine.module.named_parameters():
                grad = safe_get_full_grad(param)
                grads[name] = None if grad is None else grad.detach().float().cpu().clone()
        return step(*args, **kwargs)

    engine.step = recording_step
    return grads


def main(stage: int, model_dir: Path, out: Path) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist

    from zeroth import validation
    from zeroth.rollout.worker import Sample
    from zeroth.trainer.engine import Policy
    from zeroth.trainer.main import skip_shared_memory_allreduce

    skip_shared_memory_allreduce()  # as the trainer starts on a CPU: no g++ build of an op training never uses
    deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    assert dist.get_world_size() == WORLD
    mine = rank_samples(rank)
    samples = [Sample(task_id=f"t{i}", group=i // 4, prompt_ids=s["prompt_ids"], completion_ids=s["completion_ids"],
                      logprobs=s["logprobs"], completion="", reward=0.0, scores={}, correct=False, truncated=False,
                      version=0)
               for i, s in enumerate(mine)]
    advantages = torch.tensor([s["advantage"] for s in mine])
    results, all_grads = {}, {}
    for loss_type in LOSSES:
        spec = validation.validate(manifest(stage, model_dir, loss_type)).spec
        policy = Policy(spec, str(model_dir), per_rank=PER_RANK)
        initial = {k: float(v.float().norm()) for k, v in policy.state_dict().items()}
        grads = capture_first_step(policy)
        stats = [policy.train_step(samples, advantages, global_tokens(), weights_version=0) for _ in range(2)]
        gathered = [None] * WORLD
        dist.all_gather_object(gathered, [s["loss"] for s in stats])  # each rank's loss of each step
        weights = policy.state_dict()
        results[loss_type] = {"losses": gathered, "initial": initial, "accumulation": policy.gas,
                              "norms": {k: float(v.float().norm()) for k, v in weights.items()}}
        all_grads[loss_type] = grads
        policy.engine.destroy()
    if rank == 0:
        torch.save(all_grads, out / "grads.pt")
        print(json.dumps(results), flush=True)
    dist.barrier()  # no rank tears down while another still works
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
