"""A first run whose base model builds for longer than any collective may wait still trains.

On a fresh machine `zeroth run` builds `builtin:tiny-arith` (minutes; many more on a slow or busy
machine) in a process of its own, which holds the model cache's lock while it builds, and starts
the trainer beside it. Here the test is that build: it holds the lock of an empty cache for longer
than the trainer's collective timeout (shortened with ZEROTH_COLLECTIVE_TIMEOUT), while the
trainer runs as `zeroth run` starts it (torchrun, two ranks); then the model appears and the lock
is released. The ranks must have waited for it on the lock, not in a collective: the run trains.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time

import pytest

from tests import procs
from tests.e2e.conftest import steps, wait_for
from tests.e2e.test_resume_async import short
from tests.speed import scaled
from zeroth import local, validation
from zeroth.api import ModelSpec
from zeroth.trainer import models

pytestmark = pytest.mark.e2e

COLLECTIVE_TIMEOUT = 30  # reference seconds: above any wait of one rank for another in this short run


def test_a_model_build_longer_than_the_collective_timeout_does_not_break_the_run(tmp_path):
    built = models.resolve(ModelSpec(name="builtin:tiny-arith"))  # the real cache's copy, built if missing
    cache = tmp_path / "cache"
    final = models.tiny_arith_location(cache / "models")
    final.parent.mkdir(parents=True)
    timeout = scaled(COLLECTIVE_TIMEOUT)
    m = short("slow-build", algorithm={"maxSteps": 2})
    run = validation.validate(m, source="slow-build")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps(run.model_dump(by_alias=True, exclude_none=True, mode="json")))
    env = procs.tag({**local.trainer_env(), "ZEROTH_CACHE": str(cache), "ZEROTH_COLLECTIVE_TIMEOUT": f"{timeout:.0f}"})
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the build, in progress
        with (run_dir / "trainer.log").open("w") as log:
            proc = subprocess.Popen(local.trainer_command(run, run_dir, 0), env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        wait_for(lambda: len(list(run_dir.glob("pids/rank-*.pid"))) == 2, 300, "both ranks")
        time.sleep(timeout + scaled(10))
        assert proc.poll() is None, (run_dir / "trainer.log").read_text()[-3000:]
        assert not steps(run_dir)
        tmp = final.with_name(final.name + ".copy")
        shutil.copytree(built, tmp)
        os.rename(tmp, final)  # the build's last act, then it lets go of the lock
    rc = proc.wait(timeout=scaled(600))
    assert rc == 0, (run_dir / "trainer.log").read_text()[-3000:]
    assert [r["step"] for r in steps(run_dir)] == [1, 2]
