"""The DAPO-style options in a real run: dynamic sampling, token-level loss, clip-higher, the
overlong soft punishment, gradient checkpointing and bf16 weights, all at once on the CPU.

Here 60-90 % of the groups first drawn have all-equal rewards (no signal); dynamic sampling
replaces them with groups from new prompts (up to 4 refill rounds), keeping the step's size.
"""

from __future__ import annotations

import math

import pytest

from tests.e2e.conftest import finish, run_dir_of, start_run, steps
from tests.e2e.test_resume_async import short

pytestmark = pytest.mark.e2e


def test_dapo_options_train_and_dynamic_sampling_drops_signal_free_groups(tmp_path):
    m = short("dapo", algorithm={"dynamicSampling": True, "lossType": "dapo", "clipLow": 0.2, "clipHigh": 0.28,
                                 "maxResponseTokens": 16, "overlong": {"bufferTokens": 4, "penalty": 1.0}},
              trainer={"deepspeed": {"zeroStage": 1, "gradientCheckpointing": True}},
              model={"dtype": "bfloat16"})
    finish(start_run(tmp_path, m))
    recs = steps(run_dir_of(tmp_path, "dapo"))
    assert [r["step"] for r in recs] == list(range(1, 9))
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in recs)
    assert all(r["trained_tokens"] > 0 for r in recs)
    prompts = m["spec"]["algorithm"]["promptsPerStep"]
    for r in recs:
        # what was drawn first had signal-free groups; they were replaced from new prompts, as far
        # as the refill rounds allowed, so the trained batch has fewer of them
        assert r["all_equal_groups_fraction"] <= r["all_equal_groups_fraction_drawn"], r["step"]
        assert (r["prompts_drawn"] > prompts) == (r["all_equal_groups_fraction_drawn"] > 0), r["step"]
        # every group with signal that any draw found is trained on, up to the step's size: only
        # the places the refills could not fill take signal-free groups
        assert round(r["all_equal_groups_fraction"] * prompts) == max(0, prompts - r["informative_groups_drawn"]), r
        # what the fleet generated counts the groups the step dropped: more than it trained on, and
        # more generation FLOPs (2N a token) than a third of the training's (6N a token), exactly when
        # refills drew more prompts than the step keeps
        refilled = r["prompts_drawn"] > prompts
        assert (r["generated_tokens"] > r["trained_tokens"]) == refilled, r
        assert (3 * r["model_flops_generation"] > r["model_flops_train"]) == refilled, r
        assert r["generated_tokens"] >= r["trained_tokens"], r
    # How much refills help depends on how often a new group has signal, which falls as the policy
    # sharpens: no fixed ratio, but over the run they must have replaced some
    drawn = sum(r["all_equal_groups_fraction_drawn"] for r in recs)
    trained = sum(r["all_equal_groups_fraction"] for r in recs)
    assert drawn > 0 and trained < drawn, (trained, drawn)
