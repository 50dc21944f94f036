"""The code sandbox against a policy searching for unearned reward, in both of its modes.

Every attack (`sandbox_check.ATTACKS`, which also runs in a real pod) is a program that earns
reward only if its attack works: it answers the tests right when it tampered, read, signalled or
reached what it must not, and wrong otherwise. So each test fails the day its protection goes. `root` runs the sandbox as this (root) process does;
`restricted` runs it as the operator's pods do, as a non-root user with no capabilities and
`no_new_privs` (tests/unit/restricted_sandbox.py), sharing this machine's /tmp and kernel.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.unit.restricted_sandbox import SECRET
from zeroth.rollout.verifiers import sandbox, sandbox_check
from zeroth.rollout.verifiers.sandbox_check import ATTACKS, PAYOFF, TESTS

TIMEOUT = 3.0
MEMORY_MIB = 256
RESTRICTED_UID = 4242
GOOD = sandbox_check.HONEST
MODES = ["root", "restricted"]


class Restricted:
    """The restricted-mode sandbox server, one per module."""

    def __init__(self) -> None:
        self.secret = uuid.uuid4().hex
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.unit.restricted_sandbox", str(RESTRICTED_UID)],
                                     cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, SECRET: self.secret})

    def run(self, solution: str, tests: str) -> dict:
        job = {"solution": solution, "tests": tests, "timeout": TIMEOUT, "memory_mib": MEMORY_MIB}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the restricted sandbox server died"
        result = json.loads(line)
        assert "error" not in result, result["error"]
        return result

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def restricted():
    server = Restricted()
    yield server
    server.close()


@pytest.fixture(scope="module")
def targets():
    t = sandbox_check.Targets()
    yield t
    t.close()


@pytest.fixture(params=MODES)
def run(request, restricted, targets):
    """run(solution, tests=TESTS) -> the result's fields, in the mode, timed from outside."""
    if request.param == "restricted" and sandbox.landlock_abi() < 1:
        pytest.skip("this kernel has no Landlock: the restricted mode refuses to run code here "
                    "(test_verifiers_code checks that refusal)")
    # what the worker's environment holds, as the kernel shows it: the restricted server's secret,
    # or (root mode: the worker is this process) the longest value this process started with
    secret = restricted.secret if request.param == "restricted" else max(
        (e.split(b"=", 1)[1] for e in Path("/proc/self/environ").read_bytes().split(b"\0") if b"=" in e),
        key=len).decode(errors="replace")

    def call(solution: str, tests: str = TESTS) -> dict:
        start = time.monotonic()
        if request.param == "root":
            result = sandbox.run_python(solution, tests, timeout=TIMEOUT, memory_mib=MEMORY_MIB).__dict__
        else:
            result = restricted.run(solution, tests)
        assert result["mode"] == request.param
        result["wall"] = time.monotonic() - start
        assert result["wall"] < TIMEOUT + sandbox.START_SECONDS + 2, "the call overran its outer bound"
        return result

    call.mode, call.uid = request.param, (0 if request.param == "root" else RESTRICTED_UID)
    call.target = dataclasses.replace(targets.target, secret=secret)
    yield call
    assert targets.reached() == []


