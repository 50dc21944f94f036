"""Code: the program in the answer passes the task's tests, run in the sandbox.

Gold: `{"tests": str}`, Python test code (asserts) that uses the names the program defines. The
program is the last ```python (or ```py, or bare ```) fenced block of the answer; an answer with
no fence is the program itself. Score 1 when every test ran to its end, else 0. The tests run in
a process of their own against proxies of the program's names (sandbox.py): values cross as plain
data, so what the tests compare is what the program computed, never an object of the program's.
Tests may pass the program plain values and the program's own objects, and may catch the builtin
exceptions it raises; a program that changes a list, dict, set or bytearray argument in place is
seen to. Limits: `spec.timeout_seconds` of wall clock for the program's load and every call,
`spec.memory_mi_b` of address space; see sandbox.py for the rest.

Defends against: everything sandbox.py lists (tampering with the tests' interpreter, objects equal
to everything, reading the tests, other samples' files, the worker's environment, signals,
ptrace, sockets, fork and memory bombs, sleeping past the deadline, children that outlive the
sample), several code blocks (only the last counts), over-long programs (over
`MAX_PROGRAM_CHARS` there is no program). Does not defend against weak tests, which a program
can pass without solving the task. Where the sandbox cannot run safely (a non-root worker on a
kernel without Landlock), every score records the error instead of running code.
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
