"""The policy on DeepSpeed: log-probs, the GRPO update, checkpoints, weights for the rollout fleet.

`torch.distributed` with gloo on CPU and NCCL on GPU, the same code: every tensor a step uses is built
on, or moved to, the engine's device (`self.engine.device`), and the reference model lives there too.
Every rank holds a shard of each step's samples; DeepSpeed averages gradients over ranks and
micro-batches, so each micro-batch's loss is normalised to give the loss of the whole step:
micro-batches have equal sizes (`ds_config`), and dapo's token count is scaled (`grpo.policy_loss`,
`num_tokens`). Micro-batches are length-sorted (`micro_batches`) where that leaves the loss unchanged.
"""

from __future__ import annotations

import copy
import functools
import inspect
import itertools
import math
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from zeroth import api
from zeroth.rollout.worker import Sample
from zeroth.trainer import compute, grpo

# fp32 elements of the logits converted at once by `token_logprobs` (64 MiB): the (B, T, V) fp32
# log-softmax of a whole micro-batch is never built (B 64, T 4096, V 152k would be 160 GB).
LOGIT_BLOCK_ELEMENTS = 1 << 24


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
        # A plain torch AdamW, also under ZeRO-Offload (where DeepSpeed refuses a client optimizer
        # unless told otherwise): DeepSpeed's CPU Adam is a C++ op built at start-up, which the
        # images cannot do (no compiler) and which took 3.7 min on 2 busy cores here.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    return config, micro


