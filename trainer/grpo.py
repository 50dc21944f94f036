"""The GRPO loss and its variants, as options of one loss: pure tensor functions, no I/O.

Papers: GRPO — Shao et al. 2024, "DeepSeekMath" (group-relative advantages, clipped ratio, k3 KL
per token); Dr. GRPO — Liu et al. 2025, "Understanding R1-Zero-Like Training" (no std scaling,
constant-length normaliser); DAPO — Yu et al. 2025 (clip-higher, token-level mean, dynamic sampling,
overlong filtering and soft punishment); KL estimators — Schulman 2020, "Approximating KL divergence".

Conventions follow TRL's `GRPOTrainer` (trl 1.16), against which `tests/unit/test_grpo.py` checks
values and gradients. Where this departs from the papers, and why:
- std is the unbiased (Bessel-corrected) sample std and 1e-4 is added to it, as TRL does;
  the papers do not say which std, and the epsilon only matters for all-equal groups (advantage 0).
- "batch" scaling still subtracts the group mean, divides by the batch std (as TRL does).
- The KL term is estimated on samples of pi_old, not pi_theta, with no importance correction
  (DeepSeekMath and TRL's default do the same; it is exact only on-policy).
- The entropy bonus is the mean entropy over the batch's loss tokens whatever the loss type (TRL),
  so its weight does not change with the aggregation.

Off-policy samples (samples the trainer's current weights did not draw), two corrections, options of
the same loss (`off_policy_options`):
- Stale samples (drawn with weights older than the trainer's, `maxStaleness` >= 1): the clipped
  ratio's old policy is the behaviour policy, i.e. the log-probs the rollout returned, since the
  trainer no longer has the weights that drew them. The trust region is then anchored where the
  samples came from, and clipping binds on tokens the trainer has already moved more than the clip
  range away from (PPO's own pi_old: the policy that collected the data).
- Train/inference mismatch: the rollout engine (vLLM, bf16 kernels) and the trainer compute
  slightly different distributions from the same weights. Tokens whose ratio is anchored at the
  trainer's own log-probs get a detached, truncated importance weight
  min(pi_trainer_old / pi_behaviour, cap) on their policy-gradient term (Yao et al. 2025, "Your
  efficient RL framework secretly brings you off-policy RL training"; TRL's
  `vllm_importance_sampling_correction` in `token_truncate` mode, veRL's rollout importance
  sampling). Tokens anchored at the behaviour policy get none: their ratio already divides by it.
  With the first correction off and this one on, stale samples are anchored at the trainer's
  current log-probs and weighted by the truncated ratio to the behaviour policy: the decoupled
  objective of Hilton et al. 2022, "Batch size-invariance for policy optimization" (AReaL).

Shapes: B samples (prompts * G, group-contiguous: the G samples of a prompt are adjacent), T
completion tokens (right-padded; `mask` is 1 on tokens that count).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

import torch
from torch import Tensor

from zeroth.api import AlgorithmSpec

# The API model is the one source of truth for names (AGGREGATIONS must cover its loss_type
# exactly: tests/unit/test_grpo.py checks).
SCALE_REWARDS: tuple[str, ...] = get_args(AlgorithmSpec.model_fields["scale_rewards"].annotation)
KL_ESTIMATORS: tuple[str, ...] = get_args(AlgorithmSpec.model_fields["kl_estimator"].annotation)

STD_EPS = 1e-4  # added to the std: all-equal groups get advantage 0 instead of 0/0


def _check_choice(kind: str, value: str, known: tuple[str, ...] | list[str]) -> None:
    if value not in known:
        raise ValueError(f"unknown {kind} {value!r}; known: {', '.join(known)}")


def _groups(rewards: Tensor, group_size: int) -> Tensor:
    """(B,) -> (prompts, G); fails unless B is a whole number of groups."""
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} are not whole groups of {group_size}")
    return rewards.view(-1, group_size)


def group_advantages(rewards: Tensor, group_size: int, scale_rewards: str = "group",
                     only_positive: bool = False) -> Tensor:
    """Group-relative advantages (DeepSeekMath, section 4.1.2: outcome supervision).

    rewards: (B,), group-contiguous. Returns (B,): `r - mean(group)`, divided by `std + 1e-4` of the
    group ("group", GRPO), of the whole batch ("batch"), or not at all ("none", Dr. GRPO).
    `only_positive` clips at 0: only above-mean samples are trained on (a cheaper, steadier
    variant on tiny models, see RECIPES); below-mean samples then carry no gradient.
    """
    _check_choice("scale_rewards", scale_rewards, SCALE_REWARDS)
    rewards = rewards if rewards.is_floating_point() else rewards.float()
    grouped = _groups(rewards, group_size)
    if group_size < 2 and scale_rewards == "group":
        raise ValueError("group std needs group_size >= 2")
    adv = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_rewards == "group":
        adv = adv / (grouped.std(dim=1, keepdim=True) + STD_EPS)  # unbiased std, as TRL
    elif scale_rewards == "batch":
        adv = adv / (rewards.std() + STD_EPS)
    adv = adv.reshape(-1)
    return adv.clamp(min=0.0) if only_positive else adv


def all_equal_groups(rewards: Tensor, group_size: int) -> Tensor:
    """(B,) rewards -> (prompts,) bool: groups whose rewards are all exactly equal (no signal).

    Compares rewards, never advantages: float32 advantages of an all-equal group are not exactly 0
    after subtracting the mean (RECIPES, pitfalls). Used for DAPO's dynamic sampling and for the
    `all_equal_groups_fraction` metric.
    """
    grouped = _groups(rewards, group_size)
    return (grouped == grouped[:, :1]).all(dim=1)


def overlong_penalty(lengths: Tensor, max_tokens: int, buffer_tokens: int, penalty: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment (section 3.4), a reward term to ADD: (B,) lengths -> (B,), <= 0.

    0 up to `max_tokens - buffer_tokens`, then falling linearly to `-penalty` at `max_tokens`, and
    `-penalty` beyond. `buffer_tokens == 0` disables it (all zeros): no ramp to divide by.
    """
    if buffer_tokens == 0:
        return torch.zeros(lengths.shape, dtype=torch.float32, device=lengths.device)
    if not 0 < buffer_tokens < max_tokens:
        raise ValueError(f"buffer_tokens must be in [0, max_tokens), got {buffer_tokens} and {max_tokens}")
    excess = (lengths.float() - (max_tokens - buffer_tokens)).clamp(min=0.0, max=float(buffer_tokens))
    return -penalty * excess / buffer_tokens


