"""Code: the program in the answer passes the task's tests, run in the sandbox.

Gold: `{"tests": str}`, Python test code (asserts) that runs after the program in the same
namespace. The program is the last ```python (or ```py, or bare ```) fenced block of the answer;
an answer with no fence is the program itself. Score 1 when the sandbox reports that the program
and then all the tests ran to their end (exit status 0 and the harness's token), else 0. Limits:
`spec.timeout_seconds` of wall clock for the whole run, `spec.memory_mi_b` of address space per
process; see sandbox.py for the rest.

Defends against: everything sandbox.py lists (fork bombs, sleeps, huge allocations and files,
endless output, network, writes outside the working directory, early `sys.exit(0)`), several
code blocks (only the last counts), over-long programs (over `MAX_PROGRAM_CHARS` there is no
program). Does not defend against what sandbox.py lists as undefended, above all in-process
tampering with the tests by a program that shares their interpreter; and against weak tests,
which a program can pass without solving the task.
"""

from __future__ import annotations

from typing import Any

from zeroth.api import VerifierSpec

from .extract import extract_answer
from .sandbox import run_python

MAX_PROGRAM_CHARS = 64 * 1024
FENCE = "```"
LANGUAGES = ("python", "py", "python3", "")


def last_code_block(answer: str) -> str:
    """The last ```python / ```py / bare ``` fenced block of `answer`, or `answer` if it has none."""
    parts = answer.split(FENCE)
    # parts alternate outside / inside fences: odd indices are fenced bodies when the fences pair up
    blocks = [parts[i] for i in range(1, len(parts) - 1, 2)]
    for body in reversed(blocks):
        first_line, _, code = body.partition("\n")
        if first_line.strip().lower() in LANGUAGES:
            return code
    return answer if FENCE not in answer else ""


def verify(completion: str, gold: Any, spec: VerifierSpec) -> float:
    """1.0 when the answer's program passes the gold tests in the sandbox, else 0.0."""
    if not isinstance(gold, dict) or not isinstance(gold.get("tests"), str) or not gold["tests"].strip():
        raise ValueError("code gold must be a dict with non-empty 'tests' (Python source)")
    answer = extract_answer(completion, spec.answer)
    if answer is None or len(answer) > MAX_PROGRAM_CHARS:
        return 0.0
    program = last_code_block(answer)
    if not program.strip():
        return 0.0
    result = run_python(program, gold["tests"], timeout=spec.timeout_seconds, memory_mib=spec.memory_mi_b)
    if result.timed_out:
        raise TimeoutError(f"code ran past {spec.timeout_seconds:g} s")
    return 1.0 if result.passed else 0.0
