"""Coverage-guided fuzzing of the countdown, math, arc and format verifiers with atheris.

    python bench/fuzz_verifiers.py VERIFIER -atheris_runs=N     # VERIFIER: countdown math arc format

Each input is turned into a completion built from adversarial pieces (tags, nested and unbalanced,
huge numbers, deep nesting, invisible characters, many answer blocks, random text) and checked for
the properties `tests/unit/test_verifier_properties.py` checks with hypothesis:

- `score` records no error (no verifier bug escaped into `error`), and a timeout only for math;
- every call returns within its bound: `seconds` from `score` itself, under `CPU_BOUND` for the
  in-process verifiers and under the timeout plus `MARGIN` for math;
- the same input gives the same reward (math: when neither call timed out);
- reward 1 needs a correct LAST answer block: any text followed by a correct block scores 1
  (format: the whole completion must be well-formed), and the same with a wrong block after it
  scores 0.

At exit it prints `VERIFIER: tried=N failures=F` (and the first failures), and exits 1 on any
(with `-atheris_runs`; libFuzzer's `-max_total_time` exit skips the report). The properties live
in `verifier_properties.py`, beside this file, shared with the hypothesis tests.
The code verifier is left out: it runs programs in the sandbox, which has its own tests.
"""

from __future__ import annotations

import atexit
import os
import sys
import atheris

import zeroth.api  # noqa: E402,F401 - imported uninstrumented: pydantic is not what we fuzz

with atheris.instrument_imports(include=["zeroth.rollout", "verifier_properties"]):
    from verifier_properties import CASES, FRAGMENTS, check  # bench/, the script's folder
    from zeroth.rollout.verifiers import math_answers

def completion_pieces(data: atheris.FuzzedDataProvider) -> tuple[str, str]:
    parts = []
    for _ in range(data.ConsumeIntInRange(0, 24)):
        if data.ConsumeBool():
            parts.append(FRAGMENTS[data.ConsumeIntInRange(0, len(FRAGMENTS) - 1)])
        else:
            parts.append(data.ConsumeUnicodeNoSurrogates(data.ConsumeIntInRange(0, 12)))
    cut = data.ConsumeIntInRange(0, len(parts))
    return "".join(parts[:cut]), "".join(parts[cut:])


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in CASES:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(CASES)}}} [-atheris_runs=N ...]")
    name = sys.argv.pop(1)
    if name == "math":
        math_answers.pool().warm_up()
    tried, failures = [0], []

    def report() -> None:
        print(f"{name}: tried={tried[0]} failures={len(failures)}", flush=True)
        for failure in failures[:5]:
            print(f"  {failure}", flush=True)
        os._exit(1 if failures else 0)  # libFuzzer's own exit would skip nothing we need

    def one_input(raw: bytes) -> None:
        tried[0] += 1
        failures.extend(check(name, *completion_pieces(atheris.FuzzedDataProvider(raw))))

    atexit.register(report)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
