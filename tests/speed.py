"""How slow this machine is next to the one the suite's time limits were set on, and those limits
scaled by it.

No test budgets its work in seconds: e2e runs are budgets of steps. Time limits exist only so that a
hang fails instead of blocking CI; each sits far above the expected time, and `scaled()` multiplies
it by the factor measured once at the start of the session (`measure()`): fixed CPU work on every
core, timed (the best of three), divided by the time it took on the reference machine (2 cores;
README). The factor is
never below 1. `ZEROTH_SPEED_FACTOR=3 make test` sets it instead of measuring; the measured value is
put in the environment, so the processes the tests start (hack/cluster.py) scale theirs too.
"""

from __future__ import annotations

import multiprocessing
import os
import time

FACTOR_VAR = "ZEROTH_SPEED_FACTOR"
# Seconds `measure()` took on the reference machine (the 2-core machine of the README's timings),
# measured six times with nothing else running (0.63 to 0.74 s; this is near the best).
REFERENCE_SECONDS = 0.65
_WORK = 10_000_000


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total = (total + i * i) % 1_000_003
    return total


def calibrate(cores: int | None = None) -> float:
    """Seconds for one fixed piece of pure-Python work on each core at once (wall clock)."""
    cores = cores or os.cpu_count() or 1
    ctx = multiprocessing.get_context("fork")
    start = time.perf_counter()
    with ctx.Pool(cores) as pool:
        pool.map(_spin, [_WORK] * cores)
    return time.perf_counter() - start


def measure() -> tuple[float, str]:
    """The factor and where it came from; puts it in the environment for child processes."""
    given = os.environ.get(FACTOR_VAR)
    if given:
        try:
            value = float(given)
        except ValueError:
            raise SystemExit(f"{FACTOR_VAR}={given!r} is not a number (a slowdown factor such as 3)") from None
        return max(value, 1.0), f"from {FACTOR_VAR}"
    seconds = min(calibrate() for _ in range(3))  # the best of three: a moment's load is not the machine
    value = max(seconds / REFERENCE_SECONDS, 1.0)
    os.environ[FACTOR_VAR] = f"{value:.2f}"
    return value, f"measured: {seconds:.2f} s of calibration work, {REFERENCE_SECONDS:.2f} s on the reference machine"


def factor() -> float:
    """The session's factor (1 before `measure()` ran)."""
    return max(float(os.environ.get(FACTOR_VAR) or 1.0), 1.0)


def scaled(seconds: float) -> float:
    """A time limit of `seconds` on the reference machine, on this one."""
    return seconds * factor()
