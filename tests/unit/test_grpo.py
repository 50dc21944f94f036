"""`zeroth.trainer.grpo` against hand-worked numbers and properties (TRL cross-check: test_grpo_trl.py).

Every expected value is written here from the formula, never computed with the code under test.
"""

from __future__ import annotations

import math
from typing import get_args

import pytest
import torch

from zeroth.api import AlgorithmSpec
from zeroth.metrics import BY_NAME
from zeroth.trainer.grpo import (
    AGGREGATIONS,
    all_equal_groups,
    filter_overlong,
    group_advantages,
    kl,
    off_policy_options,
    overlong_penalty,
    policy_loss,
)

LOSS_TYPES = list(get_args(AlgorithmSpec.model_fields["loss_type"].annotation))
D = torch.float64


def t(values, dtype=D):
    return torch.tensor(values, dtype=dtype)


def cfg(loss_type="grpo", **kw):
    return AlgorithmSpec(loss_type=loss_type, **kw)


# --- advantages -------------------------------------------------------------------------------


def test_group_scaling_uses_the_unbiased_group_std_plus_1e_4():
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)  # [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(1/3)
    torch.testing.assert_close(group_advantages(t([1, 0, 0, 1, 3, 3, 3, 3]), 4, "group"),
                               t([a, -a, -a, a, 0, 0, 0, 0]), atol=1e-12, rtol=0)


def test_batch_scaling_subtracts_the_group_mean_and_divides_by_the_batch_std():
    # batch mean 1.25; squared deviations 2 * 0.0625 + 2 * 1.5625 + 4 * 0.5625 = 5.5; unbiased: / 7
    s = math.sqrt(5.5 / 7) + 1e-4
    torch.testing.assert_close(group_advantages(t([1, 0, 0, 1, 2, 2, 2, 2]), 4, "batch"),
                               t([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0, 0, 0, 0]), atol=1e-12, rtol=0)


