"""Math: the answer is mathematically equal to the gold answer, judged by math-verify.

Gold: the answer as a string (`\\frac{1}{2}`, `0.5`, `x^2+1`, `(1,2)`), with or without `$`.
Both gold and answer are read as one LaTeX math expression: surrounding `$` are stripped and the
text is wrapped in `$...$` before `math_verify.parse` (LaTeX and plain-expression extraction,
`boxed_match_priority=0`, no `StringExtractionConfig`, as RECIPES says). Wrapping matters: bare
text like `41 or 42` is searched for any number and would match 42, while `$41 or 42$` reads as
the set {41, 42}, which is not 42. Score 1 when `math_verify.verify(gold, answer)` holds and
the answer passes three stricter rules of ours, else 0.

Accepted forms, where we are stricter than math-verify (each rule has a test):
- Percent: an answer with a percent sign (`%`, `\\%`, or the word "percent") scores only against
  a gold that has one. math-verify reads `10\\%` as 10/100 yet also compares its number alone, so
  `10\\%` equals both `10` and `0.1`: a percent sign would hedge between two values. The other way
  round stays lenient: against a gold of `10\\%`, `10\\%`, `10` (the unit left off) and `0.1` all score.
- Equations: against a gold that is no equation, an equation answer must be one assignment to a
  variable, `x = 5` or `x = 2+3` (graders commonly accept it). math-verify takes the right side
  of any equation, so `2+3=5`, `10=5`, `5=5` and chains like `y=x=5` would equal 5; we score them 0.
  A gold equation (`x=5`) is compared by math-verify as it is (`5` and `x=5` both score).
- Numbers: when both sides are numbers and one holds a decimal, they must also agree to
  `SIGNIFICANT_DIGITS` (6) significant digits. math-verify rounds to 6 decimal places, which
  makes every number below 5e-7 equal (`0.0000001` equalled `0.0000002`); with both rules
  `0.333333` still equals `\\frac{1}{3}` and `0.5000001` equals `0.5`.

A gold answer that does not parse to a mathematical object (math-verify finds nothing, or only
its raw-string fallback) raises "gold does not parse" (score 0 with the error recorded),
so callers can skip the sample instead of training on a reward that could never be 1.

parse and verify run in a persistent worker process (`workers.WorkerPool`) with a hard wall-clock
limit of `spec.timeout_seconds`: math-verify's signal-based timeouts are switched off (they fail
off the main thread), and an overrunning worker is killed and replaced by a fork of a warm spare
(math-verify imported and primed once), so the next sample never pays a start-up. The limit
covers the call's own work only, and a verdict read after it is a timeout too: every score either
came within `timeout_seconds` or is flagged `timed_out`. Workers have a 4 GiB address-space
limit. Gold parses are cached in the worker (a group of samples shares one gold).

Defends against: slow or exploding symbolic work (`9^{9^{9}}`, huge factorials) by the kill;
memory blow-ups by the address-space limit; listing candidates in one block (a list or set is
compared as a set and fails against a single value); many blocks (extraction keeps the last);
over-long answers (over `MAX_ANSWER_CHARS` there is no answer). Does not defend against
math-verify's other leniencies (it accepts some answers a human grader would not, such as
`41 \\lor 42` for 42, units in `\\text{}` dropped, `(1,2)` read as an open interval, equations
inside a tuple or set compared by their right sides); the significant-digit rule checks only a
whole answer that is a number (or `x = number`), not numbers inside tuples, sets or matrices; and
`1e-7` is read as 1*e - 7 (Euler's e), so scientific notation must be written `10^{-7}`.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from zeroth.api import VerifierSpec

from .extract import extract_answer
from .workers import WorkerPool, WorkerTimeout

MAX_ANSWER_CHARS = 2000
WORKER_MEMORY_BYTES = 4 << 30

_pool: WorkerPool | None = None


def pool() -> WorkerPool:
    """The process-wide math worker pool, created on first use."""
    global _pool
    if _pool is None:
        _pool = WorkerPool(
            size=min(4, os.cpu_count() or 1),
            memory_bytes=WORKER_MEMORY_BYTES,
            preload=("math_verify", f"{__name__}:prime"),
        )
    return _pool


def as_latex(text: str) -> str:
    """`text` as one inline math expression: outer `$` stripped, then wrapped in `$...$`."""
    return "$" + text.strip().strip("$").strip() + "$"


# Everything below runs inside the worker process.


def prime() -> None:
    """Run once in the zygote: math-verify's first parse and verify fill lazy caches (a parser,
    compiled patterns) that would otherwise cost each fresh worker's first call a few tenths."""
    check("\\frac{1}{2}", "0.5")
    _parse_gold.cache_clear()


@functools.cache
def _config() -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


def _parse(text: str) -> list:
    from math_verify import parse

    return parse(as_latex(text), extraction_config=_config(), parsing_timeout=None)


_parse_gold = functools.lru_cache(maxsize=1024)(_parse)


