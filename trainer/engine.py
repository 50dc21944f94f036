"""The policy on DeepSpeed: log-probs, the GRPO update, checkpoints, weights for the rollout fleet.

`torch.distributed` with gloo on CPU and NCCL on GPU, the same code. Every rank holds a shard of
each step's samples; DeepSpeed averages gradients over ranks and micro-batches, so each
micro-batch's loss is normalised to give the loss of the whole step (see `_micro_loss_scale`).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.distributed as dist

from zeroth import api
from zeroth.rollout.worker import Sample
from zeroth.trainer import grpo


def ds_config(spec: api.ReasoningRunSpec, world: int, per_rank: int) -> tuple[dict[str, Any], int]:
    """The DeepSpeed config for `per_rank` samples a step on each of `world` ranks, and the micro-batch size."""
    micro = math.gcd(per_rank, spec.trainer.micro_batch_size)  # equal micro-batches keep the mean exact
    ds = spec.trainer.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    config = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": per_rank // micro,
        "train_batch_size": per_rank * world,
        "gradient_clipping": spec.algorithm.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": spec.model.dtype == "bfloat16"},
        "fp16": {"enabled": spec.model.dtype == "float16"},
        # a plain torch AdamW: DeepSpeed's fused CPU Adam would JIT-compile for ~40 s first
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    return config, micro


def pad_batch(samples: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """Prompts left-padded, completions right-padded, positions counted over real tokens only —
    the layout `generate` used, so recomputed log-probs match the behaviour log-probs."""
    P = max(len(s.prompt_ids) for s in samples)
    T = max(max(len(s.completion_ids) for s in samples), 1)
    B = len(samples)
    ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + T), dtype=torch.long)
    old = torch.zeros((B, T))
    for i, s in enumerate(samples):
        p, c = len(s.prompt_ids), len(s.completion_ids)
        ids[i, P - p:P] = torch.tensor(s.prompt_ids)
        ids[i, P:P + c] = torch.tensor(s.completion_ids, dtype=torch.long)
        attn[i, P - p:P + c] = 1
        old[i, :c] = torch.tensor(s.logprobs)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": attn, "position_ids": positions, "prompt_len": P,
            "completion_mask": attn[:, P:].float(), "behaviour_logp": old}


def token_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor], temperature: float,
                   with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs (B, T) of the completion tokens at the sampling temperature, and entropy."""
    P = batch["prompt_len"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], use_cache=False).logits
    logits = logits[:, P - 1:-1].float() / temperature
    target = batch["input_ids"][:, P:]
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    return logp, entropy


class Policy:
    def __init__(self, spec: api.ReasoningRunSpec, model_path: str, per_rank: int):
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.spec = spec
        self.world = dist.get_world_size()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, revision=spec.model.revision,
                                                       trust_remote_code=spec.model.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(model_path, revision=spec.model.revision,
                                                     dtype=getattr(torch, spec.model.dtype),
                                                     trust_remote_code=spec.model.trust_remote_code)
        for module in model.modules():  # RL on log-prob ratios wants the same function in both passes
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        self.ref = None
        if spec.algorithm.kl_coef > 0:  # no reference model unless the KL term is on
            self.ref = copy.deepcopy(model).eval().requires_grad_(False)
        if spec.trainer.deepspeed.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        algo = spec.algorithm
        opt = torch.optim.AdamW(model.parameters(), lr=algo.learning_rate, weight_decay=algo.weight_decay)
        warmup = algo.warmup_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        config, self.micro = ds_config(spec, self.world, per_rank)
        self.gas = config["gradient_accumulation_steps"]
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=opt, lr_scheduler=sched, config=config)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    @torch.no_grad()
    def logprobs(self, samples: list[Sample]) -> torch.Tensor:
        batch = pad_batch(samples, self.pad_id)
        self.engine.eval()
        logp, _ = token_logprobs(self.engine, batch, self.spec.algorithm.temperature)
        return logp * batch["completion_mask"]

    def train_step(self, samples: list[Sample], advantages: torch.Tensor, global_tokens: int) -> dict[str, float]:
        """One optimizer step (times `updatesPerStep`) on this rank's samples; returns local sums for metrics."""
        algo = self.spec.algorithm
        totals: dict[str, float] = {}
        n_micro = 0
        # With one pass over the samples the policy before the update is the one being trained:
        # pi_old = pi_theta.detach(), and the extra log-prob pass is skipped (as TRL does).
        recompute = algo.updates_per_step > 1
        old_all = [self.logprobs(samples[i:i + self.micro]) for i in range(0, len(samples), self.micro)] if recompute else None
        mismatch: list[torch.Tensor] = []
        for update in range(algo.updates_per_step):
            self.engine.train()
            for k, start in enumerate(range(0, len(samples), self.micro)):
                chunk = samples[start:start + self.micro]
                batch = pad_batch(chunk, self.pad_id)
                mask = batch["completion_mask"]
                if algo.overlong.filter:
                    mask = grpo.filter_overlong(mask, torch.tensor([s.truncated for s in chunk]))
                logp, entropy = token_logprobs(self.engine, batch, algo.temperature, with_entropy=True)
                old = old_all[k][:, :mask.shape[1]] if recompute else logp.detach()
                if update == 0:  # trainer vs rollout log-probs of the same tokens (train/inference mismatch)
                    real = batch["completion_mask"]
                    mismatch.append(((old - batch["behaviour_logp"]).abs() * real)[real.bool()])
                ref = None
                if self.ref is not None:
                    with torch.no_grad():
                        ref, _ = token_logprobs(self.ref, batch, algo.temperature)
                loss, m = grpo.policy_loss(
                    logp, old, advantages[start:start + self.micro], mask, algo, ref_logp=ref, entropy=entropy,
                    max_response_tokens=algo.max_response_tokens,
                    num_tokens=global_tokens / (self.world * self.gas),
                )
                self.engine.backward(loss)
                self.engine.step()
                n_micro += 1
                totals["loss"] = totals.get("loss", 0.0) + loss.item()
                for key, value in m.items():
                    totals[key] = totals.get(key, 0.0) + float(value)
        out = {k: v / n_micro for k, v in totals.items()}
        diffs = torch.cat(mismatch) if mismatch else torch.zeros(1)
        out["logprob_mismatch"] = float(diffs.mean()) if diffs.numel() else 0.0
        out["logprob_mismatch_max"] = float(diffs.max()) if diffs.numel() else 0.0
        out["grad_norm"] = float(self.engine.get_global_grad_norm() or 0.0)
        out["learning_rate"] = float(self.scheduler.get_last_lr()[0])
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights on every rank (ZeRO-3 gathers its shards; stages 0-2 hold them whole)."""
        if self.spec.trainer.deepspeed.zero_stage == 3:
            import deepspeed

            params = list(self.engine.module.parameters())
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                return {k: v.detach().clone() for k, v in self.engine.module.state_dict().items()}
        return self.engine.module.state_dict()

    def save(self, directory: str, tag: str, client_state: dict[str, Any]) -> None:
        self.engine.save_checkpoint(directory, tag=tag, client_state=client_state, save_latest=False)

    def load(self, directory: str, tag: str) -> dict[str, Any]:
        _, client_state = self.engine.load_checkpoint(directory, tag=tag)
        return client_state or {}
