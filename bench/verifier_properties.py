"""The properties every verifier (countdown, math, arc, format) must keep on any completion.

Shared by the hypothesis tests (`tests/unit/test_verifier_properties.py`) and the atheris fuzz
targets (`bench/fuzz_verifiers.py`); see the latter's docstring for the list.
"""

from __future__ import annotations

from typing import Any

from zeroth.api import VerifierSpec
from zeroth.rollout import verifiers

CPU_BOUND = 1.0  # seconds: a linear scan of 256 KiB on a busy, slow core, with room to spare
MATH_TIMEOUT = 1.0
MARGIN = 0.5  # killing a worker and forking its replacement, on a busy 2-core machine

FRAGMENTS = [
    "<answer>", "</answer>", "<think>", "</think>", "<answer><answer>", "</answer></answer>",
    "\\boxed{", "{", "}", "(", ")", "[", "]", "[[", "]]", ",", " ", "\n", "=", "+", "-", "*", "/",
    "^{", "!", "\\frac{", "\\%", "%", "x", "$", "\u200b", "\ufeff", "\u2060", "\u00a0", "\u202e",
    "9" * 400, "9^{9^{9}}", "(" * 60, ")" * 60, "{" * 60, "0", "1", "7", "42", "١٢", "１２",
]  # fmt: skip

CASES: dict[str, dict[str, Any]] = {
    "countdown": {"gold": {"numbers": [3, 5, 7, 9], "target": 24}, "right": "9+7+5+3", "wrong": "9+7+5-3"},
    "math": {"gold": "42", "right": "\\frac{84}{2}", "wrong": "41"},
    "arc": {"gold": [[0, 1, 2], [3, 4, 5]], "right": "012\n345", "wrong": "012\n346"},
    "format": {"gold": None},
}


def spec(name: str) -> VerifierSpec:
    return VerifierSpec(name=name, timeout_seconds=MATH_TIMEOUT) if name == "math" else VerifierSpec(name=name)


def bound(name: str) -> float:
    return MATH_TIMEOUT + MARGIN if name == "math" else CPU_BOUND


def block(text: str) -> str:
    return f"<answer>{text}</answer>"


def check(name: str, prefix: str, middle: str) -> list[str]:
    """Every property for one verifier on completions built from `prefix` and `middle`; the
    failures found, as text (empty when all hold)."""
    case, s, failures = CASES[name], spec(name), []

    def scored(completion: str) -> verifiers.VerifierResult:
        result = verifiers.score(s, completion, case["gold"])
        if result.error is not None and not (name == "math" and result.timed_out):
            failures.append(f"error {result.error!r} on {completion[:200]!r}")
        if result.seconds > bound(name):
            failures.append(f"{result.seconds:.2f} s > {bound(name)} s on {completion[:200]!r}")
        return result

    for completion in (prefix, prefix + middle):
        first, second = scored(completion), scored(completion)
        if first.score != second.score and not (first.timed_out or second.timed_out):
            failures.append(f"rewards {first.score} then {second.score} on {completion[:200]!r}")
    if name == "format":
        well_formed = f"<think>{prefix.replace('<', '')}</think>" + block("b")
        if scored(well_formed).score != 1.0:
            failures.append(f"well-formed scored 0: {well_formed[:200]!r}")
        for bad in (well_formed + block("c"), well_formed + "x", "x" + well_formed, well_formed + middle + block("c")):
            if scored(bad).score != 0.0:
                failures.append(f"malformed scored 1: {bad[:200]!r}")
        return failures
    right = prefix + block(case["right"])
    result = scored(right)
    if result.score != 1.0 and not result.timed_out:
        failures.append(f"a correct last block scored {result.score}: {right[-300:]!r}")
    wrong = right + middle + block(case["wrong"])
    if scored(wrong).score != 0.0:
        failures.append(f"a wrong last block scored 1: {wrong[-300:]!r}")
    return failures
