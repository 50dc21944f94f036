"""Verifiers: reward functions from completions and gold answers, by name.

A verifier is `(completion: str, gold: Any, spec: VerifierSpec) -> float` in [0, 1]; `REGISTRY`
maps every name in `zeroth.api.VERIFIERS` to one (a test checks the two agree). Callers use:

- `score(spec, completion, gold) -> VerifierResult`: never raises. A timeout (a verifier raising
  `TimeoutError`) scores 0 with `timed_out`; any other exception scores 0 with `error` set
  (for `math`, "gold does not parse" means the sample should be skipped, not trained on).
- `reward(specs, completion, gold) -> (reward, results)`: the weighted sum of the scores.
- `is_correct(results)`: every verifier but `format` scored 1. This is the "accuracy" reported
  beside the reward; a run with only a `format` verifier has no notion of correct, so False.
- `answer_key(specs, completion)`: the answer maj@k votes on: the first graded verifier's
  extraction, in that verifier's normal form (`KEYS`); None when there is no answer.

Every verifier is deterministic and bounds the text it reads (`extract.MAX_COMPLETION_CHARS`).
countdown, arc and format are bounded in time by construction (linear scans and small parses of
bounded text); math and code run in other processes and enforce `spec.timeout_seconds`. Each
module's docstring says what it defends against and what it does not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zeroth.api import VerifierSpec

from . import arc, code_tests, countdown, math_answers, think_format
from .extract import extract_answer

Verifier = Callable[[str, Any, VerifierSpec], float]

REGISTRY: dict[str, Verifier] = {
    "countdown": countdown.verify,
    "math": math_answers.verify,
    "arc": arc.verify,
    "format": think_format.verify,
    "code": code_tests.verify,
}

FORMAT = "format"  # shapes the output; not part of correctness


def plain_key(answer: str) -> str | None:
    """Whitespace-insensitive text: each line stripped, runs of blanks one space, no empty lines."""
    return "\n".join(" ".join(line.split()) for line in answer.splitlines() if line.strip()) or None


# How each verifier's answers are normalised for voting; others use `plain_key`.
KEYS: dict[str, Callable[[str], str | None]] = {
    "countdown": countdown.answer_key,
    "math": math_answers.answer_key,
    "arc": arc.answer_key,
}


def verifier(name: str) -> Verifier:
    """The verifier called `name`; ValueError listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown verifier {name!r}; known: {', '.join(REGISTRY)}") from None


@dataclass(frozen=True)
class VerifierResult:
    """One verifier's verdict on one completion; `seconds` is wall time, waits included."""

    name: str
    score: float
    timed_out: bool = False
    error: str | None = None
    seconds: float = 0.0


def score(spec: VerifierSpec, completion: str, gold: Any) -> VerifierResult:
    """Score one completion with one verifier. Never raises (but lets KeyboardInterrupt through)."""
    start = time.perf_counter()
    name = getattr(spec, "name", None)
    timed_out, error, value = False, None, 0.0
    try:
        value = float(verifier(name)(completion, gold, spec))
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            error, value = f"verifier returned {value!r}, outside [0, 1]", 0.0
    except TimeoutError as exc:
        timed_out, error = True, str(exc) or "timed out"
    except Exception as exc:  # noqa: BLE001 - a verifier bug or bad gold must not kill a rollout worker
        error = f"{type(exc).__name__}: {exc}"[:500]
    return VerifierResult(str(name), value, timed_out, error, time.perf_counter() - start)


def reward(specs: list[VerifierSpec], completion: str, gold: Any) -> tuple[float, list[VerifierResult]]:
    """The weighted sum of every verifier's score, and each verifier's result."""
    results = [score(spec, completion, gold) for spec in specs]
    return sum(spec.weight * r.score for spec, r in zip(specs, results, strict=True)), results


def answer_key(specs: list[VerifierSpec], completion: str) -> str | None:
    """The normalised answer of `completion` for majority voting: read the way the first graded
    (non-`format`) verifier reads it (its `answer` extraction), normalised by `KEYS`. None when
    there is no graded verifier or no answer. Never raises."""
    graded = [s for s in specs if s.name != FORMAT]
    if not graded:
        return None
    try:
        answer = extract_answer(completion, graded[0].answer)
        return None if answer is None else KEYS.get(graded[0].name, plain_key)(answer)
    except Exception:  # noqa: BLE001 - a vote lost, never a rollout worker
        return None


def is_correct(results: list[VerifierResult]) -> bool:
    """True when every non-format verifier scored 1.0 (and there is at least one)."""
    graded = [r for r in results if r.name != FORMAT]
    return bool(graded) and all(r.score == 1.0 for r in graded)


__all__ = ["KEYS", "REGISTRY", "Verifier", "VerifierResult", "answer_key", "is_correct", "reward", "score",
           "verifier"]
