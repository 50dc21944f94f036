"""What `zeroth run` reads back from a run directory after a stop, and the environment it gives
the trainer for Ray."""

from __future__ import annotations

import json

from zeroth import checkpoints, local


def write_steps(run_dir, steps):
    with open(run_dir / "metrics.jsonl", "a") as f:
        for step in steps:
            f.write(json.dumps({"step": step, "reward_mean": 0.5}) + "\n")
        f.write(json.dumps({"step": steps[-1], "eval_greedy": 0.1}) + "\n")  # not a step's record


def test_a_stop_is_judged_by_the_steps_of_this_attempt_only(tmp_path):
    write_steps(tmp_path, [1, 2, 3, 4, 5, 6])  # an earlier attempt, killed after step 6
    since = (tmp_path / "metrics.jsonl").stat().st_size
    assert local.last_step(tmp_path) == 6
    assert local.last_step(tmp_path, since) == 0  # resumed, stopped before its first step: nothing lost
    write_steps(tmp_path, [5])  # the resumed attempt trains step 5 again
    assert local.last_step(tmp_path, since) == 5
    (tmp_path / "metrics.jsonl").open("a").write('{"step": 7, "reward_me')  # a line cut short by a kill
    assert local.last_step(tmp_path, since) == 5


def test_the_newest_complete_checkpoint_is_the_one_with_its_state_file(tmp_path):
    assert checkpoints.newest_step(tmp_path / "missing") == 0
    for step, whole in ((2, True), (4, True), (6, False)):
        d = tmp_path / checkpoints.tag(step)
        d.mkdir()
        if whole:
            (d / checkpoints.STATE_FILE).write_text(json.dumps({"step": step}))
    assert checkpoints.newest_step(tmp_path) == 4


def test_token_auth_is_set_only_for_a_ray_of_the_runs_own(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert local.trainer_env()["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # the user's own Ray: its own auth
    assert "RAY_AUTH_MODE" not in local.trainer_env()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert local.trainer_env()["RAY_AUTH_MODE"] == "disabled"