def check(gold: str, answer: str) -> int:
    """1 when `answer` equals `gold` by math-verify and our stricter rules, 0 when not, -1 when the
    gold does not parse.

    Runs in a worker: no timeouts here (the pool enforces them), and only plain values cross.
    """
    from math_verify import verify

    gold_parsed = _parse_gold(gold)
    gold_objects = [item for item in gold_parsed if not isinstance(item, str)]
    if not gold_objects:
        return -1  # nothing, or only math-verify's raw-string fallback: no mathematical object
    if _has_percent(answer) and not _has_percent(gold):
        return 0
    answer_parsed = _parse(answer)
    if not answer_parsed:
        return 0
    answer_objects = [item for item in answer_parsed if not isinstance(item, str)]
    if any(not _equation_allowed(g, a) for g in gold_objects for a in answer_objects):
        return 0
    if not verify(gold_parsed, answer_parsed, timeout_seconds=None):
        return 0
    # math-verify said equal (through some pair of its extractions): every pair of numbers must
    # also agree to SIGNIFICANT_DIGITS, which its rounding to decimal places does not ensure.
    return int(all(_same_significant(g, a) for g in gold_objects for a in answer_objects))


def _has_percent(text: str) -> bool:
    return "%" in text or "percent" in text.lower()


def _equation_allowed(gold: Any, answer: Any) -> bool:
    """An equation answer to a gold that is no equation must be one assignment, `x = <value>`.

    math-verify compares the right side of any equation (or of the last of a chain) with such a
    gold, so `2+3=5`, `10=5` and `y=x=5` all equal 5; a variable named on the left is what a
    grader accepts, anything else on the left is an unchecked claim."""
    from math_verify.grader import is_relation
    from sympy import Eq, Symbol

    if not is_relation(answer) or is_relation(gold):
        return True
    return isinstance(answer, Eq) and isinstance(answer.lhs, Symbol)


SIGNIFICANT_DIGITS = 6


def _same_significant(gold: Any, answer: Any) -> bool:
    """False when both are real numbers, one holds a float, and they differ in the first
    `SIGNIFICANT_DIGITS` significant digits (rounded half-even); True otherwise (not numbers:
    math-verify's verdict stands)."""
    from decimal import Context, Decimal, InvalidOperation

    from sympy import Basic, Eq, Float

    gold, answer = (x.rhs if isinstance(x, Eq) else x for x in (gold, answer))  # `x = 0.5`: its value
    if not (isinstance(gold, Basic) and isinstance(answer, Basic)):
        return True
    if not (gold.is_number and answer.is_number and (gold.has(Float) or answer.has(Float))):
        return True
    context = Context(prec=SIGNIFICANT_DIGITS)
    try:
        values = [context.plus(Decimal(str(x.doit().evalf(SIGNIFICANT_DIGITS + 10)))) for x in (gold, answer)]
    except (InvalidOperation, ValueError, TypeError, ArithmeticError):
        return True  # not a finite real (complex, infinite): leave it to math-verify
    return values[0] == values[1]


@functools.cache
def _normalization():
    from latex2sympy2_extended.math_normalization import NormalizationConfig

    # math-verify's own LaTeX normaliser, without its unit stripping (a regex that is slow on
    # hostile text) and without box extraction (extraction already happened)
    return NormalizationConfig(basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="none")


def answer_key(answer: str) -> str | None:
    """The form of an extracted answer that maj@k votes on: math-verify's LaTeX normalisation
    (`0.5`, `.5`, `\\frac12` and `\\dfrac{1}{2}` all become `\\frac{1}{2}`; `\\left(` becomes `(`),
    without `$` or whitespace. Equal keys are the same answer; different keys may still be equal
    numbers (`2/4` and `1/2`), which then split the vote. None over `MAX_ANSWER_CHARS`.
    Whitespace runs are collapsed before the normaliser runs: some of its regexes are quadratic in
    runs of spaces."""
    from latex2sympy2_extended.math_normalization import normalize_latex

    if len(answer) > MAX_ANSWER_CHARS:
        return None
    text = " ".join(answer.split()).strip("$ ")
    return "".join(normalize_latex(text, _normalization()).split()) or None


def verify(completion: str, gold: Any, spec: VerifierSpec) -> float:
    """1.0 when the extracted answer equals the gold answer by math-verify, else 0.0."""
    if isinstance(gold, int | float) and not isinstance(gold, bool):
        gold = str(gold)
    if not isinstance(gold, str) or not gold.strip() or len(gold) > MAX_ANSWER_CHARS:
        raise ValueError("gold does not parse")
    answer = extract_answer(completion, spec.answer)
    if answer is None or len(answer) > MAX_ANSWER_CHARS:
        return 0.0
    try:
        verdict = pool().run(check, (gold, answer), spec.timeout_seconds)
    except WorkerTimeout as exc:
        raise TimeoutError(str(exc)) from None
    if verdict < 0:
        raise ValueError("gold does not parse")
    return float(verdict)
