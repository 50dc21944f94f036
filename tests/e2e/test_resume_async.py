"""Resuming after SIGKILL replays nothing and skips nothing; asynchronous runs stay within maxStaleness.

Short runs of the tiny example with a small batch, so each takes about a minute on 2 cores.
"""

from __future__ import annotations

import pytest

from tests.speed import scaled
from tests.e2e.conftest import finish, kill_trainer, manifest, records, run_dir_of, start_run, steps, wait_for
from zeroth import validation

pytestmark = pytest.mark.e2e

SHORT = {"algorithm": {"maxSteps": 8, "promptsPerStep": 8, "groupSize": 4, "warmupSteps": 2},
         "checkpoint": {"everySteps": 2, "keep": 2}, "eval": {"everySteps": 0, "samplesPerPrompt": 2},
         "dataset": {"evalSize": 16}}


def short(name: str, **more) -> dict:
    m = manifest(**SHORT)
    for key, value in more.items():
        m["spec"][key] = {**m["spec"].get(key, {}), **value}
    m["metadata"]["name"] = name
    return m


def last_per_step(recs: list[dict]) -> dict[int, dict]:
    out = {}
    for r in recs:
        out[r["step"]] = r  # a replayed step's later record wins
    return out


def test_killed_run_resumes_with_no_step_lost_or_repeated(tmp_path):
    finish(start_run(tmp_path, short("unbroken")))
    unbroken = last_per_step(steps(run_dir_of(tmp_path, "unbroken")))

    proc = start_run(tmp_path, short("killed"))
    wait_for(lambda: list(tmp_path.glob("runs/killed-*/trainer.pid")), 120, "the trainer to start")
    run_dir = run_dir_of(tmp_path, "killed")
    # kill after step 3 is recorded (the trainer may have gone on a few steps by the time it lands:
    # these steps take a fraction of a second)
    wait_for(lambda: any(r["step"] >= 3 for r in steps(run_dir)), 600, "step 3")
    kill_trainer(run_dir)
    proc.communicate(timeout=scaled(60))
    assert proc.returncode != 0
    killed_at = max(r["step"] for r in steps(run_dir))
    assert killed_at < 8

    finish(start_run(tmp_path, resume=run_dir))
    resumed = steps(run_dir)
    after = [r["step"] for r in resumed[[r["step"] for r in resumed].index(killed_at) + 1:]]
    # it went back to the newest complete checkpoint (every 2 steps), then on, one step at a time, to the end
    assert after[0] <= killed_at + 1 and (after[0] - 1) % 2 == 0 and after == list(range(after[0], 9))
    final = last_per_step(resumed)
    assert sorted(final) == sorted(unbroken) == list(range(1, 9))
    for step in range(1, 9):
        a, b = unbroken[step], final[step]
        assert a["tasks_sha"] == b["tasks_sha"], f"step {step} trained on other prompts"
        assert a["reward_mean"] == pytest.approx(b["reward_mean"], abs=1e-6), step
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4), step


def test_async_run_stays_within_max_staleness(tmp_path):
    finish(start_run(tmp_path, short("async", algorithm={"maxStaleness": 2})))
    recs = steps(run_dir_of(tmp_path, "async"))
    assert [r["step"] for r in recs] == list(range(1, 9))
    staleness = [r["staleness_max"] for r in recs]
    assert max(staleness) == 2, staleness  # generation really ran ahead, and never further than 2
    assert all(0 <= s <= 2 for s in staleness)
    # The loss anchors a stale sample's ratio at the rollout's behaviour log-probs, so clipping binds
    # on tokens the trainer has since moved past the clip range; a fresh sample (the first step's)
    # is anchored at the trainer's own log-probs: ratio exactly 1, nothing clipped. A synchronous or
    # behaviour-blind loss would clip nothing at all. The importance weights are recorded.
    algo = validation.validate(short("async", algorithm={"maxStaleness": 2})).spec.algorithm
    assert algo.off_policy_clip is None and algo.importance_sampling is None  # the defaults: on when async
    stale = [r for r in recs if r["staleness_max"] >= 1]
    assert len(stale) >= len(recs) // 2, staleness
    assert all(r["logprob_mismatch"] > 1e-4 for r in stale), [r["logprob_mismatch"] for r in stale]
    assert any(r["clip_fraction"] > 0 for r in stale), [r["clip_fraction"] for r in stale]
    assert all(r["clip_fraction"] == 0 for r in recs if r["staleness_max"] == 0)
    for r in recs:
        assert 0 < r["is_weight"] <= algo.importance_sampling_cap and 0 <= r["is_capped_fraction"] <= 1, r
    assert any(r.get("eval_greedy") is not None for r in records(run_dir_of(tmp_path, "async")))