def filter_overlong(mask: Tensor, truncated: Tensor) -> Tensor:
    """DAPO's overlong filtering (section 3.4): (B, T) mask with the rows of truncated samples zeroed.

    truncated: (B,) bool, True for completions cut at the token budget without finishing. Only the
    caller knows that (a completion may end with EOS exactly at the budget), so it is passed in.
    The samples still count in their group's advantages; they just teach nothing.
    """
    return mask * (~truncated.bool()).to(device=mask.device, dtype=mask.dtype).unsqueeze(1)


def kl(logp: Tensor, ref_logp: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi || ref) from tokens sampled from pi: (B, T), (B, T) -> (B, T).

    With log r = ref_logp - logp (Schulman 2020): k1 = -log r (unbiased, high variance, can be
    negative); k2 = (log r)^2 / 2 (biased, low variance); k3 = (r - 1) - log r (unbiased, >= 0,
    low variance; DeepSeekMath eq. 4 and TRL).
    """
    _check_choice("kl_estimator", estimator, KL_ESTIMATORS)
    log_r = ref_logp - logp
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r.square()
    return torch.exp(log_r) - log_r - 1.0


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over the tokens where mask is 1 (0 when there are none)."""
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


# How per-token losses (B, T) become one scalar: the only difference between the variants.
# Each takes (per_token_loss * mask, mask, max_response_tokens, num_tokens).
Aggregation = Callable[[Tensor, Tensor, int | None, Any], Tensor]


