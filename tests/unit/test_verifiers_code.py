"""The code verifier and its sandbox: honest programs pass, hostile ones score 0 within their limits.

Each hostile program must leave the caller unharmed: the call returns within its limit plus a
little, never raises, and leaves no process, file or connection behind.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from zeroth.api import VerifierSpec
from zeroth.rollout import verifiers
from zeroth.rollout.verifiers.code_tests import last_code_block
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


def live_processes(uid: int | None) -> list[int]:
    """Pids of live (not zombie) processes owned by `uid`."""
    if uid is None:
        return []
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


@pytest.mark.parametrize(
    "program",
    ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "raise SystemExit(0)\n",
     "import atexit, os\natexit.register(lambda: os._exit(0))\nraise SystemExit\n"],
)  # fmt: skip
def test_exiting_early_with_status_0_does_not_pass(program):
    assert score(program).score == 0.0


def test_the_tests_are_not_on_disk_for_the_solution_to_read():
    assert score("import os\nassert os.listdir('.') == []\n" + GOOD).score == 1.0
    assert score("expected = open('tests.py').read()\n" + GOOD).score == 0.0


def test_bad_gold_and_odd_text_are_reported_not_raised():
    assert verifiers.score(SPEC, fenced(GOOD), {"tests": ""}).error.startswith("ValueError")
    assert verifiers.score(SPEC, fenced(GOOD), "assert True").error.startswith("ValueError")
    assert score(GOOD + "s = '\udcff'\n").score == 1.0  # a lone surrogate is written replaced
    assert verifiers.score(SPEC, "<answer>" + "x = 1\n" * 200_000 + "</answer>", TESTS).score == 0.0


def test_fork_bomb_is_contained_and_leaves_nothing_behind():
    start = time.perf_counter()
    result = run_python("import os\nwhile True:\n    os.fork()\n", "", timeout=TIMEOUT, memory_mib=256)
    assert not result.passed and time.perf_counter() - start < TIMEOUT + 3
    assert live_processes(result.uid) == []
    assert score(GOOD).score == 1.0  # and the next run is unharmed


def test_a_child_that_leaves_the_process_group_is_still_killed():
    program = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(100)\n"
    result = run_python(program, "", timeout=TIMEOUT, memory_mib=256)
    if result.uid is None:
        pytest.skip("not root: no per-run UID, so a setsid child escapes the group kill (documented)")
    assert result.passed  # the program itself is innocent; its child must still be gone
    assert live_processes(result.uid) == []


def test_sleeping_past_the_limit_times_out():
    start = time.perf_counter()
    result = score("import time\ntime.sleep(100)\n" + GOOD)
    assert (result.score, result.timed_out) == (0.0, True)
    assert time.perf_counter() - start < TIMEOUT + 1


def test_allocating_10_gb_fails_fast():
    start = time.perf_counter()
    assert score("x = bytearray(10 * 2**30)\n" + GOOD).score == 0.0
    assert time.perf_counter() - start < 2


def test_a_huge_file_is_cut_off():
    start = time.perf_counter()
    program = "with open('big', 'wb') as f:\n    f.write(b'x' * 2**30)\n" + GOOD
    assert score(program).score == 0.0
    assert time.perf_counter() - start < TIMEOUT


def test_endless_output_is_capped():
    result = run_python("while True:\n    print('x' * 1000)\n", "", timeout=TIMEOUT, memory_mib=256)
    assert not result.passed and len(result.output) <= OUTPUT_TAIL


@pytest.mark.parametrize("namespaces", [True, False], ids=["namespace", "audit-hook fallback"])
def test_no_connection_reaches_a_loopback_listener(namespaces):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.3)
        port = listener.getsockname()[1]
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')\n"
        result = run_python(program, "", timeout=TIMEOUT, memory_mib=256, namespaces=namespaces)
        assert not result.passed
        with pytest.raises(TimeoutError):
            listener.accept()
    assert result.network == ("namespace" if namespaces else "audit-hook"), result.network


def test_writes_outside_the_working_directory_do_not_land(tmp_path):
    private = tmp_path / "escaped.txt"
    shared = Path("/tmp") / f"zeroth-escape-{uuid.uuid4().hex}"
    program = "".join(f"open({str(p)!r}, 'w').write('x')\n" for p in (private, shared))
    try:
        result = run_python(program, "", timeout=TIMEOUT, memory_mib=256)
        assert not private.exists()
        if result.filesystem != "private":
            pytest.skip("no private mount namespace here: world-writable /tmp is not covered (documented)")
        assert not shared.exists()
    finally:
        shared.unlink(missing_ok=True)


def test_root_only_files_cannot_be_read(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("hunter2")
    secret.chmod(0o600)
    result = run_python(f"print(open({str(secret)!r}).read())\n", "", timeout=TIMEOUT, memory_mib=256)
    if result.uid is None:
        pytest.skip("not root: the sandbox runs as the caller's user and can read its files (documented)")
    assert not result.passed and "hunter2" not in result.output


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
