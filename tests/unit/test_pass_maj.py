"""pass@k and maj@k: maj@k votes on each sample's extracted answer, not on its whole text.

Samples are made by the rollout worker's own verification step (`RolloutWorker._verify`), so the
answer each one votes with is the one a run would record. Expected values are worked out by hand."""

from __future__ import annotations

import pytest

from tests.conftest import minimal_manifest
from zeroth.rollout.worker import RolloutWorker
from zeroth.trainer.loop import pass_maj

GOLD = {"numbers": [9, 4, 2], "target": 1}


@pytest.fixture(scope="module")
def worker():
    return RolloutWorker("unused", minimal_manifest()["spec"])  # countdown, tag extraction; no model loaded


def samples(worker, completions: list[str], task_id: str = "t") -> list:
    task = {"id": task_id, "prompt": "", "gold": GOLD}
    return [worker._verify(task, 0, [], [], [], text, False) for text in completions]


def cot(reasoning: str, answer: str | None) -> str:
    return f"<think>{reasoning}</think>" + (f"<answer>{answer}</answer>" if answer is not None else "")


def test_same_answer_through_different_reasoning_is_one_vote(worker):
    group = samples(worker, [cot("adding", "9+4+2"), cot("first try", "9-4*2"), cot("second", "9 - 4 * 2"),
                             cot("guess", "9*4-2")])
    assert [s.correct for s in group] == [False, True, True, False]
    assert pass_maj(group, 4) == (1.0, 1.0)  # "9-4*2" has two votes; every text differs


def test_samples_without_an_answer_do_not_vote(worker):
    group = samples(worker, [cot("hmm", None)] * 3 + [cot("ok", "9-4*2")])
    assert pass_maj(group, 4) == (1.0, 1.0)  # three identical texts, but no answer among them
    assert pass_maj(samples(worker, [cot("hmm", None), "no tags"]), 2) == (0.0, 0.0)


def test_a_wrong_majority_answer_loses(worker):
    group = samples(worker, [cot("a", "9-4*2"), cot("b", "9+4+2"), cot("c", "9+4+2 ")])
    assert pass_maj(group, 3) == (1.0, 0.0)


def test_ties_go_to_the_answer_voted_first(worker):
    right, wrong = cot("r", "9-4*2"), cot("w", "9+4+2")
    assert pass_maj(samples(worker, [right, wrong, wrong, right]), 4) == (1.0, 1.0)
    assert pass_maj(samples(worker, [wrong, right, right, wrong]), 4) == (1.0, 0.0)


def test_scores_are_per_task(worker):
    group = (samples(worker, [cot("x", "9-4*2"), cot("y", "9+4+2"), cot("z", "9-4*2")], "a")
             + samples(worker, [cot("x", "9+4+2"), cot("y", "9+4+2"), cot("z", "9*4-2")], "b"))
    assert pass_maj(group, 3) == (0.5, 0.5)