def _grpo(x: Tensor, mask: Tensor, _max: int | None, _n: Any) -> Tensor:
    # GRPO: mean over each sequence's tokens, then over sequences; long answers weigh less per token.
    return (x.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def _bnpo(x: Tensor, mask: Tensor, _max: int | None, _n: Any) -> Tensor:
    # Token-level mean over this (micro-)batch.
    return x.sum() / mask.sum().clamp(min=1.0)


def _dr_grpo(x: Tensor, mask: Tensor, max_response_tokens: int | None, _n: Any) -> Tensor:
    # Dr. GRPO: a constant denominator, so no length bias from the normaliser.
    if max_response_tokens is None:
        raise ValueError("loss_type dr-grpo needs max_response_tokens")
    return x.sum() / (x.shape[0] * max_response_tokens)


def _dapo(x: Tensor, mask: Tensor, _max: int | None, num_tokens: Any) -> Tensor:
    # DAPO: token-level mean over the GLOBAL batch; the caller passes its token count.
    n = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=x.dtype, device=x.device)
    return x.sum() / n.clamp(min=1.0)


AGGREGATIONS: dict[str, Aggregation] = {"grpo": _grpo, "bnpo": _bnpo, "dr-grpo": _dr_grpo, "dapo": _dapo}


def off_policy_options(cfg: AlgorithmSpec | Any) -> tuple[bool, bool, float]:
    """(clip stale samples against the behaviour policy, truncated importance sampling, its cap).

    Unset fields follow `maxStaleness`: on when samples may be stale (>= 1), off for synchronous runs,
    whose loss then stays exactly the on-policy GRPO loss.
    """
    stale_possible = cfg.max_staleness >= 1
    clip = stale_possible if cfg.off_policy_clip is None else cfg.off_policy_clip
    weigh = stale_possible if cfg.importance_sampling is None else cfg.importance_sampling
    return clip, weigh, cfg.importance_sampling_cap


