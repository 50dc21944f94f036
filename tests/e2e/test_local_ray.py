"""The local Ray of `zeroth run` survives torchrun stopping rank 0, and ends with rank 0.

torchrun stops a rank with SIGTERM to the rank's whole process group. When rank 0 started Ray with
`ray.init(address="local")`, the GCS server and raylet were in that group: the raylet shut down,
and rank 0, finishing its step, lost the GCS and exited before its checkpoint (CI saw a Ctrl-C
lose a step this way)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest

from tests import procs
from tests.e2e.conftest import wait_for
from tests.speed import scaled
from zeroth import local

pytestmark = pytest.mark.e2e

RANK_ZERO = """
import signal, sys, time
import ray
from zeroth.rollout import fleet
fleet.connect(1)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))  # what trainer.loop.Stop does
print(fleet._local_head.pid, flush=True)
while not stop:
    time.sleep(0.1)
time.sleep(float(sys.argv[1]))  # the step and checkpoint still running; the raylet drains in about 1 s
# rank 0 still needs Ray: a new task is scheduled on the node, and the node is alive
print(ray.get(ray.remote(num_cpus=1)(lambda: 42).remote(), timeout=60), flush=True)
print(all(n["Alive"] for n in ray.nodes()), flush=True)
fleet.shutdown()
"""


def rank_zero(wait: float = 0) -> tuple[subprocess.Popen, int]:
    """A process started as torchrun starts a rank (a session of its own, `zeroth run`'s
    environment) that connects as rank 0 does, and the pid of the local Ray it started."""
    proc = subprocess.Popen([sys.executable, "-c", RANK_ZERO, str(wait)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=procs.tag(local.trainer_env()))
    head = proc.stdout.readline().strip()
    assert head, proc.communicate(timeout=60)[1][-3000:]
    return proc, int(head)


def session(sid: int) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (OSError, psutil.Error):
            continue
    return found


def test_torchruns_stop_signal_to_rank_zeros_group_leaves_its_ray_up():
    proc, head = rank_zero(wait=3)
    try:
        ray_processes = {p.name() for p in session(head)}
        assert {"gcs_server", "raylet"} <= ray_processes, ray_processes
        os.killpg(proc.pid, signal.SIGTERM)  # torchrun's SubprocessHandler.close
        out, err = proc.communicate(timeout=scaled(180))
    finally:
        proc.kill()
    assert proc.returncode == 0 and out.split() == ["42", "True"], (out, err[-3000:])
    # fleet.shutdown stopped the local Ray: nothing of it is left
    wait_for(lambda: not session(head), 60, "the local Ray to stop")


def test_the_local_ray_ends_when_rank_zero_is_killed():
    proc, head = rank_zero()
    try:
        assert session(head)
        proc.kill()  # no handler, no cleanup: the pipe closes with the process
        proc.wait()
        wait_for(lambda: not session(head), 60, "the local Ray to end with rank 0")
    finally:
        proc.kill()
        for p in session(head):
            p.kill()


def test_a_local_ray_that_does_not_start_in_time_is_killed_with_its_session():
    from zeroth.rollout import local_ray

    with pytest.raises(RuntimeError, match="the local Ray did not start within 0 s"):
        local_ray.start(1, timeout=0.1)  # Ray takes seconds to start: this deadline always passes first
    assert not [p for p in psutil.Process().children() if "zeroth.rollout.local_ray" in cmdline(p)]


def cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # a zombie (pytest reaps its orphans at the end) or gone
        return ""