def test_no_scaling_only_centres():
    torch.testing.assert_close(group_advantages(t([1, 0, 0, 1, 0, 0, 0, 3]), 4, "none"),
                               t([0.5, -0.5, -0.5, 0.5, -0.75, -0.75, -0.75, 2.25]), atol=1e-12, rtol=0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_only_positive_never_gives_negative_advantages(scale):
    rewards = torch.rand(64, generator=torch.Generator().manual_seed(0))
    adv = group_advantages(rewards, 8, scale, only_positive=True)
    assert (adv >= 0).all() and (adv > 0).any()
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    torch.testing.assert_close(group_advantages(t([1, 0, 0, 1]), 4, "group", only_positive=True),
                               t([a, 0, 0, a]), atol=1e-12, rtol=0)


def test_advantages_reject_partial_groups_and_unknown_scaling():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(t([1, 0, 1]), 4)
    with pytest.raises(ValueError, match="group, batch, none"):
        group_advantages(t([1, 0]), 2, "rank")


def test_all_equal_groups_compares_rewards():
    assert all_equal_groups(t([1, 1, 1, 1, 0, 1, 0, 1]), 4).tolist() == [True, False]
    # The pitfall: 8 float32 rewards of 0.9 have a float32 mean that is not 0.9, so their advantages
    # are ~6e-4, not 0; an advantage-based test would call this group informative.
    assert all_equal_groups(torch.full((8,), 0.9, dtype=torch.float32), 8).tolist() == [True]
    # Exact: rewards that differ at all are not equal.
    assert all_equal_groups(t([0.5, 0.5, 0.5, 0.5 + 1e-9]), 4).tolist() == [False]


# --- overlong -----------------------------------------------------------------------------------


def test_overlong_penalty_is_dapo_soft_punishment():
    lengths = torch.tensor([10, 16, 17, 18, 20, 25])  # max 20, buffer 4: ramp from 16 to 20
    torch.testing.assert_close(overlong_penalty(lengths, 20, 4, 1.0), t([0, 0, -0.25, -0.5, -1, -1], torch.float32))
    torch.testing.assert_close(overlong_penalty(lengths, 20, 4, 0.5),
                               t([0, 0, -0.125, -0.25, -0.5, -0.5], torch.float32))
    assert overlong_penalty(lengths, 20, 0, 1.0).tolist() == [0.0] * 6


def test_filter_overlong_zeroes_only_truncated_rows():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    out = filter_overlong(mask, torch.tensor([False, True, False]))
    assert out.tolist() == [[1, 1, 0], [0, 0, 0], [1, 0, 0]]


# --- KL -----------------------------------------------------------------------------------------


def test_kl_estimators_by_hand():
    logp, ref = t([[math.log(0.5)]]), t([[math.log(0.25)]])  # log r = log(0.25 / 0.5) = -log 2
    ln2 = math.log(2)
    assert kl(logp, ref, "k1").item() == pytest.approx(ln2)
    assert kl(logp, ref, "k2").item() == pytest.approx(0.5 * ln2**2)
    assert kl(logp, ref, "k3").item() == pytest.approx(0.5 + ln2 - 1)  # r - 1 - log r
    assert kl(logp, logp, "k3").item() == 0.0
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl(logp, ref, "k4")


# --- the loss: hand-worked gradients ------------------------------------------------------------

# Two sequences of lengths 1 and 4 (T = 5), advantages +1 and -2, on-policy (ratio 1): the
# per-token loss is -A, and d loss / d logp_t = -A / (the aggregation's denominator).
MASK = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
ADV = t([1.0, -2.0])


def _grad(loss_type, max_response_tokens=None, num_tokens=None, spec=None):
    logp = torch.full((2, 5), -1.0, dtype=D, requires_grad=True)
    loss, _ = policy_loss(logp, logp.detach(), ADV, MASK, cfg(loss_type, **(spec or {})),
                          max_response_tokens=max_response_tokens, num_tokens=num_tokens)
    loss.backward()
    return loss.item(), logp.grad


@pytest.mark.parametrize(("loss_type", "kwargs", "loss", "g0", "g1"), [
    ("grpo", {}, 0.5, -1 / (1 * 2), 2 / (4 * 2)),  # mean per sequence, then over the 2 sequences
    ("bnpo", {}, 7 / 5, -1 / 5, 2 / 5),  # 5 loss tokens
    ("dr-grpo", {"max_response_tokens": 8}, 7 / 16, -1 / 16, 2 / 16),  # B * max = 16
    ("dapo", {}, 7 / 5, -1 / 5, 2 / 5),  # local count by default
    ("dapo", {"num_tokens": 10}, 7 / 10, -1 / 10, 2 / 10),  # the global count when given
])
def test_aggregations_by_hand(loss_type, kwargs, loss, g0, g1):
    value, grad = _grad(loss_type, **kwargs)
    assert value == pytest.approx(loss, abs=1e-12)
    expected = t([[g0, 0, 0, 0, 0], [g1, g1, g1, g1, 0]])
    torch.testing.assert_close(grad, expected, atol=1e-12, rtol=0)


def test_dr_grpo_takes_max_response_tokens_from_the_spec_unless_given():
    assert _grad("dr-grpo")[0] == pytest.approx(7 / (2 * 1024))  # AlgorithmSpec's default budget
    assert _grad("dr-grpo", spec={"max_response_tokens": 4})[0] == pytest.approx(7 / (2 * 4))
    assert _grad("dr-grpo", 8, spec={"max_response_tokens": 4})[0] == pytest.approx(7 / (2 * 8))


def test_dr_grpo_gradient_per_token_does_not_depend_on_sequence_length():
    _, grad = _grad("dr-grpo", max_response_tokens=8)
    # Same |A| per token whatever the length: -A / (B * max) for both sequences.
    assert grad[0, 0].item() == pytest.approx(-1 / 16) and grad[1, 0].item() == pytest.approx(2 / 16)
    _, grpo = _grad("grpo")
    assert grpo[0, 0].item() / -1 != pytest.approx(grpo[1, 0].item() / 2)  # GRPO's length bias


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_padding_columns_change_nothing(loss_type):
    g = torch.Generator().manual_seed(3)
    logp = -torch.rand(2, 5, generator=g, dtype=D)
    old = logp + 0.3 * torch.randn(2, 5, generator=g, dtype=D)
    pad = lambda x, v: torch.cat([x, torch.full((2, 4), v, dtype=x.dtype)], dim=1)  # noqa: E731
    c = cfg(loss_type, kl_coef=0.1, entropy_coef=0.01)
    ref, ent = logp - 0.1, torch.ones(2, 5, dtype=D)
    short, _ = policy_loss(logp, old, ADV, MASK, c, ref, ent, max_response_tokens=16)
    long, _ = policy_loss(pad(logp, -50.0), pad(old, 3.0), ADV, pad(MASK, 0), c, pad(ref, 7.0), pad(ent, 9.0),
                          max_response_tokens=16)
    assert long.item() == pytest.approx(short.item(), abs=1e-12)


# --- the loss: properties -----------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_ratio_one_and_zero_advantages_give_zero_gradient(loss_type):
    logp = (-torch.rand(4, 6, generator=torch.Generator().manual_seed(1), dtype=D)).requires_grad_()
    mask = torch.ones(4, 6)
    # k3's gradient is 0 at ref == logp too, so the KL term must not add any.
    loss, metrics = policy_loss(logp, logp.detach(), torch.zeros(4, dtype=D), mask, cfg(loss_type, kl_coef=0.5),
                                ref_logp=logp.detach(), max_response_tokens=6)
    loss.backward()
    assert loss.item() == 0.0 and (logp.grad == 0).all()
    assert metrics["importance_ratio"] == 1.0 and metrics["clip_fraction"] == 0.0 and metrics["kl"] == 0.0


def _clip_grads(advantage, clip_high=0.2):
    # One sequence of 3 tokens with ratios 1.5, 1.0, 0.5; grpo divides by 3.
    old = t([[0.0, 0.0, 0.0]])
    logp = t([[math.log(1.5), 0.0, math.log(0.5)]]).requires_grad_()
    loss, metrics = policy_loss(logp, old, t([advantage]), torch.ones(1, 3), cfg("grpo", clip_high=clip_high))
    loss.backward()
    return logp.grad[0].tolist(), metrics


def test_clipping_zeroes_the_gradient_only_where_it_binds():
    grad, m = _clip_grads(+1.0)  # 1.5 > 1.2 with A > 0: clipped; 0.5 < 0.8 with A > 0: not clipped
    assert grad == pytest.approx([0.0, -1 / 3, -0.5 / 3])
    assert (m["clip_fraction_high"], m["clip_fraction_low"]) == pytest.approx((1 / 3, 0.0))
    grad, m = _clip_grads(-1.0)  # 0.5 < 0.8 with A < 0: clipped; 1.5 with A < 0: not clipped
    assert grad == pytest.approx([1.5 / 3, 1 / 3, 0.0])
    assert (m["clip_fraction_high"], m["clip_fraction_low"], m["clip_fraction"]) == pytest.approx((0, 1 / 3, 1 / 3))
    assert m["importance_ratio"] == pytest.approx(1.0)  # (1.5 + 1 + 0.5) / 3


def test_clip_higher_lets_the_upper_ratio_through():
    grad, m = _clip_grads(+1.0, clip_high=0.6)  # 1.5 < 1.6
    assert grad == pytest.approx([-1.5 / 3, -1 / 3, -0.5 / 3]) and m["clip_fraction"] == 0.0


def test_kl_coef_zero_needs_no_reference_and_ignores_one():
    logp, old = -torch.rand(2, 5, dtype=D), -torch.rand(2, 5, dtype=D)
    without, m1 = policy_loss(logp, old, ADV, MASK, cfg())
    with_ref, m2 = policy_loss(logp, old, ADV, MASK, cfg(), ref_logp=logp - 1.0)
    assert without.item() == with_ref.item()
    assert "kl" not in m1 and m2["kl"] > 0  # still reported for monitoring
    with pytest.raises(ValueError, match="needs ref_logp"):
        policy_loss(logp, old, ADV, MASK, cfg(kl_coef=0.1))


def test_kl_term_adds_kl_coef_times_the_per_token_mean():
    logp = torch.zeros(2, 5, dtype=D)
    ref = torch.full((2, 5), -math.log(2), dtype=D)  # k3 per token: 0.5 + ln 2 - 1
    loss, m = policy_loss(logp, logp, torch.zeros(2, dtype=D), MASK, cfg("bnpo", kl_coef=0.1), ref_logp=ref)
    assert loss.item() == pytest.approx(0.1 * (math.log(2) - 0.5)) and m["kl"] == pytest.approx(math.log(2) - 0.5)


def test_entropy_bonus_is_a_masked_token_mean():
    entropy = t([[2.0, 0, 0, 0, 0], [4.0, 4, 2, 4, 99]]).requires_grad_()  # mean over the 5 loss tokens: 3.2
    loss, m = policy_loss(torch.zeros(2, 5, dtype=D), torch.zeros(2, 5, dtype=D), torch.zeros(2, dtype=D), MASK,
                          cfg("grpo", entropy_coef=0.1), entropy=entropy)
    loss.backward()
    assert loss.item() == pytest.approx(-0.32) and m["entropy"] == pytest.approx(3.2)
    torch.testing.assert_close(entropy.grad, -0.1 / 5 * MASK.to(D))
    with pytest.raises(ValueError, match="needs entropy"):
        policy_loss(torch.zeros(2, 5), torch.zeros(2, 5), torch.zeros(2), MASK, cfg(entropy_coef=0.1))


def test_old_logp_is_a_constant_so_on_policy_callers_may_pass_logp_itself():
    a = (-torch.rand(2, 5, generator=torch.Generator().manual_seed(2), dtype=D)).requires_grad_()
    b = a.detach().clone().requires_grad_()
    policy_loss(a, a, ADV, MASK, cfg())[0].backward()
    policy_loss(b, b.detach(), ADV, MASK, cfg())[0].backward()
    torch.testing.assert_close(a.grad, b.grad)
    assert (a.grad != 0).any()


def test_variants_are_exactly_the_api_loss_types_and_unknown_ones_fail():
    assert sorted(AGGREGATIONS) == sorted(LOSS_TYPES)
    bad = cfg().model_copy(update={"loss_type": "ppo"})
    with pytest.raises(ValueError, match="unknown loss_type 'ppo'; known: grpo, bnpo, dr-grpo, dapo"):
        policy_loss(torch.zeros(2, 5), torch.zeros(2, 5), torch.zeros(2), MASK, bad)


def test_metrics_are_floats_named_as_in_zeroth_metrics():
    _, m = policy_loss(torch.zeros(2, 5), torch.zeros(2, 5), ADV, MASK, cfg(), ref_logp=torch.zeros(2, 5),
                       entropy=torch.ones(2, 5))
    assert all(type(v) is float for v in m.values())
    assert "loss" not in m  # the caller has the loss itself; a copy here would be summed twice
    for name in ("kl", "entropy", "clip_fraction", "importance_ratio"):
        assert name in m and name in BY_NAME


# --- off-policy corrections ---------------------------------------------------------------------


def _off_policy(spec, stale, advantage=+1.0):
    # Two sequences of 3 tokens with the same numbers; row 0 is fresh, row 1 `stale`. The trainer's
    # log-probs are log 1.5, 0, log 0.5 (old = logp: one update), the rollout's 0 everywhere, so
    # pi / pi_behaviour is 1.5, 1, 0.5 and pi_trainer_old / pi_behaviour the same.
    row = [math.log(1.5), 0.0, math.log(0.5)]
    logp = t([row, row]).requires_grad_()
    loss, metrics = policy_loss(logp, logp.detach(), t([advantage, advantage]), torch.ones(2, 3), cfg("grpo", **spec),
                                behaviour_logp=torch.zeros(2, 3, dtype=D), stale=torch.tensor([False, stale]))
    loss.backward()
    return logp.grad.tolist(), metrics


def test_stale_samples_clip_against_the_behaviour_policy():
    # grpo: mean over 3 tokens, then over 2 sequences -> 1/6 per token.
    grad, m = _off_policy({"off_policy_clip": True, "importance_sampling": False}, stale=True)
    assert grad[0] == pytest.approx([-1 / 6, -1 / 6, -1 / 6])  # fresh: ratio 1 against the trainer's own log-probs
    # stale: ratios 1.5, 1, 0.5 against the rollout's; 1.5 > 1.2 with A > 0 binds, its gradient is 0
    assert grad[1] == pytest.approx([0.0, -1 / 6, -0.5 / 6])
    assert m["clip_fraction_high"] == pytest.approx(1 / 6) and m["importance_ratio"] == pytest.approx((3 + 3) / 6)
    grad, m = _off_policy({"off_policy_clip": True, "importance_sampling": False}, stale=True, advantage=-1.0)
    assert grad[1] == pytest.approx([1.5 / 6, 1 / 6, 0.0])  # 0.5 < 0.8 with A < 0 binds
    assert m["clip_fraction_low"] == pytest.approx(1 / 6)
    # the same samples fresh, or the correction off: on-policy, nothing binds
    for spec, stale in (({"off_policy_clip": True, "importance_sampling": False}, False),
                        ({"off_policy_clip": False, "importance_sampling": False}, True)):
        grad, m = _off_policy(spec, stale)
        assert grad[1] == pytest.approx([-1 / 6] * 3) and m["clip_fraction"] == 0.0


def test_importance_weight_is_the_truncated_trainer_to_rollout_ratio():
    # cap 1.2: weights min(1.5, 1.2) = 1.2, 1, 0.5 on both rows (none anchored at the rollout)
    grad, m = _off_policy({"off_policy_clip": False, "importance_sampling": True, "importance_sampling_cap": 1.2},
                          stale=True)
    assert grad[0] == pytest.approx([-1.2 / 6, -1 / 6, -0.5 / 6]) and grad[1] == grad[0]
    assert m["is_weight"] == pytest.approx((1.2 + 1 + 0.5) / 3) and m["is_capped_fraction"] == pytest.approx(1 / 3)
    assert m["clip_fraction"] == 0.0 and m["importance_ratio"] == 1.0
    # with offPolicyClip on the stale row is anchored at the rollout: weighted 1, since its ratio
    # already divides by pi_behaviour; the fresh row is still weighted
    grad, m = _off_policy({"off_policy_clip": True, "importance_sampling": True, "importance_sampling_cap": 1.2},
                          stale=True)
    assert grad[0] == pytest.approx([-1.2 / 6, -1 / 6, -0.5 / 6])
    assert grad[1] == pytest.approx([0.0, -1 / 6, -0.5 / 6])
    assert m["is_weight"] == pytest.approx((1.2 + 1 + 0.5 + 3) / 6) and m["is_capped_fraction"] == pytest.approx(1 / 6)


def test_off_policy_corrections_default_to_on_exactly_when_samples_may_be_stale():
    assert off_policy_options(cfg()) == (False, False, 3.0)
    assert off_policy_options(cfg(max_staleness=1)) == (True, True, 3.0)
    assert off_policy_options(cfg(max_staleness=2, off_policy_clip=False, importance_sampling_cap=2.0)) == (
        False, True, 2.0)
    assert off_policy_options(cfg(importance_sampling=True)) == (False, True, 3.0)
    # off by default in a synchronous run: the loss is exactly the on-policy one, behaviour or not
    logp = -torch.rand(2, 5, generator=torch.Generator().manual_seed(4), dtype=D)
    plain, m = policy_loss(logp, logp, ADV, MASK, cfg())
    given, _ = policy_loss(logp, logp, ADV, MASK, cfg(), behaviour_logp=logp - 1.0, stale=torch.tensor([True, True]))
    assert plain.item() == given.item() and "is_weight" not in m


def test_off_policy_corrections_need_behaviour_logprobs():
    z = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="needs behaviour_logp"):
        policy_loss(z, z, ADV, MASK, cfg(importance_sampling=True))
    with pytest.raises(ValueError, match="offPolicyClip needs stale"):
        policy_loss(z, z, ADV, MASK, cfg(off_policy_clip=True), behaviour_logp=z)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_padding_changes_no_off_policy_correction(loss_type):
    g = torch.Generator().manual_seed(5)
    logp = -torch.rand(2, 5, generator=g, dtype=D)
    behaviour = logp + 0.5 * torch.randn(2, 5, generator=g, dtype=D)
    pad = lambda x, v: torch.cat([x, torch.full((2, 4), v, dtype=x.dtype)], dim=1)  # noqa: E731
    c = cfg(loss_type, max_staleness=1)
    stale = torch.tensor([True, False])
    short, m1 = policy_loss(logp, logp, ADV, MASK, c, max_response_tokens=16, behaviour_logp=behaviour, stale=stale)
    # padding whose exp would overflow float64 if it were not masked before exp
    long, m2 = policy_loss(pad(logp, 800.0), pad(logp, 800.0), ADV, pad(MASK, 0), c, max_response_tokens=16,
                           behaviour_logp=pad(behaviour, -800.0), stale=stale)
    assert long.item() == pytest.approx(short.item(), abs=1e-12)
    assert m2["is_weight"] == pytest.approx(m1["is_weight"]) and math.isfinite(m2["is_weight"])
