"""Real RL runs on this CPU: `zeroth run` as a user runs it (torchrun, DeepSpeed gloo, local Ray)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests import procs, speed
from tests.conftest import ROOT

TINY = ROOT / "examples" / "countdown-tiny.yaml"


def manifest(**spec_overrides) -> dict:
    """The tiny example, with parts of its spec replaced (nested dicts merge one level deep)."""
    m = yaml.safe_load(TINY.read_text())
    for key, value in spec_overrides.items():
        if isinstance(value, dict) and isinstance(m["spec"].get(key), dict):
            m["spec"][key] = {**m["spec"][key], **value}
        else:
            m["spec"][key] = value
    return m


def start_run(tmp: Path, m: dict | None = None, resume: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`zeroth run` of manifest `m` (or `--resume`) under `tmp/runs`; its processes belong to the
    test (tests/procs.py) and are killed when it ends, however it ends."""
    args = [sys.executable, "-m", "zeroth", "run", "--runs", str(tmp / "runs"), "--metrics-port", "0"]
    if resume:
        args += ["--resume", str(resume)]
    else:
        path = tmp / f"{m['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(m))
        args.append(str(path))
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp,
                            env=procs.tag({**os.environ, **(env or {})}))


def finish(proc: subprocess.Popen, timeout: float = 1800) -> str:
    """Waits for a run (a hang fails after `timeout` reference seconds, scaled); asserts it
    succeeded, showing its output and the end of its trainer log if not."""
    out, _ = proc.communicate(timeout=speed.scaled(timeout))
    if proc.returncode != 0:
        logs = sorted(Path(proc.args[proc.args.index("--runs") + 1]).glob("*/trainer.log"), key=lambda p: p.stat().st_mtime)
        tail = logs[-1].read_text(errors="replace")[-4000:] if logs else "(no trainer log)"
        raise AssertionError(f"zeroth run exited {proc.returncode}:\n{out[-3000:]}\n--- trainer.log ---\n{tail}")
    return out


def run_dir_of(tmp: Path, name: str) -> Path:
    found = sorted((tmp / "runs").glob(f"{name}-*"))
    assert found, f"no run directory for {name} under {tmp / 'runs'}"
    return found[-1]


def records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def steps(run_dir: Path) -> list[dict]:
    return [r for r in records(run_dir) if "reward_mean" in r]


def wait_for(predicate, timeout: float, what: str) -> None:
    """Polls `predicate` until true; fails after `timeout` reference seconds (scaled)."""
    deadline = time.monotonic() + speed.scaled(timeout)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def until(what: str, check, timeout: float, explain=lambda: ""):
    """`check()`'s first true value, polled each second; fails after `timeout` reference seconds
    (scaled), with `explain()` (the state that would say why)."""
    deadline = time.monotonic() + speed.scaled(timeout)
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(1)
    raise AssertionError(f"timed out after {speed.scaled(timeout):.0f} s waiting for {what}\n{explain()}")


def kill_trainer(run_dir: Path) -> None:
    """SIGKILL torchrun and every rank (each rank is a session leader of its own), as a node loss would."""
    groups = [int((run_dir / "trainer.pid").read_text())]
    groups += [int(p.read_text()) for p in (run_dir / "pids").glob("rank-*.pid")]
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session", autouse=True)
def _engine_env():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # The example's base model, built once per recipe (`make test` builds it before pytest starts,
    # so this is a no-op there): no run in a test waits for a first build.
    from zeroth.api import ModelSpec
    from zeroth.trainer import models

    models.resolve(ModelSpec(name="builtin:tiny-arith"))
