"""Property-based tests of the countdown, math, arc and format verifiers, over random and
adversarial completions (hypothesis), and a short run of each atheris fuzz target so they cannot rot.

The properties live in `bench/verifier_properties.py`, shared with `bench/fuzz_verifiers.py`:
no error recorded by `score`, every call within its bound (`score`'s own `seconds`), the same
input gives the same reward, and reward 1 needs a correct LAST answer block.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zeroth.rollout.verifiers import math_answers

BENCH = Path(__file__).resolve().parents[2] / "bench"
_spec = importlib.util.spec_from_file_location("verifier_properties", BENCH / "verifier_properties.py")
properties = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(properties)

# Random text, the adversarial pieces, and both interleaved: nested and unbalanced tags, huge
# numbers, deep nesting, invisible characters, many answer blocks.
piece = st.one_of(st.sampled_from(properties.FRAGMENTS), st.text(max_size=12))
text = st.one_of(st.text(max_size=200), st.lists(piece, max_size=24).map("".join))
many_blocks = st.lists(st.sampled_from(["1", "42", "9+7+5+3", "012\n345", ""]), max_size=30).map(
    lambda answers: "".join(f"<answer>{a}</answer>" for a in answers)
)
prefix = st.one_of(text, many_blocks)

quick = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", ["countdown", "arc", "format"])
@given(prefix=prefix, middle=text)
@quick
def test_in_process_verifiers_keep_every_property(name, prefix, middle):
    assert properties.check(name, prefix, middle) == []


@pytest.fixture(scope="module")
def math_pool():
    pool = math_answers.pool()
    pool.warm_up()
    return pool


@given(prefix=prefix, middle=text)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
def test_math_keeps_every_property(math_pool, prefix, middle):
    assert properties.check("math", prefix, middle) == []


@pytest.mark.parametrize("name", ["countdown", "math", "arc", "format"])
def test_fuzz_targets_run(name):
    pytest.importorskip("atheris")
    out = subprocess.run(
        [sys.executable, str(BENCH / "fuzz_verifiers.py"), name, "-atheris_runs=200", "-seed=1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    found = re.search(rf"^{name}: tried=(\d+) failures=(\d+)$", out.stdout, re.MULTILINE)
    assert found, out.stdout[-2000:] + out.stderr[-2000:]
    assert (int(found[1]), int(found[2]), out.returncode) == (200, 0, 0), out.stdout[-2000:]
