"""`zeroth.trainer.grpo` against TRL's GRPO (trl 1.16, a pinned test dependency), on fixed inputs.

TRL is the independent reference: its real methods run unbound on a stub `self` that holds only the
attributes they read (`SimpleNamespace`, so a renamed attribute fails with AttributeError instead
of silently taking a default):
- `GRPOTrainer._compute_loss(stub, model, inputs)`: the loss. `_get_per_token_logps_and_entropies`
  is stubbed to return fixed per-token log-probs and entropies (leaf tensors that require grad), the
  accelerator is the identity (1 process, no accumulation). Loss, d loss / d logp, d loss /
  d entropy and the logged clip/KL/entropy metrics are compared.
- `GRPOTrainer._generate_and_score_completions(stub, inputs)`: the advantages. `_generate` and
  `_calculate_rewards` are stubbed to return fixed completions and rewards; the rest (grouping,
  nanstd, the 1e-4, scale_rewards) is TRL's code path as it runs in training.
- The same with vLLM's importance-sampling correction on (`token_truncate`): `_generate` also
  returns fixed sampling log-probs and the trainer's log-prob pass returns fixed old log-probs, and
  TRL computes the truncated ratio that `_compute_loss` then multiplies in; against our
  `importanceSampling` (no sample stale, so every row is anchored at the trainer's log-probs).

Inputs are float64 so the comparison tests the formulas, not rounding: loss, gradients and
advantages agree to atol 1e-12 (advantages also rtol 1e-7: TRL's Bessel factor is float32); the
logged metrics to 1e-7 (TRL computes them in float32).
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import trl
from trl.trainer.grpo_trainer import GRPOTrainer

from zeroth.api import AlgorithmSpec
from zeroth.trainer.grpo import all_equal_groups, group_advantages, policy_loss

TRL_VERSION = "1.16."
ATOL = 1e-12
METRIC_ATOL = 1e-7  # TRL casts the clip masks with .float(): its metrics are float32
# TRL's nanstd computes Bessel's n / (n - 1) from integer counts, which torch divides in float32:
# its std is off by ~1.5e-8 relative even on float64 rewards.
ADV_RTOL = 1e-7
TRL_LOSS_NAME = {"grpo": "grpo", "bnpo": "bnpo", "dr-grpo": "dr_grpo", "dapo": "dapo"}
MAX_COMPLETION = 12  # > T: dr-grpo's denominator is the budget, not the padded width


def _check_trl_version() -> None:
    # The stubs below name TRL's private attributes: they are only valid for the pinned version.
    assert trl.__version__.startswith(TRL_VERSION), (
        f"trl {trl.__version__} installed; these stubs are written against trl {TRL_VERSION}* "
        "(pyproject test extra). Re-read GRPOTrainer._compute_loss and update them."
    )


class IdentityAccelerator:
    """One process, no gradient accumulation: gather/reduce return their input."""

    num_processes = 1
    process_index = 0
    sync_gradients = True
    device = torch.device("cpu")

    def gather(self, t):
        return t

    gather_for_metrics = gather

    def reduce(self, t, reduction="sum"):
        return t


def fixture():
    """B = 8 samples (2 groups of 4), T = 7; ragged lengths, one fully masked row, clipped tokens
    on both sides with both signs of advantage."""
    g = torch.Generator().manual_seed(1234)
    B, T = 8, 7
    logp = -(torch.rand(B, T, generator=g, dtype=torch.float64) * 2 + 0.05)
    old = logp + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    entropy = torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    lengths = torch.tensor([7, 3, 5, 1, 7, 0, 6, 2])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    adv = torch.tensor([1.2, -0.7, 0.0, 0.4, -1.5, 0.9, -0.2, 0.6], dtype=torch.float64)
    return logp, old, ref, entropy, mask, adv


def trl_loss(loss_type, eps_low, eps_high, beta, entropy_coef, logp, old, ref, entropy, mask, adv, num_items,
             is_ratio=None):
    """TRL's loss; `is_ratio` (TRL's truncated importance-sampling ratio) turns its vLLM correction on."""
    _check_trl_version()
    stub = SimpleNamespace(
        loss_type=TRL_LOSS_NAME[loss_type], epsilon_low=eps_low, epsilon_high=eps_high, beta=beta,
        max_completion_length=MAX_COMPLETION, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", aux_loss_enabled=False, use_vllm=is_ratio is not None,
        vllm_importance_sampling_correction=is_ratio is not None, current_gradient_accumulation_steps=1,
        entropy_coef=entropy_coef, use_adaptive_entropy=False, _entropy_bonus_enabled=entropy_coef != 0.0,
        model=SimpleNamespace(training=True), accelerator=IdentityAccelerator(),
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        _metrics=defaultdict(lambda: defaultdict(list)),
        _get_per_token_logps_and_entropies=lambda model, *a, **k: (logp, entropy, None),
    )
    B, T = mask.shape
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
        "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": torch.tensor(float(num_items), dtype=torch.float64),
    }
    if is_ratio is not None:
        inputs["importance_sampling_ratio"] = is_ratio
    loss = GRPOTrainer._compute_loss(stub, None, inputs)
    return loss, {k: v[-1] for k, v in stub._metrics["train"].items()}


CASES = [  # (clip_low, clip_high, kl_coef / beta, entropy_coef)
    pytest.param(0.2, 0.2, 0.0, 0.0, id="beta0"),
    pytest.param(0.2, 0.2, 0.04, 0.0, id="kl"),
    pytest.param(0.2, 0.28, 0.04, 0.0, id="kl-clip-higher"),
    pytest.param(0.2, 0.28, 0.0, 0.01, id="clip-higher-entropy"),
]


# dapo also with a global token count (3x this batch's, as if other ranks held the rest).
LOSSES = [pytest.param(name, False, id=name) for name in TRL_LOSS_NAME] + [pytest.param("dapo", True, id="dapo-global")]


@pytest.mark.parametrize(("loss_type", "global_tokens"), LOSSES)
@pytest.mark.parametrize(("clip_low", "clip_high", "kl_coef", "entropy_coef"), CASES)
def test_policy_loss_matches_trl(loss_type, global_tokens, clip_low, clip_high, kl_coef, entropy_coef):
    logp, old, ref, entropy, mask, adv = fixture()
    num_items = int(mask.sum()) * (3 if global_tokens else 1)

    ours_logp, ours_ent = logp.clone().requires_grad_(), entropy.clone().requires_grad_()
    cfg = AlgorithmSpec(loss_type=loss_type, clip_low=clip_low, clip_high=clip_high, kl_coef=kl_coef,
                        entropy_coef=entropy_coef, max_response_tokens=MAX_COMPLETION)
    loss, metrics = policy_loss(ours_logp, old, adv, mask, cfg, ref_logp=ref if kl_coef else None,
                                entropy=ours_ent, num_tokens=num_items if global_tokens else None)
    loss.backward()

    trl_logp, trl_ent = logp.clone().requires_grad_(), entropy.clone().requires_grad_()
    ref_loss, ref_metrics = trl_loss(loss_type, clip_low, clip_high, kl_coef, entropy_coef,
                                     trl_logp, old, ref, trl_ent, mask, adv, num_items)
    ref_loss.backward()

    torch.testing.assert_close(loss, ref_loss.detach(), atol=ATOL, rtol=0)
    torch.testing.assert_close(ours_logp.grad, trl_logp.grad, atol=ATOL, rtol=0)
    if entropy_coef:
        torch.testing.assert_close(ours_ent.grad, trl_ent.grad, atol=ATOL, rtol=0)
    else:
        assert ours_ent.grad is None and trl_ent.grad is None
    assert metrics["clip_fraction_low"] == pytest.approx(ref_metrics["clip_ratio/low_mean"], abs=METRIC_ATOL)
    assert metrics["clip_fraction_high"] == pytest.approx(ref_metrics["clip_ratio/high_mean"], abs=METRIC_ATOL)
    assert metrics["clip_fraction"] == pytest.approx(ref_metrics["clip_ratio/region_mean"], abs=METRIC_ATOL)
    assert metrics["entropy"] == pytest.approx(ref_metrics["entropy"], abs=METRIC_ATOL)
    if kl_coef:
        assert metrics["kl"] == pytest.approx(ref_metrics["kl"], abs=METRIC_ATOL)
    # The fixture must exercise clipping on both sides, or the comparison proves little.
    assert ref_metrics["clip_ratio/low_mean"] > 0 and ref_metrics["clip_ratio/high_mean"] > 0


def trl_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str):
    _check_trl_version()
    B = rewards.numel()
    stub = SimpleNamespace(
        accelerator=IdentityAccelerator(), model=SimpleNamespace(training=True, is_gradient_checkpointing=False),
        environment_factories=None, tools=None, environments=None,
        # prompt ids, completion ids, tool mask, completions, sampling logps, extra fields, images, tool images
        _generate=lambda prompts: ([[5, 6]] * B, [[7, 8, 9]] * B, None, ["c"] * B, None, {}, None, None),
        _tokenizer=SimpleNamespace(pad_token_id=0), pad_to_multiple_of=None, mask_truncated_completions=False,
        args=SimpleNamespace(per_device_train_batch_size=B, gradient_checkpointing_kwargs=None,
                             steps_per_generation=1, gradient_accumulation_steps=1),
        num_iterations=1, use_vllm=False, beta=0.0,
        _calculate_rewards=lambda inputs, prompts, completions, ids: rewards.view(-1, 1).clone(),
        num_generations=group_size, multi_objective_aggregation="sum_then_normalize",
        reward_weights=torch.ones(1, dtype=rewards.dtype), scale_rewards=scale_rewards, reward_func_names=["r"],
        _metrics=defaultdict(lambda: defaultdict(list)),
        _logs={"prompt": [], "completion": [], "rewards": defaultdict(list), "advantages": [],
               "extra": defaultdict(list)},
        _pending_extra_logs={}, _pending_metrics={}, log_multimodal=False,
    )
    out = GRPOTrainer._generate_and_score_completions(stub, [{"prompt": "p"}] * B)
    return out["advantages"], stub._metrics["train"]["frac_reward_zero_std"][-1]


REWARDS = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.1, 0.9, 0.3, 0.7]  # 3 groups of 4, one all equal


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_group_advantages_match_trl(scale_rewards):
    rewards = torch.tensor(REWARDS, dtype=torch.float64)
    ref, frac_zero_std = trl_advantages(rewards, 4, scale_rewards)
    torch.testing.assert_close(group_advantages(rewards, 4, scale_rewards), ref, atol=ATOL, rtol=ADV_RTOL)
    if scale_rewards != "batch":  # TRL's zero-std fraction is per group in these modes
        assert all_equal_groups(rewards, 4).double().mean().item() == pytest.approx(frac_zero_std)


def trl_importance_sampling(old, behaviour, mask, cap):
    """TRL's truncated importance-sampling ratio (B, T) and its logged mean, computed where TRL
    computes it: `_generate_and_score_completions` with vLLM's correction on, `_generate` returning
    `behaviour` as vLLM's sampling log-probs and the trainer's log-prob pass returning `old`."""
    _check_trl_version()
    B = mask.shape[0]
    lengths = mask.sum(1).tolist()
    stub = SimpleNamespace(
        accelerator=IdentityAccelerator(), model=SimpleNamespace(training=True, is_gradient_checkpointing=False),
        environment_factories=None, tools=None, environments=None,
        _generate=lambda prompts: ([[5, 6]] * B, [[7] * n for n in lengths], None, ["c"] * B,
                                   [behaviour[i, :n].tolist() for i, n in enumerate(lengths)], {}, None, None),
        _get_per_token_logps_and_entropies=lambda model, *a, **k: (old, None, None),
        _tokenizer=SimpleNamespace(pad_token_id=0), pad_to_multiple_of=None, mask_truncated_completions=False,
        args=SimpleNamespace(per_device_train_batch_size=B, gradient_checkpointing_kwargs=None,
                             steps_per_generation=1, gradient_accumulation_steps=1),
        num_iterations=1, use_vllm=True, vllm_importance_sampling_correction=True,
        vllm_importance_sampling_mode="token_truncate", vllm_importance_sampling_clip_min=None,
        vllm_importance_sampling_clip_max=cap, beta=0.0,
        _calculate_rewards=lambda inputs, prompts, completions, ids: torch.zeros(B, 1, dtype=torch.float64),
        num_generations=4, multi_objective_aggregation="sum_then_normalize",
        reward_weights=torch.ones(1, dtype=torch.float64), scale_rewards="group", reward_func_names=["r"],
        _metrics=defaultdict(lambda: defaultdict(list)),
        _logs={"prompt": [], "completion": [], "rewards": defaultdict(list), "advantages": [],
               "extra": defaultdict(list)},
        _pending_extra_logs={}, _pending_metrics={}, log_multimodal=False,
    )
    out = GRPOTrainer._generate_and_score_completions(stub, [{"prompt": "p"}] * B)
    return out["importance_sampling_ratio"], stub._metrics["train"]["sampling/importance_sampling_ratio/mean"][-1]


@pytest.mark.parametrize("cap", [1.5, 3.0])
@pytest.mark.parametrize(("loss_type", "global_tokens"), LOSSES)
def test_importance_sampling_matches_trl(loss_type, global_tokens, cap):
    logp, old, ref, entropy, mask, adv = fixture()
    # vLLM's log-probs: the trainer's plus noise, float32 as TRL builds them from Python floats
    noise = torch.randn(old.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    behaviour = (old + noise).float().double() * mask
    num_items = int(mask.sum()) * (3 if global_tokens else 1)
    kl_coef, clip_high = 0.04, 0.28

    ours_logp = logp.clone().requires_grad_()
    cfg = AlgorithmSpec(loss_type=loss_type, clip_high=clip_high, kl_coef=kl_coef, importance_sampling=True,
                        importance_sampling_cap=cap, max_response_tokens=MAX_COMPLETION)
    loss, metrics = policy_loss(ours_logp, old, adv, mask, cfg, ref_logp=ref,
                                num_tokens=num_items if global_tokens else None, behaviour_logp=behaviour)
    loss.backward()

    is_ratio, is_mean = trl_importance_sampling(old, behaviour, mask, cap)
    trl_logp = logp.clone().requires_grad_()
    ref_loss, _ = trl_loss(loss_type, 0.2, clip_high, kl_coef, 0.0, trl_logp, old, ref, entropy, mask, adv, num_items,
                           is_ratio=is_ratio)
    ref_loss.backward()

    torch.testing.assert_close(loss, ref_loss.detach(), atol=ATOL, rtol=0)
    torch.testing.assert_close(ours_logp.grad, trl_logp.grad, atol=ATOL, rtol=0)
    assert metrics["is_weight"] == pytest.approx(is_mean, abs=ATOL)
    real = mask.bool()
    assert metrics["is_capped_fraction"] == pytest.approx((is_ratio[real] == cap).double().mean().item(), abs=ATOL)
    # The fixture must exercise the cap and weights on both sides of 1, or the comparison proves little.
    assert 0 < metrics["is_capped_fraction"] < 1 and is_ratio[real].min() < 1