def pad_batch(samples: list[Sample], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Prompts left-padded, completions right-padded, positions counted over real tokens only —
    the layout `generate` used, so recomputed log-probs match the behaviour log-probs. On `device`."""
    P = max(len(s.prompt_ids) for s in samples)
    T = max(max(len(s.completion_ids) for s in samples), 1)
    B = len(samples)
    ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + T), dtype=torch.long)
    behaviour = torch.zeros((B, T))
    for i, s in enumerate(samples):
        p, c = len(s.prompt_ids), len(s.completion_ids)
        ids[i, P - p:P] = torch.tensor(s.prompt_ids)
        ids[i, P:P + c] = torch.tensor(s.completion_ids, dtype=torch.long)
        attn[i, P - p:P + c] = 1
        behaviour[i, :c] = torch.tensor(s.logprobs)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    batch = {"input_ids": ids, "attention_mask": attn, "position_ids": positions,
             "completion_mask": attn[:, P:].float(), "behaviour_logp": behaviour}
    return {k: v.to(device) for k, v in batch.items()}


def micro_batches(samples: list[Sample], micro: int, length_sorted: bool) -> list[list[int]]:
    """Indices of the samples of each micro-batch, `micro` each.

    Length-sorted (by completion, then prompt length), a micro-batch is padded to its own longest
    sample rather than to whichever long sample its groups happen to hold. The loss must not depend
    on which samples share a micro-batch: true of grpo, dr-grpo and dapo (their per-micro-batch
    normalisers add up to the step's), not of bnpo, whose denominator is its micro-batch's own token
    count: bnpo keeps group order.
    """
    order = list(range(len(samples)))
    if length_sorted:
        order.sort(key=lambda i: (len(samples[i].completion_ids), len(samples[i].prompt_ids)))
    return [order[i:i + micro] for i in range(0, len(order), micro)]


Entropy = Literal["none", "metric", "grad"]


def _block(logits: torch.Tensor, target: torch.Tensor, temperature: float,
           entropy: Entropy) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of `target` and the entropy, for one block of logits, in fp32.

    log_softmax rather than logit[token] - logsumexp(logits): the same number, and one fused kernel
    on CPU, where torch's logsumexp is several passes (about 1.9x slower forward and backward here).
    """
    x = logits.float()
    if temperature != 1.0:
        x = x / temperature
    logp_all = torch.log_softmax(x, dim=-1)
    logp = logp_all.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    if entropy == "none":
        return logp, None
    with torch.set_grad_enabled(entropy == "grad" and torch.is_grad_enabled()):
        return logp, -(logp_all.exp() * logp_all).sum(-1)


def _blockwise(logits: torch.Tensor, target: torch.Tensor, temperature: float,
               entropy: Entropy) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`_block` over (B, T, V) logits in blocks of at most LOGIT_BLOCK_ELEMENTS -> (B, T) each.

    Under autograd each block is checkpointed: its fp32 log-softmax is recomputed in the backward
    pass instead of being kept, so what the graph holds is the logits themselves (in the model's
    dtype), never an fp32 tensor of vocabulary width. Blocks are `split`s, whose backward
    concatenates their gradients once (a slice's would fill a zero tensor the size of all the
    logits for every block).
    """
    B, T, V = logits.shape
    t_step = max(1, min(T, LOGIT_BLOCK_ELEMENTS // V))
    b_step = max(1, LOGIT_BLOCK_ELEMENTS // (t_step * V))
    grad = torch.is_grad_enabled() and logits.requires_grad
    fn = functools.partial(_block, temperature=temperature, entropy=entropy)

    def split(x: torch.Tensor, size: int, dim: int) -> tuple[torch.Tensor, ...]:
        return x.split(size, dim) if size < x.shape[dim] else (x,)

    rows = []
    for row_logits, row_target in zip(split(logits, b_step, 0), split(target, b_step, 0)):
        rows.append([
            # the blocks use no randomness: no RNG state to save
            checkpoint(fn, lg, tg, use_reentrant=False, preserve_rng_state=False) if grad else fn(lg, tg)
            for lg, tg in zip(split(row_logits, t_step, 1), split(row_target, t_step, 1))
        ])

    def assemble(i: int) -> torch.Tensor:
        return torch.cat([torch.cat([block[i] for block in row], dim=1) for row in rows], dim=0)

    return assemble(0), assemble(1) if entropy != "none" else None


def _keeps_logits(model: torch.nn.Module) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' causal LMs do, also as the
    positions to keep): then only the completion's logits are computed."""
    forward = getattr(model, "module", model).forward  # a DeepSpeed engine forwards **kwargs to .module
    return "logits_to_keep" in inspect.signature(forward).parameters


def token_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor], temperature: float,
                   entropy: Entropy = "none") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs (B, T) of the completion tokens at the sampling temperature, and entropy.

    log p(token) = logit[token] - logsumexp(logits), block by block (`_blockwise`), on the
    completion's positions only: the logits of the prompt are never computed, and no fp32 tensor of
    vocabulary width is built for the whole batch. Entropy: "grad" in the graph (an entropy bonus),
    "metric" without grad (for monitoring only), "none" not computed.
    """
    L, T = batch["input_ids"].shape[1], batch["completion_mask"].shape[1]
    predicting = torch.arange(L - T - 1, L - 1, device=batch["input_ids"].device)  # position i predicts token i + 1
    keep = _keeps_logits(model)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], use_cache=False,
                   **({"logits_to_keep": predicting} if keep else {})).logits
    if not keep:
        logits = logits[:, L - T - 1:L - 1]
    target = batch["input_ids"][:, -T:]
    return _blockwise(logits, target, temperature, entropy)


class Policy:
    def __init__(self, spec: api.ReasoningRunSpec, model_path: str, per_rank: int):
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.spec = spec
        self.world = dist.get_world_size()
        self.dtype = getattr(torch, spec.model.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, revision=spec.model.revision,
                                                       trust_remote_code=spec.model.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(model_path, revision=spec.model.revision, dtype=self.dtype,
                                                     trust_remote_code=spec.model.trust_remote_code)
        for module in model.modules():  # RL on log-prob ratios wants the same function in both passes
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        # no reference model unless the KL term is on; copied before DeepSpeed wraps (and, with
        # ZeRO-3, partitions) the policy
        reference = copy.deepcopy(model) if spec.algorithm.kl_coef > 0 else None
        if spec.trainer.deepspeed.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        algo = spec.algorithm
        self.parameters = sum(p.numel() for p in model.parameters())  # whole, before ZeRO-3 partitions them
        cuda = torch.cuda.is_available() and spec.trainer.gpus_per_replica > 0
        peak = spec.trainer.peak_tflops_per_gpu
        self.peak_flops = (peak * 1e12 if peak else compute.peak_flops(torch.cuda.get_device_name())) if cuda else None
        opt = torch.optim.AdamW(model.parameters(), lr=algo.learning_rate, weight_decay=algo.weight_decay)
        warmup = algo.warmup_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        config, self.micro = ds_config(spec, self.world, per_rank)
        self.gas = config["gradient_accumulation_steps"]
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=opt, lr_scheduler=sched, config=config)
        self.ref = self._reference(reference, config) if reference is not None else None

    def _reference(self, model: torch.nn.Module, config: dict[str, Any]) -> torch.nn.Module:
        """The frozen reference, on the policy's device and in its dtype.

        With ZeRO-3 DeepSpeed wraps it as an inference engine (no optimizer) with the policy's ZeRO
        config, so it is partitioned (and offloaded, with offloadParams) like the policy, never
        whole on a rank (DeepSpeed's ZeRO-Inference; TRL prepares its reference model the same way).
        Stages 0-2 hold the whole policy on every rank anyway: the reference is placed beside it.
        """
        model = model.eval().requires_grad_(False)
        if self.spec.trainer.deepspeed.zero_stage != 3:
            return model.to(device=self.engine.device, dtype=self.dtype)
        import deepspeed

        zero = {k: v for k, v in config["zero_optimization"].items() if k != "offload_optimizer"}
        engine, *_ = deepspeed.initialize(model=model, config={**config, "zero_optimization": zero})
        engine.eval()
        return engine

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def train_step(self, samples: list[Sample], advantages: torch.Tensor, global_tokens: int,
                   weights_version: int) -> dict[str, float]:
        """One optimizer step (times `updatesPerStep`) on this rank's samples; returns local sums for metrics.

        weights_version: the version of the weights being trained; samples drawn with an older one
        are stale (`grpo.policy_loss`, off-policy corrections).
        """
        algo = self.spec.algorithm
        device = self.engine.device
        advantages = advantages.to(device)
        batches = []
        for index in micro_batches(samples, self.micro, length_sorted=algo.loss_type != "bnpo"):
            chunk = [samples[i] for i in index]
            batch = pad_batch(chunk, self.pad_id, device)
            batch["advantages"] = advantages[torch.tensor(index, device=device)]  # advantages follow their samples
            batch["stale"] = torch.tensor([s.version < weights_version for s in chunk], device=device)
            batch["loss_mask"] = batch["completion_mask"]
            if algo.overlong.filter:
                batch["loss_mask"] = grpo.filter_overlong(batch["loss_mask"],
                                                          torch.tensor([s.truncated for s in chunk], device=device))
            batches.append(batch)
        # With one pass over the samples the policy before the update is the one being trained:
        # pi_old = pi_theta.detach(), and the extra log-prob pass is skipped (as TRL does).
        olds = [self._logprobs(self.engine, b) for b in batches] if algo.updates_per_step > 1 else None
        refs = [self._logprobs(self.ref, b) for b in batches] if self.ref is not None else None
        totals: dict[str, float] = {}
        n_micro = 0
        # trainer vs rollout log-probs of the same tokens (train/inference mismatch, and staleness):
        # device sums, no data-dependent indexing
        mismatch_sum = mismatch_max = mismatch_tokens = torch.zeros((), device=device)
        entropy_mode = "grad" if algo.entropy_coef != 0 else "metric"
        for update in range(algo.updates_per_step):
            self.engine.train()
            for k, batch in enumerate(batches):
                logp, entropy = token_logprobs(self.engine, batch, algo.temperature, entropy=entropy_mode)
                old = olds[k] if olds is not None else logp.detach()
                if update == 0:
                    real = batch["completion_mask"]
                    diff = (old - batch["behaviour_logp"]).abs() * real
                    mismatch_sum, mismatch_tokens = mismatch_sum + diff.sum(), mismatch_tokens + real.sum()
                    mismatch_max = torch.maximum(mismatch_max, diff.max())
                loss, m = grpo.policy_loss(
                    logp, old, batch["advantages"], batch["loss_mask"], algo,
                    ref_logp=refs[k] if refs is not None else None, entropy=entropy,
                    max_response_tokens=algo.max_response_tokens,
                    num_tokens=global_tokens / (self.world * self.gas),
                    behaviour_logp=batch["behaviour_logp"], stale=batch["stale"],
                )
                self.engine.backward(loss)
                self.engine.step()
                n_micro += 1
                totals["loss"] = totals.get("loss", 0.0) + loss.item()
                for key, value in m.items():
                    totals[key] = totals.get(key, 0.0) + float(value)
        out = {k: v / n_micro for k, v in totals.items()}
        out["logprob_mismatch"] = float(mismatch_sum / mismatch_tokens.clamp(min=1.0))
        out["logprob_mismatch_max"] = float(mismatch_max)
        out["grad_norm"] = float(self.engine.get_global_grad_norm() or 0.0)
        out["learning_rate"] = float(self.scheduler.get_last_lr()[0])
        return out

    @torch.no_grad()
    def _logprobs(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        model.eval()
        logp, _ = token_logprobs(model, batch, self.spec.algorithm.temperature)
        return logp * batch["completion_mask"]

    def weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's state dict, entry by entry, as CPU tensors. Every rank must run it to the end:
        with ZeRO-3 the gathers are collective.

        ZeRO-3 gathers one module's own parameters at a time and takes them to the CPU before
        releasing them, so no rank ever holds more than one layer whole on its device (DeepSpeed's
        private `_zero3_consolidated_16bit_state_dict` does the same into one dict on rank 0, not
        streamed). Stages 0-2 hold whole weights: the CPU's are yielded as they are (the rollout
        sync copies them), a GPU's copied one tensor at a time.
        """
        entries = self.engine.module.state_dict(keep_vars=True)
        if self.spec.trainer.deepspeed.zero_stage != 3:
            for name, tensor in entries.items():
                yield name, tensor.detach().cpu()
            return
        import deepspeed

        for _, names in itertools.groupby(entries, key=lambda name: name.rpartition(".")[0]):
            group = {name: entries[name] for name in names}  # one module's own parameters and buffers
            partitioned = [t for t in group.values() if hasattr(t, "ds_id")]
            with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
                # DeepSpeed releases a gathered parameter by rebinding its .data, so these stay valid
                copies = [(name, t.detach().cpu()) for name, t in group.items()]
            yield from copies  # after the release: a caller that stops early leaves no gather open

    def state_dict(self, keep: bool = True) -> dict[str, torch.Tensor]:
        """`weights` collected. Every rank must call it; keep=False takes part in the gathers and
        keeps nothing (a rank that sends the weights nowhere)."""
        out = {}
        for name, tensor in self.weights():
            if keep:
                out[name] = tensor
        return out

    def save(self, directory: str, tag: str, client_state: dict[str, Any]) -> None:
        self.engine.save_checkpoint(directory, tag=tag, client_state=client_state, save_latest=False)

    def load(self, directory: str, tag: str) -> dict[str, Any]:
        _, client_state = self.engine.load_checkpoint(directory, tag=tag)
        return client_state or {}
