"""Verifiers: the registry, answer extraction, countdown, arc, format and math, on honest and hostile text.

Every expected score is written by hand from the task's rules, never computed with the code under
test. Hostile inputs must score 0 quickly and never raise. The code sandbox has its own file.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from zeroth import api
from zeroth.api import AnswerExtraction, VerifierSpec
from zeroth.rollout import verifiers
from zeroth.rollout.verifiers import arc, math_answers, workers
from zeroth.rollout.verifiers.extract import MAX_COMPLETION_CHARS, extract_answer

TAG = AnswerExtraction()
LINE = AnswerExtraction(mode="line", tag="")
ONE_MB = 1 << 20


def spec(name: str, **kw) -> VerifierSpec:
    return VerifierSpec(name=name, **kw)


def ans(text: str) -> str:
    return f"<think>reasoning</think>\n<answer>{text}</answer>"


def run(name: str, completion: str, gold, **kw) -> verifiers.VerifierResult:
    """Score through the public, never-raising entry point, and insist it stays quick."""
    start = time.perf_counter()
    result = verifiers.score(spec(name, **kw), completion, gold)
    assert time.perf_counter() - start < 10
    return result


# --- registry and the score/reward wrappers -------------------------------------------------


def test_registry_names_are_exactly_the_api_names():
    assert tuple(verifiers.REGISTRY) == api.VERIFIERS


def test_unknown_verifier_fails_listing_the_known_ones():
    with pytest.raises(ValueError) as err:
        verifiers.verifier("regex")
    for name in api.VERIFIERS:
        assert name in str(err.value)
    result = verifiers.score(VerifierSpec.model_construct(name="regex"), "x", None)
    assert result.score == 0.0 and "unknown verifier" in result.error


def test_score_never_raises_and_records_why(monkeypatch):
    assert run("countdown", ans("1+2"), "not a dict").error.startswith("ValueError")
    monkeypatch.setitem(verifiers.REGISTRY, "countdown", lambda c, g, s: 1 / 0)
    assert run("countdown", "", None).error.startswith("ZeroDivisionError")
    monkeypatch.setitem(verifiers.REGISTRY, "countdown", lambda c, g, s: float("nan"))
    assert run("countdown", "", None).score == 0.0
    monkeypatch.setitem(verifiers.REGISTRY, "countdown", lambda c, g, s: 2.0)
    result = run("countdown", "", None)
    assert (result.score, "outside [0, 1]" in result.error) == (0.0, True)

    def slow(c, g, s):
        raise TimeoutError("took too long")

    monkeypatch.setitem(verifiers.REGISTRY, "countdown", slow)
    result = run("countdown", "", None)
    assert (result.score, result.timed_out, result.error) == (0.0, True, "took too long")


def test_reward_is_the_weighted_sum_and_accuracy_ignores_format():
    gold = {"numbers": [9, 4, 2], "target": 1}
    specs = [spec("countdown", weight=2.0), spec("format", weight=0.5)]
    total, results = verifiers.reward(specs, ans("9-4*2"), gold)
    assert total == 2.5 and [r.name for r in results] == ["countdown", "format"]
    assert verifiers.is_correct(results)
    total, results = verifiers.reward(specs, "<answer>9-4*2</answer> trailing", gold)
    assert total == 2.0  # the answer is right; text after it costs the format reward
    total, results = verifiers.reward(specs, "no tags at all: 9-4*2", gold)
    assert total == 0.0 and not verifiers.is_correct(results)
    total, results = verifiers.reward(specs, "9-4*2</think><answer>9+4</answer>", gold)
    assert total == 0.5 and not verifiers.is_correct(results)
    _, only_format = verifiers.reward([spec("format")], ans("anything"), None)
    assert only_format[0].score == 1.0 and not verifiers.is_correct(only_format)


# --- answer extraction ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<answer>wrong</answer> then <answer>right</answer>", "right"),
        ("<answer> spaced \n</answer>", "spaced"),
        ("<answer>a<answer>b</answer>", "b"),
        ("<answer>first</answer><answer>unfinished", None),
        ("<answer></answer>", None),
        ("<answer>  \n </answer>", None),
        ("no block", None),
        ("</answer>only closing", None),
        ("<answer>only opening", None),
    ],
)
def test_tag_mode_reads_only_the_last_complete_block(completion, expected):
    assert extract_answer(completion, TAG) == expected


def test_tag_name_comes_from_the_spec():
    assert extract_answer("<answer>no</answer><final>yes</final>", AnswerExtraction(tag="final")) == "yes"


@pytest.mark.parametrize(
    ("completion", "expected"),
    [("9-4*2=1\nnums 1 2: 3", "9-4*2"), (" 5+3 \n=8", "5+3"), ("=1", None), ("\n9-4*2=1", None), ("7", "7")],
)
def test_line_mode_reads_the_first_line_up_to_equals(completion, expected):
    assert extract_answer(completion, LINE) == expected


BOXED = AnswerExtraction(mode="boxed")


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("so the answer is \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
        ("\\boxed{ {1, 2} }", "{1, 2}"),
        ("\\boxed {7}", "7"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces balance too
        ("\\boxed{41} no, \\boxed{42}", "42"),  # only the last box counts
        ("$\\boxed{41}$ and \\boxed{42", None),  # the last box never closed: cut inside the answer
        ("\\boxed{}", None),
        ("\\boxed{  }", None),
        ("\\boxed 42", None),
        ("\\boxed", None),
        ("no box: 42", None),
        ("<answer>42</answer>", None),
    ],
)
def test_boxed_mode_reads_the_last_balanced_box(completion, expected):
    assert extract_answer(completion, BOXED) == expected


def test_huge_completions_have_no_answer():
    assert extract_answer("x" * MAX_COMPLETION_CHARS + "<answer>1</answer>", TAG) is None
    assert extract_answer("1+2" * (ONE_MB // 3), LINE) is None
    assert extract_answer("x" * MAX_COMPLETION_CHARS + "\\boxed{1}", BOXED) is None


def test_boxed_mode_is_linear_on_hostile_text():
    start = time.perf_counter()
    assert extract_answer("\\boxed{" + "{" * (MAX_COMPLETION_CHARS - 10), BOXED) is None
    assert extract_answer("\\boxed{1}" * (MAX_COMPLETION_CHARS // 10), BOXED) == "1"
    assert time.perf_counter() - start < 5  # quadratic scanning would take hours


# --- the answers maj@k votes on --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "answers", "key"),
    [
        ("countdown", ["9-4*2", " 9 - 4 * 2", "9-4 *2"], "9-4*2"),
        ("math", ["0.5", "\\frac12", "\\dfrac{1}{2}", "$\\frac{1}{2}$", ".5", "\\frac{ 1 }{ 2 }"], "\\frac{1}{2}"),
        ("math", ["\\left( 1, 2 \\right)", "(1,2)"], "(1,2)"),
        ("arc", ["01\n20", "0 1\n2 0", "[[0, 1], [2, 0]]", "```\n01\n20\n```"], "[[0, 1], [2, 0]]"),
        ("code", ["def f():\n    return 1", "def f():  \n\n  return   1 "], "def f():\nreturn 1"),
    ],
)
def test_answer_keys_merge_the_same_answer_written_differently(name, answers, key):
    specs = [spec("format"), spec(name)]  # the first graded verifier decides, format never does
    assert [verifiers.answer_key(specs, ans(a)) for a in answers] == [key] * len(answers)


@pytest.mark.parametrize(
    ("name", "a", "b"),
    [("countdown", "9-4*2", "9-2*4"), ("math", "\\frac{1}{2}", "\\frac{1}{3}"), ("math", "12", "1 2 3"),
     ("arc", "01\n20", "0120"), ("arc", "01", "10")],
)
def test_answer_keys_keep_different_answers_apart(name, a, b):
    specs = [spec(name)]
    assert verifiers.answer_key(specs, ans(a)) != verifiers.answer_key(specs, ans(b))


def test_answer_key_follows_the_verifiers_extraction():
    boxed = [spec("math", answer={"mode": "boxed"})]
    assert verifiers.answer_key(boxed, "so \\boxed{0.5}") == "\\frac{1}{2}"
    assert verifiers.answer_key(boxed, ans("0.5")) is None  # no box: no vote
    assert verifiers.answer_key([spec("countdown")], "<think>x</think> no answer") is None
    assert verifiers.answer_key([spec("format")], ans("1")) is None  # nothing graded: nothing to vote on
    assert verifiers.answer_key([spec("math")], ans("4" * 2001)) is None  # over MAX_ANSWER_CHARS
    assert verifiers.answer_key([spec("arc")], ans("not a grid")) == "not a grid"  # votes, and loses


def test_math_answer_key_is_quick_on_hostile_text():
    verifiers.answer_key([spec("math")], ans("1"))  # imports math-verify's normaliser (seconds) outside the clock
    start = time.perf_counter()
    # runs of inner spaces take some of math-verify's normaliser's regexes ~1 s each at this length
    for hostile in ["1" + " " * 1998 + "1", "\\frac" + " " * 1990 + "1", "^" + " " * 1990 + "(", "^(" * 999,
                    "\\frac{" * 333]:
        verifiers.answer_key([spec("math")], ans(hostile))
    assert time.perf_counter() - start < 10  # unbounded input would take minutes


# --- countdown ------------------------------------------------------------------------------

GOLD = {"numbers": [9, 4, 2], "target": 1}


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        ("9-4*2", GOLD, 1.0),
        (" ( 9 - (4*2) ) ", GOLD, 1.0),
        ("9-4-2", GOLD, 0.0),  # 3, not 1
        ("(9-4)*2", {"numbers": [9, 4, 2], "target": 10}, 1.0),
        ("9-4*2", {"numbers": [9, 4, 2, 7], "target": 1}, 1.0),  # not every number must be used
        ("9*9*9", {"numbers": [9, 9, 9], "target": 729}, 1.0),  # repeated numbers, each once
        ("3+3", {"numbers": [3, 5], "target": 6}, 0.0),  # 3 used twice
        ("4+4", {"numbers": [3, 5], "target": 8}, 0.0),  # 4 is not given
        ("8", {"numbers": [3, 5], "target": 8}, 0.0),  # the target itself is not given
        ("3/2*4", {"numbers": [3, 2, 4], "target": 6}, 1.0),  # exact intermediate fraction
        ("5/2", {"numbers": [5, 2], "target": 2}, 0.0),  # 2.5: no floor division
        ("5//2", {"numbers": [5, 2], "target": 2}, 0.0),
        ("5%3", {"numbers": [5, 3], "target": 2}, 0.0),
        ("5/(3-3)", {"numbers": [5, 3, 3], "target": 5}, 0.0),  # division by zero
        ("-3+5", {"numbers": [3, 5], "target": 2}, 0.0),  # no unary minus
        ("5-3", {"numbers": [3, 5], "target": 2}, 1.0),
        ("+5", {"numbers": [5], "target": 5}, 0.0),  # no unary plus
        ("2.5*2", {"numbers": [2, 5], "target": 5}, 0.0),
        ("1_0", {"numbers": [10], "target": 10}, 0.0),
        ("09-4*2", GOLD, 0.0),
        ("abs(1)", {"numbers": [1], "target": 1}, 0.0),
        ("__import__('os')", GOLD, 0.0),
        ("9-4*2, 9+4+2", GOLD, 0.0),  # several candidates in one block
        ("9-4*2 or 9+4", GOLD, 0.0),
        ("9-4*2\n9+4+2", GOLD, 0.0),
        ("9-4*2 == 1", GOLD, 0.0),
        ("", GOLD, 0.0),
    ],
)
def test_countdown(answer, gold, expected):
    result = run("countdown", ans(answer), gold)
    assert (result.score, result.error) == (expected, None)


@pytest.mark.parametrize(
    "answer",
    [
        "9**9**9",
        "2**100000",
        "(" * 10000 + "9" + ")" * 10000,
        "1+" * 50000 + "1",
        "١-٤*٢",  # Arabic-Indic digits: Python's parser reads these as numbers
        "９-４*２",  # fullwidth digits
        "9\u2212" + "4*2",  # a Unicode minus sign
    ],
)
def test_countdown_hostile_answers_score_zero_fast(answer):
    start = time.perf_counter()
    result = run("countdown", ans(answer), {"numbers": [9, 9, 9, 4, 2, 1], "target": 1})
    assert (result.score, result.error, result.timed_out) == (0.0, None, False)
    assert time.perf_counter() - start < 1.0


def test_countdown_only_the_last_answer_block_counts():
    assert run("countdown", "<answer>9+4</answer><answer>9-4*2</answer>", GOLD).score == 1.0
    assert run("countdown", "<answer>9-4*2</answer><answer>9+4</answer>", GOLD).score == 0.0
    assert run("countdown", "<answer>9-4*2</answer>" + "x" * ONE_MB, GOLD).score == 0.0


def test_countdown_line_mode_for_the_tiny_model():
    line = {"answer": {"mode": "line", "tag": ""}}
    assert verifiers.score(VerifierSpec.model_validate({"name": "countdown", **line}), "9-4*2=1", GOLD).score == 1.0
    assert verifiers.score(VerifierSpec.model_validate({"name": "countdown", **line}), "9+4*2=1", GOLD).score == 0.0


# --- arc ------------------------------------------------------------------------------------

GRID = [[1, 2, 0], [3, 4, 0]]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("120\n340", 1.0),
        ("1 2 0\n3 4 0", 1.0),
        ("\n 120 \n\n 340 \n", 1.0),
        ("[[1, 2, 0], [3, 4, 0]]", 1.0),
        ("```\n120\n340\n```", 1.0),
        ("120\n341", 0.0),  # one cell wrong
        ("120", 0.0),  # a row missing
        ("12\n34", 0.0),  # a column missing
        ("13\n24\n00", 0.0),  # transposed
        ("120\n34", 0.0),  # ragged
        ("120\n340\n\n120\n340", 0.0),  # two grids in one block
        ("１２０\n３４０", 0.0),  # fullwidth digits
        ("12 0\n34 0", 0.0),  # a two-digit cell
        ("[[1, 2, 0], [3, 4, 10]]", 0.0),
        ("[[true, 2, 0], [3, 4, 0]]", 0.0),  # JSON booleans are not 1
        ("[[1.0, 2, 0], [3, 4, 0]]", 0.0),
        ("[[[1, 2, 0]], [3, 4, 0]]", 0.0),
        ("[" * 100000, 0.0),
        ("", 0.0),
    ],
)
def test_arc(answer, expected):
    result = run("arc", ans(answer), GRID)
    assert (result.score, result.error) == (expected, None)


def test_arc_accepts_numpy_gold_and_bounds_the_size():
    assert run("arc", ans("12\n34"), np.array([[1, 2], [3, 4]])).score == 1.0
    side30 = [[7] * 30 for _ in range(30)]
    assert run("arc", ans("\n".join(["7" * 30] * 30)), side30).score == 1.0
    assert arc.parse_grid("\n".join(["7" * 31] * 31)) is None
    assert run("arc", ans("7"), [[7] * 31]).error.startswith("ValueError")


# --- format ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>a</think><answer>b</answer>", 1.0),
        ("  <think>\na\n</think>\n\n<answer>\nb\n</answer>\n", 1.0),
        ("a (the prompt ended with the opening tag)\n</think>\n<answer>b</answer>", 1.0),
        ("<think></think><answer>b</answer>", 1.0),  # empty reasoning is allowed, as in R1
        ("<think>a</think><answer> </answer>", 0.0),  # empty answer
        ("<think>a</think><think>c</think><answer>b</answer>", 0.0),
        ("<think>a</think><answer>b</answer><answer>c</answer>", 0.0),
        ("<think>a <answer>x</answer></think><answer>b</answer>", 0.0),
        ("<think>a</think><answer>b</answer> and more", 0.0),
        ("<think>a</think> words <answer>b</answer>", 0.0),
        ("<answer>b</answer><think>a</think>", 0.0),
        ("hello <think>a</think><answer>b</answer>", 0.0),  # <think> must open the completion
        ("<think>a<answer>b</answer>", 0.0),
        ("<answer>b</answer>", 0.0),
        ("<think>" + "a" * ONE_MB + "</think><answer>b</answer>", 0.0),
    ],
)
def test_format(completion, expected):
    assert run("format", completion, None).score == expected


INVISIBLE = ["\u200b", "\ufeff", "\u2060", "\u200c\u200d", "\u00a0", "\u00ad", "\u202e", "\u3164",
             "\u2800", "\u034f", " \u200b\n\u2060\t\ufeff "]


@pytest.mark.parametrize("blank", INVISIBLE)
def test_an_answer_of_invisible_characters_is_no_answer(blank):
    assert run("format", f"<think>a</think><answer>{blank}</answer>", None).score == 0.0
    assert extract_answer(f"<answer>{blank}</answer>", TAG) is None
    assert extract_answer(f"\\boxed{{{blank}}}", AnswerExtraction(mode="boxed")) is None
    assert extract_answer(f"{blank}=5", LINE) is None
    assert verifiers.answer_key([spec("countdown")], ans(blank)) is None
    # a visible character among them is an answer
    assert run("format", f"<think>a</think><answer>{blank}7</answer>", None).score == 1.0


def test_format_uses_the_configured_answer_tag():
    completion = "<think>a</think><final>b</final>"
    final = VerifierSpec(name="format", answer=AnswerExtraction(tag="final"))
    assert verifiers.score(final, completion, None).score == 1.0
    assert run("format", completion, None).score == 0.0


# --- math -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def math_pool():
    pool = math_answers.pool()
    pool.warm_up()  # the first worker imports sympy: seconds, outside every test's deadline
    return pool


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        ("1/2", "\\frac{1}{2}", 1.0),
        ("0.5", "\\frac{1}{2}", 1.0),
        ("\\frac{1}{2}", "0.5", 1.0),
        ("$\\frac{2}{4}$", "$\\frac{1}{2}$", 1.0),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 1.0),
        ("\\frac{1}{3}", "\\frac{1}{2}", 0.0),
        ("1+x^2", "x^2+1", 1.0),
        ("x^2-1", "x^2+1", 0.0),
        ("\\sqrt{2}", "\\sqrt 2", 1.0),
        ("42", 42, 1.0),  # a numeric gold is read as its text
        ("41 or 42", "42", 0.0),  # several candidates in one block
        ("41, 42", "42", 0.0),
        ("\\{41, 42\\}", "42", 0.0),
        ("", "42", 0.0),
    ],
)
def test_math(math_pool, answer, gold, expected):
    result = run("math", ans(answer), gold)
    assert (result.score, result.error) == (expected, None)


def test_math_only_the_last_block_counts(math_pool):
    assert run("math", "<answer>41</answer><answer>42</answer>", "42").score == 1.0
    assert run("math", "<answer>42</answer><answer>41</answer>", "42").score == 0.0
    assert run("math", "<answer>42</answer>" + "x" * ONE_MB, "42").score == 0.0
    assert run("math", ans("4" * 5000), "42").score == 0.0  # over MAX_ANSWER_CHARS


def test_math_reads_a_boxed_answer(math_pool):
    boxed = {"answer": {"mode": "boxed"}}
    assert run("math", "<think>half</think> so \\boxed{\\frac{1}{2}}", "0.5", **boxed).score == 1.0
    assert run("math", "\\boxed{0.5} or rather \\boxed{\\frac{1}{3}}", "0.5", **boxed).score == 0.0
    assert run("math", "\\boxed{\\frac{1}{3}} or rather \\boxed{\\frac{1}{2", "0.5", **boxed).score == 0.0


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        # a percent sign scores only against a percent gold (math-verify: 10% equals 10 and 0.1)
        ("10\\%", "10", 0.0),
        ("10\\%", "0.1", 0.0),
        ("10%", "10", 0.0),
        ("10 \\text{ percent}", "10", 0.0),
        ("10\\%", "10\\%", 1.0),
        ("10", "10\\%", 1.0),
        ("0.1", "10\\%", 1.0),
        # an equation answer to a plain gold must be `variable = value` (math-verify: any right side)
        ("x = 5", "5", 1.0),
        ("x = 2+3", "5", 1.0),
        ("2+3=5", "5", 0.0),
        ("10 = 5", "5", 0.0),
        ("5=5", "5", 0.0),
        ("y=x=5", "5", 0.0),
        ("5", "x=5", 1.0),
        ("x=5", "x=5", 1.0),
        # numbers with a decimal agree to 6 significant digits (math-verify: to 6 decimal places)
        ("0.0000001", "0.0000002", 0.0),
        ("0.00000015", "2 \\times 10^{-7}", 0.0),
        ("x = 0.0000001", "0.0000002", 0.0),
        ("0.0000001", "0", 0.0),
        ("0.0000002", "2 \\times 10^{-7}", 1.0),
        ("0.333333", "\\frac{1}{3}", 1.0),
        ("0.666667", "\\frac{2}{3}", 1.0),
        ("0.5000001", "0.5", 1.0),
    ],
)
def test_math_stricter_than_math_verify(math_pool, answer, gold, expected):
    result = run("math", ans(answer), gold)
    assert (result.score, result.error) == (expected, None)


@pytest.mark.parametrize("gold", ["", "\\frac{1}{", "\\", None, ["1"]])
def test_math_gold_that_does_not_parse_is_reported(math_pool, gold):
    result = run("math", ans("1"), gold)
    assert result.score == 0.0 and result.error == "ValueError: gold does not parse"


# Killing a worker and forking its replacement, reading a reply: what a call may take beyond its
# timeout. Generous for a busy 2-core machine; a replacement that imports sympy takes seconds.
MARGIN = 0.5


def test_math_timeout_kills_the_worker_and_the_next_call_works(math_pool):
    result = run("math", ans("9^{9^{9}}"), "42", timeout_seconds=1)
    assert (result.score, result.timed_out) == (0.0, True)
    assert result.seconds < 1 + MARGIN
    honest = run("math", ans("\\frac{84}{2}"), "42", timeout_seconds=1)  # a fresh worker answers at once
    assert (honest.score, honest.timed_out, honest.error) == (1.0, False, None)
    assert honest.seconds < 1  # the replacement's start-up is not charged to this sample


SLOW = ["9^{9^{9}}", "(10^{8})!", "10^{10^{7}}", "(9^{9})!", "\\binom{10^{9}}{10^{5}}"]


def test_math_every_overrun_is_flagged(math_pool):
    # Slow inputs, each followed by a quick one: every call is within its timeout or flagged, and
    # a flagged call still returns within the timeout and the margin.
    for slow in SLOW:
        for text, gold in [(slow, "42"), ("42", "42")]:
            result = run("math", ans(text), gold, timeout_seconds=1)
            assert result.seconds < 1 + MARGIN, (text, result)
            assert result.timed_out == (text == slow), (text, result)
            assert result.timed_out or result.seconds <= 1, (text, result)


def test_pool_never_charges_a_replacement_to_the_next_call(math_pool):
    with pytest.raises(workers.WorkerTimeout):
        math_pool.run(time.sleep, (30,), 0.5)
    start = time.perf_counter()
    assert math_pool.run(abs, (-3,), 0.5) == 3
    assert time.perf_counter() - start < 0.5
    for seconds in (0.6, 1.0):  # an overrun is always a timeout, whatever came before it
        with pytest.raises(workers.WorkerTimeout):
            math_pool.run(time.sleep, (seconds,), 0.5)
    assert math_pool.run(abs, (-4,), 0.5) == 4


def test_pool_flags_an_answer_read_after_its_deadline(math_pool, monkeypatch):
    # The worker answers at once, but the caller reads the answer late (a busy caller thread):
    # a clock that jumps an hour after the answer arrives stands in for the delay.
    real, readings = time.perf_counter, []

    def clock():
        readings.append(None)
        return real() + (3600 if len(readings) > 2 else 0)

    worker = math_pool._ready_worker()
    monkeypatch.setattr(workers.time, "perf_counter", clock)
    with pytest.raises(workers.WorkerTimeout):
        worker.call(abs, (-1,), 5)
    monkeypatch.undo()
    math_pool._give_back(worker)  # answered, so still sound
    assert math_pool.run(abs, (-2,), 5) == 2


def test_math_works_off_the_main_thread(math_pool):
    # math-verify's own timeout uses signal.alarm, which fails off the main thread.
    results = []
    threads = [threading.Thread(target=lambda: results.append(run("math", ans("0.5"), "1/2"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [(r.score, r.error) for r in results] == [(1.0, None)] * 3


def test_a_pool_started_by_a_thread_that_ended_keeps_its_zygote():
    """The rollout worker warms the math pool up on a thread of its own. A death signal tied to that
    thread (PR_SET_PDEATHSIG follows the thread that started a process) killed the zygote when it
    ended: the next call found it dead (a BrokenPipeError scored as an error, or a new zygote)."""
    pool = workers.WorkerPool(size=1)
    try:
        warm_up = threading.Thread(target=pool.warm_up)
        warm_up.start()
        warm_up.join()
        time.sleep(0.5)
        assert pool.run(abs, (-5,), 5) == 5
        assert pool.zygotes == 1
    finally:
        pool.close()


def test_a_warm_up_that_cannot_start_a_worker_ends_quietly_and_the_call_reports_it():
    """The warm-up runs on a thread nobody joins: a zygote that dies on its way up (here a preload
    that does not import) ended that thread with a traceback in the worker's log. It ends quietly;
    the first real call meets the failure and raises it."""
    pool = workers.WorkerPool(size=1, preload=("zeroth_no_such_module",))
    try:
        pool.warm_up()
        with pytest.raises(workers.WorkerError):
            pool.run(abs, (-5,), 5)
    finally:
        pool.close()


def test_a_warm_up_of_a_pool_closed_while_it_starts_ends_quietly():
    pool = workers.WorkerPool(size=1)
    errors: list[BaseException] = []

    def warm_up() -> None:
        try:
            pool.warm_up()
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever escapes
            errors.append(exc)

    thread = threading.Thread(target=warm_up)
    thread.start()
    deadline = time.monotonic() + 30
    while pool.zygotes == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    pool.close()  # the zygote is still importing: its start-up is cut short
    thread.join(timeout=60)
    assert not thread.is_alive() and errors == []
    assert (pool.zygotes, pool.started) == (1, 0)  # cut short before a worker, and no zygote after the close


def test_a_closed_pool_starts_no_zygote():
    """A warm-up that reaches the pool after it was closed (the rollout worker stopping) must not
    start a zygote that would outlive the close; a call is refused."""
    pool = workers.WorkerPool(size=1)
    pool.close()
    pool.warm_up()
    with pytest.raises(workers.WorkerError, match="closed"):
        pool.run(abs, (-5,), 5)
    assert pool.zygotes == 0