def live_processes_of(uid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        try:
            status = Path(entry.path, "status").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields and int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
            pids.append(int(entry.name))
    return pids


# ------------------------------------------------------------------------ honest programs


def test_an_honest_program_passes_and_a_wrong_one_fails(run):
    assert run(GOOD)["passed"]
    assert not run("def add(a, b):\n    return a - b\n")["passed"]


def test_plain_values_of_every_kind_cross_and_in_place_work_is_seen(run):
    solution = ("import collections\nLIMIT = 10**30\nclass Box:\n    def __init__(self, n):\n        self.n = n\n"
                "    def double(self):\n        return Box(self.n * 2)\n"
                "def kinds():\n    return [1, 2.5, 'x', b'y', bytearray(b'z'), (1, 2), {1: {2}}, frozenset({3}), 1j, None, True]\n"
                "def sort_in_place(xs):\n    xs.sort()\n"
                "def gen(n):\n    yield from range(n)\n"
                "def counts(s):\n    return dict(collections.Counter(s))\n"
                "def boom():\n    raise ValueError('no')\n")
    tests = ("assert LIMIT == 10**30\n"
             "assert kinds() == [1, 2.5, 'x', b'y', bytearray(b'z'), (1, 2), {1: {2}}, frozenset({3}), 1j, None, True]\n"
             "xs = [3, 1, 2]\nsort_in_place(xs)\nassert xs == [1, 2, 3]\n"
             "assert list(gen(4)) == [0, 1, 2, 3]\n"
             "assert Box(3).double().n == 6\n"
             "assert counts('aab') == {'a': 2, 'b': 1}\n"
             "try:\n    boom()\nexcept ValueError as e:\n    assert str(e) == 'no'\nelse:\n    assert False\n")
    result = run(solution, tests)
    assert result["passed"], result


# ------------------------------------------------------------------------------- attacks


@pytest.mark.parametrize("attack", ATTACKS)
def test_the_attack_earns_nothing(run, attack):
    result = run(ATTACKS[attack](run.target) + PAYOFF)
    assert not result["passed"], result


def test_a_file_left_by_one_sample_is_not_seen_by_the_next(run):
    leave, find = ATTACKS["leave a file for the next sample"], ATTACKS["find the file of the last sample"]
    assert run(leave(run.target) + GOOD)["passed"]  # its own directory it may write
    assert not run(find(run.target) + PAYOFF)["passed"]
    assert not list(Path("/tmp").glob(run.target.marker))


def test_nothing_a_sample_starts_outlives_it(run):
    attack = ATTACKS["fork a survivor"](run.target) + ATTACKS["spawn a program"](run.target).replace("WON = False\n", "")
    attack += "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=False).start()\n"
    result = run(attack + PAYOFF)
    assert not result["passed"], result
    if run.mode == "restricted":
        assert live_processes_of(RESTRICTED_UID) == [_restricted_server_pid()]
    else:
        assert result["uid"] and live_processes_of(result["uid"]) == []


def _restricted_server_pid() -> int:
    found = [p for p in live_processes_of(RESTRICTED_UID)
             if "restricted_sandbox" in Path(f"/proc/{p}/cmdline").read_text(errors="ignore")]
    assert len(found) == 1, found
    return found[0]


def test_a_fork_bomb_is_one_failed_call(run):
    result = run("import os\nwhile True:\n    os.fork()\n" + GOOD)
    assert not result["passed"] and result["wall"] < TIMEOUT
    assert "PermissionError" in result["verdict"]


def test_signalling_the_parents_neither_stops_nor_ends_the_run(run):
    result = run(ATTACKS["signal the parents"](run.target) + PAYOFF)
    assert not result["passed"] and not result["timed_out"], result
    assert run(GOOD)["passed"]  # and the sandbox still works


def test_a_memory_bomb_fails_fast(run):
    result = run("x = bytearray(10 * 2**30)\n" + GOOD)
    assert not result["passed"] and result["wall"] < TIMEOUT


def test_sleeping_past_the_deadline_times_out_within_the_bound(run):
    for program in ("import time\ntime.sleep(100)\n" + GOOD, GOOD + "def add(a, b):\n    while True:\n        pass\n"):
        result = run(program)
        assert (result["passed"], result["timed_out"]) == (False, True), result
        assert result["wall"] < TIMEOUT + sandbox.START_SECONDS


HOSTILE_FRAMES = {
    "not JSON": b"\x00\x00\x00\x05}}}}}",
    "nested deeper than any parser": b"\x00\x03\x0d\x40" + b"[" * 200_000,
    "over the frame limit": b"\xff\xff\xff\xff",
    "a float where only tagged values go": b"\x00\x00\x00\x0a{\"ok\":1.5}",
    "an unhashable set member": b'\x00\x00\x00\x17{"ok":{"s":[{"l":[1]}]}}',
    "cut short": b"\x00\x00\x01\x00{",
}


@pytest.mark.parametrize("frame", HOSTILE_FRAMES.values(), ids=HOSTILE_FRAMES.keys())
def test_a_hostile_reply_fails_the_sample_even_if_the_tests_catch_it(run, frame):
    """The solution owns its end of the channel: it can write any bytes there, then say nothing."""
    tests = "try:\n    add(1, 2)\nexcept BaseException:\n    pass\nassert True\n"
    assert run(GOOD, tests)["passed"]  # the tests themselves pass an honest program
    attack = ("import os, sys, time\nout = int(sys.argv[2])\n"
              f"def add(a, b):\n    os.write(out, {frame!r})\n    time.sleep(100)\n")
    result = run(attack, tests)
    assert not result["passed"], result


def test_a_solution_that_never_answers_fails_even_if_the_tests_catch_it(run):
    tests = "try:\n    add(1, 2)\nexcept BaseException:\n    pass\nassert True\n"
    result = run("import time\ndef add(a, b):\n    time.sleep(100)\n", tests)
    assert (result["passed"], result["timed_out"]) == (False, True), result