def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, cfg: AlgorithmSpec | Any,
                ref_logp: Tensor | None = None, entropy: Tensor | None = None,
                max_response_tokens: int | None = None, num_tokens: Tensor | float | None = None,
                behaviour_logp: Tensor | None = None, stale: Tensor | None = None,
                ) -> tuple[Tensor, dict[str, float]]:
    """The clipped GRPO objective, to minimise (DeepSeekMath eq. 3; clip-higher: DAPO section 3.1).

    per token: -w min(r A, clip(r, 1 - clip_low, 1 + clip_high) A) + kl_coef * KL, r = exp(logp - old);
    aggregated by `cfg.loss_type` (see AGGREGATIONS), minus `entropy_coef * mean entropy`. `old` is
    old_logp, or behaviour_logp on stale rows when clipping against the behaviour policy; w is 1, or
    min(exp(old_logp - behaviour_logp), cap) (detached) on rows anchored at old_logp when importance
    sampling is on (see the module docstring and `off_policy_options`).

    logp: (B, T) log-probs of the sampled tokens under the policy being trained (carries the grad).
    old_logp: (B, T) the same under the trainer's weights before this update (constant; detached
      here, so the on-policy case may pass `logp` itself). ref_logp: (B, T) under the frozen
      reference; needed only when kl_coef != 0. entropy: (B, T) policy entropy per position; needed
      only when entropy_coef != 0. advantages: (B,) or (B, T). mask: (B, T), 1 on loss tokens.
    behaviour_logp: (B, T) the log-probs the rollout engine sampled with (constant); needed when
      either off-policy correction is on. stale: (B,) bool, True for samples drawn with weights
      older than the trainer's; needed when clipping against the behaviour policy.
    cfg: an AlgorithmSpec, or anything with loss_type, clip_low, clip_high, kl_coef, kl_estimator,
      entropy_coef, max_staleness, off_policy_clip, importance_sampling, importance_sampling_cap
      (and max_response_tokens for dr-grpo unless passed).
    num_tokens (dapo only): denominator; default this batch's mask count. For a global token mean
      under data parallelism over W ranks and A accumulation micro-batches whose gradients are
      averaged, pass (loss tokens of the whole optimizer step) / (W * A).

    Returns (loss scalar, metrics): `importance_ratio` (mean r), `clip_fraction`,
    `clip_fraction_low`, `clip_fraction_high` (tokens where clipping zeroes the gradient: r below
    1 - clip_low with A < 0, above 1 + clip_high with A > 0), `kl` when ref_logp is given,
    `entropy` when entropy is given, and with importance sampling on `is_weight` (mean w) and
    `is_capped_fraction` (tokens whose weight the cap truncated); floats, means over loss tokens of
    this batch.
    """
    loss_type = cfg.loss_type
    _check_choice("loss_type", loss_type, list(AGGREGATIONS))
    if logp.dim() != 2 or old_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError(f"logp, old_logp and mask must all be (B, T); got {tuple(logp.shape)}, "
                         f"{tuple(old_logp.shape)}, {tuple(mask.shape)}")
    if advantages.shape[0] != logp.shape[0]:
        raise ValueError(f"advantages {tuple(advantages.shape)} do not match logp {tuple(logp.shape)}")
    if loss_type == "dr-grpo" and max_response_tokens is None:
        max_response_tokens = cfg.max_response_tokens
    # Ratios in at least float32: exp of a bf16 difference is too coarse to clip at 1 +- 0.2.
    dtype = torch.promote_types(logp.dtype, torch.float32)
    logp = logp.to(dtype)
    mask = mask.to(dtype)
    adv = (advantages if advantages.dim() == 2 else advantages.unsqueeze(1)).to(dtype)

    old = old_logp.detach().to(dtype)
    clip_behaviour, weigh, cap = off_policy_options(cfg)
    if (clip_behaviour or weigh) and behaviour_logp is None:
        raise ValueError("off-policy correction (offPolicyClip or importanceSampling) needs behaviour_logp")
    if clip_behaviour and stale is None:
        raise ValueError("offPolicyClip needs stale")
    anchored_at_old = torch.ones_like(mask, dtype=torch.bool)  # rows whose ratio divides by old_logp
    if clip_behaviour:
        anchored_at_old = ~stale.to(device=logp.device, dtype=torch.bool).unsqueeze(1).expand_as(anchored_at_old)
        old = torch.where(anchored_at_old, old, behaviour_logp.detach().to(dtype))
    ratio = torch.exp(logp - old)
    clipped = ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    if weigh:
        log_w = (old_logp.detach().to(dtype) - behaviour_logp.detach().to(dtype)).masked_fill(~anchored_at_old, 0.0)
        raw_weight = torch.exp(log_w)
        weight = raw_weight.clamp(max=cap)  # also what keeps padding finite: exp may overflow there
        per_token = per_token * weight

    per_token_kl = None
    if ref_logp is not None:
        per_token_kl = kl(logp, ref_logp.detach().to(dtype), cfg.kl_estimator)
    if cfg.kl_coef != 0:
        if per_token_kl is None:
            raise ValueError("kl_coef != 0 needs ref_logp")
        per_token = per_token + cfg.kl_coef * per_token_kl

    loss = AGGREGATIONS[loss_type](per_token * mask, mask, max_response_tokens, num_tokens)
    if cfg.entropy_coef != 0:
        if entropy is None:
            raise ValueError("entropy_coef != 0 needs entropy")
        loss = loss - cfg.entropy_coef * masked_mean(entropy.to(dtype), mask)

    with torch.no_grad():
        low = (ratio < 1.0 - cfg.clip_low) & (adv < 0)
        high = (ratio > 1.0 + cfg.clip_high) & (adv > 0)
        stats = {"importance_ratio": masked_mean(ratio, mask),
                 "clip_fraction": masked_mean((low | high).to(dtype), mask),
                 "clip_fraction_low": masked_mean(low.to(dtype), mask),
                 "clip_fraction_high": masked_mean(high.to(dtype), mask)}
        if per_token_kl is not None:
            stats["kl"] = masked_mean(per_token_kl, mask)
        if entropy is not None:
            stats["entropy"] = masked_mean(entropy.to(dtype), mask)
        if weigh:
            stats["is_weight"] = masked_mean(weight, mask)
            stats["is_capped_fraction"] = masked_mean((raw_weight > cap).to(dtype), mask)
        # One device sync for all of them.
        values = torch.stack(list(stats.values())).tolist()
    return loss, dict(zip(stats, values))
