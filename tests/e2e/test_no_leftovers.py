"""A test that times out leaves nothing running, and a session that leaves something fails, naming it.

Each case runs an inner pytest session (a subprocess, with this suite's conftest as a plugin) and
looks at what it left: the processes it started carry a probe variable in their environment, which
the inner session passes on untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tests import procs
from tests.conftest import ROOT
from tests.speed import scaled

pytestmark = pytest.mark.e2e

PROBE = "ZEROTH_LEAK_PROBE"

HANGS = '''
import json, os, signal
import pytest
from tests import procs
from tests.e2e.conftest import run_dir_of, start_run, steps, wait_for
from tests.e2e.test_resume_async import short

@pytest.mark.timeout(3600)
def test_hangs(tmp_path):
    proc = start_run(tmp_path, short("hangs", algorithm={"maxSteps": 100000}))  # hours, left to itself
    wait_for(lambda: list(tmp_path.glob("runs/hangs-*/metrics.jsonl")) and steps(run_dir_of(tmp_path, "hangs")), 600,
             "step 1: the trainer ranks, Ray and the rollout workers all up")
    mine = procs.carrying(procs.OWNER_VAR, procs.current_owner())
    with open(os.environ["SEEN"], "w") as f:
        json.dump([{"pid": p.pid, "name": p.name, "cmdline": p.cmdline} for p in mine], f)
    signal.setitimer(signal.ITIMER_REAL, 0.01)  # pytest-timeout's own alarm, now: the test times out
    proc.communicate()
'''

LEAKS = '''
import os, subprocess

def test_leaks():
    # no ownership variables: only the end-of-session check (pytest is a subreaper) can find it
    p = subprocess.Popen(["sleep", "600"], env={"PATH": os.environ["PATH"]}, start_new_session=True)
    open(os.environ["SEEN"], "w").write(str(p.pid))
'''


def inner_session(tmp: Path, source: str) -> tuple[subprocess.CompletedProcess, str, Path]:
    test = tmp / "inner" / "test_inner.py"
    test.parent.mkdir()
    test.write_text(textwrap.dedent(source))
    probe, seen = uuid.uuid4().hex, tmp / "seen.json"
    env = {**os.environ, PROBE: probe, "SEEN": str(seen)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-c", os.devnull,
         "--rootdir", str(test.parent), "-q", str(test)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=scaled(900))
    return proc, probe, seen


def alive(pid: int, cmdline: str) -> bool:
    return any(p.pid == pid and p.cmdline == cmdline for p in procs.processes())


def test_a_run_whose_test_times_out_leaves_no_process(tmp_path):
    proc, probe, seen = inner_session(tmp_path, HANGS)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Timeout" in out and "1 failed" in out, out[-4000:]
    assert "PROCESSES LEFT BEHIND" not in out, out[-4000:]
    started = json.loads(seen.read_text())
    names = " ".join(p["name"] + " " + p["cmdline"] for p in started)
    # what there was to leave behind: torchrun, both ranks, Ray's own processes, the rollout workers
    for part in ("torch.distributed.run", "zeroth.trainer.main", "raylet", "gcs_server", "RolloutWorker"):
        assert part in names, (part, names[:3000])
    assert not [p for p in started if alive(p["pid"], p["cmdline"])]
    assert not procs.carrying(PROBE, probe)


def test_the_session_fails_naming_what_a_test_left_behind(tmp_path):
    proc, probe, seen = inner_session(tmp_path, LEAKS)
    out = proc.stdout + proc.stderr
    assert "1 passed" in out and proc.returncode == 1, out[-3000:]  # the test passed; the session did not
    assert "PROCESSES LEFT BEHIND" in out and "sleep 600" in out, out[-3000:]
    assert not alive(int(seen.read_text()), "sleep 600")  # and it was killed once named
