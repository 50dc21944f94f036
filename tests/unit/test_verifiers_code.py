"""The code verifier and its sandbox: honest programs pass, hostile ones score 0 within their limits.

Hostile programs, in both sandbox modes, are in test_sandbox_escapes.py.
"""

from __future__ import annotations

import threading
import time


from zeroth.api import VerifierSpec
from zeroth.rollout import verifiers
from zeroth.rollout.verifiers.code_tests import last_code_block
from zeroth.rollout.verifiers import sandbox
from zeroth.rollout.verifiers.sandbox import OUTPUT_TAIL, run_python

TIMEOUT = 3.0
SPEC = VerifierSpec(name="code", timeoutSeconds=TIMEOUT, memoryMiB=256)
TESTS = {"tests": "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"}
GOOD = "def add(a, b):\n    return a + b\n"


def fenced(program: str, before: str = "Here it is:\n") -> str:
    return f"<think>easy</think><answer>{before}```python\n{program}```\n</answer>"


def score(program: str, tests: dict = TESTS) -> verifiers.VerifierResult:
    start = time.perf_counter()
    result = verifiers.score(SPEC, fenced(program), tests)
    assert time.perf_counter() - start < TIMEOUT + 3, "the verifier overran its own limit"
    return result


def test_a_correct_program_passes_and_a_wrong_one_fails():
    assert (score(GOOD).score, score(GOOD).error) == (1.0, None)
    assert score("def add(a, b):\n    return a - b\n").score == 0.0
    assert score("this is not python").score == 0.0
    unfenced = f"<answer>{GOOD}</answer>"
    assert verifiers.score(SPEC, unfenced, TESTS).score == 1.0


def test_only_the_last_python_block_counts():
    wrong = "def add(a, b):\n    return 0\n"
    two = f"<answer>```python\n{wrong}```\nbetter:\n```python\n{GOOD}```</answer>"
    assert verifiers.score(SPEC, two, TESTS).score == 1.0
    two = f"<answer>```python\n{GOOD}```\nbetter:\n```python\n{wrong}```</answer>"
    assert verifiers.score(SPEC, two, TESTS).score == 0.0
    assert last_code_block("```bash\nrm -rf /\n```") == ""
    assert last_code_block("```py\nx = 1\n```") == "x = 1\n"


def test_the_tests_are_not_on_disk_for_the_solution_to_read():
    assert score("import os\nassert os.listdir('.') == []\n" + GOOD).score == 1.0  # its own empty directory
    assert score("expected = open('tests.py').read()\n" + GOOD).score == 0.0


def test_bad_gold_and_odd_text_are_reported_not_raised():
    assert verifiers.score(SPEC, fenced(GOOD), {"tests": ""}).error.startswith("ValueError")
    assert verifiers.score(SPEC, fenced(GOOD), "assert True").error.startswith("ValueError")
    assert score(GOOD + "s = '\udcff'\n").score == 1.0  # a lone surrogate is written replaced
    assert verifiers.score(SPEC, "<answer>" + "x = 1\n" * 200_000 + "</answer>", TESTS).score == 0.0


def test_a_huge_file_is_cut_off():
    start = time.perf_counter()
    program = "with open('big', 'wb') as f:\n    f.write(b'x' * 2**30)\n" + GOOD
    assert score(program).score == 0.0
    assert time.perf_counter() - start < TIMEOUT


def test_endless_output_is_capped():
    result = run_python("while True:\n    print('x' * 1000)\n", "", timeout=TIMEOUT, memory_mib=256)
    assert not result.passed and len(result.output) <= OUTPUT_TAIL


def test_a_restricted_worker_without_landlock_refuses_to_run_code(monkeypatch):
    """The restricted mode is not weakened where the kernel lacks Landlock: the score says why."""
    monkeypatch.setattr(sandbox, "landlock_abi", lambda: 0)
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    result = verifiers.score(SPEC, fenced(GOOD), TESTS)
    assert result.score == 0.0 and "Landlock" in result.error


def test_threaded_callers_get_their_own_results():
    # Rollout workers are threaded Ray actors: the sandbox must not rely on preexec_fn.
    programs = [GOOD, "def add(a, b):\n    return 0\n"] * 3
    results: dict[int, float] = {}

    def work(i: int) -> None:
        results[i] = score(programs[i]).score

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(programs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(programs))] == [1.0, 0.0] * 3
