"""`zeroth run`: the same manifest on this machine, no cluster.

Validates the manifest (the same rules as `kubectl apply`), writes the run directory, starts the
trainer ranks under torchrun (DeepSpeed with gloo on CPU; rank 0 starts a local Ray for the rollout
workers), and follows `metrics.jsonl` with a progress bar. Ctrl-C asks the trainer to finish the
step and checkpoint; `zeroth run --resume RUN_DIR` continues from there. The core never imports
the trainer: it runs it as a process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from zeroth import api, checkpoints, validation

CACHE = Path(os.environ.get("ZEROTH_CACHE", Path.home() / ".cache" / "zeroth"))


def new_run_dir(run: api.ReasoningRun, root: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / f"{run.metadata.name}-{stamp}"
    path.mkdir(parents=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# How long torchrun lets the ranks finish the step and checkpoint after Ctrl-C before it kills them
# (torchrun's own default, 30 s, is shorter than one step on a loaded CPU: the step was lost).
STOP_GRACE_SECONDS = 900


def trainer_command(run: api.ReasoningRun, run_dir: Path, metrics_port: int) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={run.spec.trainer.replicas}", f"--master-port={free_port()}",
        f"--shutdown-timeout={STOP_GRACE_SECONDS}",
        "-m", "zeroth.trainer.main", "--run-dir", str(run_dir), "--metrics-port", str(metrics_port),
    ]


def trainer_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(CACHE / "torch_extensions"))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
    if "RAY_ADDRESS" not in env:  # rank 0 and the local Ray it starts (rollout/local_ray.py) share a token
        env.setdefault("RAY_AUTH_MODE", "token")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["ZEROTH_CACHE"] = str(CACHE)
    return env


def run(manifest: Path | None, resume: Path | None, runs_root: Path, metrics_port: int, console: Console) -> int:
    if resume is not None:
        run_dir = resume
        run_ = validation.validate(json.loads((run_dir / "run.json").read_text()), source=str(run_dir / "run.json"))
    else:
        run_ = validation.load(manifest)
        run_dir = new_run_dir(run_, runs_root)
        (run_dir / "run.json").write_text(json.dumps(run_.model_dump(by_alias=True, exclude_none=True, mode="json"), indent=2))
    log = open(run_dir / "trainer.log", "a")
    console.print(f"[bold]{run_.metadata.name}[/]: run directory [cyan]{run_dir}[/]  (trainer log: trainer.log)", soft_wrap=True)
    for stale in [*(run_dir / "pids").glob("rank-*.pid"), *(run_dir / "errors").glob("rank-*.txt")]:
        stale.unlink()  # a resumed run's old ranks: not ours to signal, nor its errors ours to report
    build = proc = None
    interrupted = False

    def forward(*_):
        nonlocal interrupted
        interrupted = True
        if build is not None and build.poll() is None:
            build.send_signal(signal.SIGINT)  # nothing trained yet: the build cleans up and stops
        if proc is not None:
            proc.send_signal(signal.SIGTERM)  # torchrun passes it on; rank 0 checkpoints and stops

    old = signal.signal(signal.SIGINT, forward)
    try:
        if run_.spec.model.name.startswith("builtin:"):
            # Built once and cached, with its progress bar here. The trainer starts once the build
            # holds the cache's lock (its first line), so its imports overlap the build, and its
            # ranks wait on that lock, with no timeout, before their first collective.
            console.print(f"model {run_.spec.model.name}: building or reusing the cached base model")
            build = subprocess.Popen([sys.executable, "-m", "zeroth.trainer.build_model", str(run_dir / "run.json")],
                                     env=trainer_env(), stdout=subprocess.PIPE, text=True)
            if not build.stdout.readline() or interrupted:
                return _build_failed(build, interrupted, run_dir, console)
        # a resumed run's metrics.jsonl holds the earlier attempts' steps: a stop is judged by this one's
        since = (run_dir / "metrics.jsonl").stat().st_size if (run_dir / "metrics.jsonl").exists() else 0
        proc = subprocess.Popen(trainer_command(run_, run_dir, metrics_port), stdout=log, stderr=subprocess.STDOUT,
                                env=trainer_env(), start_new_session=True)
        (run_dir / "trainer.pid").write_text(str(proc.pid))  # its process group: torchrun and the ranks
        if build is not None and (build.wait() != 0 or interrupted):
            _kill(run_dir, proc)  # no step trained yet: nothing to checkpoint
            return _build_failed(build, interrupted, run_dir, console)
        rc = follow(run_, run_dir, proc, console)
    finally:
        signal.signal(signal.SIGINT, old)
    if rc != 0 and not interrupted:
        _kill(run_dir, proc)  # a rank that failed may leave its peers waiting in a collective
        # soft_wrap: paths and commands stay whole, to be copied
        console.print(f"[red]training failed[/] (exit {rc}): {escape(failure(run_dir))}", highlight=False, soft_wrap=True)
        console.print(f"  the whole log: {run_dir / 'trainer.log'}\n"
                      f"  after fixing the cause, continue from the last checkpoint: zeroth run --resume {run_dir}",
                      markup=False, highlight=False, soft_wrap=True)
        return rc
    if interrupted:  # did the stop checkpoint the last step this attempt trained?
        trained, saved = last_step(run_dir, since), checkpoints.newest_step(run_dir / "checkpoints")
    if interrupted and trained > saved:
        console.print(f"[red]stopping failed[/]: step {trained} was trained but not checkpointed: {escape(failure(run_dir))}",
                      highlight=False, soft_wrap=True)
        console.print(f"  the whole log: {run_dir / 'trainer.log'}\n"
                      f"  continue from the last checkpoint (step {saved}): zeroth run --resume {run_dir}",
                      markup=False, highlight=False, soft_wrap=True)
        return rc if rc not in (0, 130) else 1
    if interrupted:
        console.print(f"stopped; resume with: [bold]zeroth run --resume {run_dir}[/]", soft_wrap=True)
        _gpu_time(run_, run_dir, console)
        return 130
    console.print(f"[green]done[/]: {run_dir}/reward.png, {run_dir}/metrics.jsonl, {run_dir}/samples/")
    _gpu_time(run_, run_dir, console)
    return 0


def last_record(run_dir: Path, key: str, since: int = 0) -> dict | None:
    """The last record in metrics.jsonl (from byte `since` on) that has `key` (a step's:
    "reward_mean"); None before one."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_bytes()[since:].decode(errors="replace").splitlines() if path.exists() else []
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if key in record:
            return record
    return None


def last_step(run_dir: Path, since: int = 0) -> int:
    """The last step the trainer recorded (from byte `since` of metrics.jsonl on; 0 before one)."""
    record = last_record(run_dir, "reward_mean", since)
    return record["step"] if record else 0


def gpu_time(run_: api.ReasoningRun, run_dir: Path) -> str | None:
    """The run's GPU time and cost in one line, as the last record in metrics.jsonl that has them
    counts them (trainer rank 0 writes them into each step's and evaluation's record); None before
    there is one."""
    last = last_record(run_dir, "gpu_seconds")
    if last is None:
        return None
    hours, cost = last["gpu_seconds"] / 3600, run_.spec.cost
    note = (" (no GPU: this run used the CPU)" if not last["gpu_seconds"] else
            " (no price: set spec.cost.pricePerGpuHour)" if not cost.price_per_gpu_hour else "")
    return f"GPU time {hours:.2f} GPU-hours{note}, cost {last['cost']:.2f} {cost.currency}"


def _gpu_time(run_: api.ReasoningRun, run_dir: Path, console: Console) -> None:
    line = gpu_time(run_, run_dir)
    if line is not None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def failure(run_dir: Path) -> str:
    """The first error a trainer rank reported (RUN_DIR/errors/rank-N.txt, the oldest: later ones
    are usually its peers failing in a collective), in one line."""
    errors = sorted((run_dir / "errors").glob("rank-*.txt"), key=lambda p: p.stat().st_mtime)
    if not errors:
        return "a trainer process ended without a Python error (killed, e.g. out of memory?)"
    first = errors[0]
    return f"{first.stem.replace('-', ' ')}: {first.read_text().strip()}"


def _build_failed(build: subprocess.Popen, interrupted: bool, run_dir: Path, console: Console) -> int:
    rc = build.wait()
    if interrupted:
        console.print(f"stopped before training; resume with: [bold]zeroth run --resume {run_dir}[/]", soft_wrap=True)
        return 130
    console.print(f"[red]building the base model failed[/] (exit {rc}): its error is printed above. "
                  f"Run [bold]zeroth run --resume {run_dir}[/] to try again.", soft_wrap=True)
    return rc or 1


def _kill(run_dir: Path, proc: subprocess.Popen) -> None:
    """SIGKILL to torchrun's process group and to every rank (each runs in a session of its own)."""
    pids = [int(p.read_text()) for p in (run_dir / "pids").glob("rank-*.pid")] if (run_dir / "pids").is_dir() else []
    for kill, target in [(os.killpg, proc.pid), *((os.kill, pid) for pid in pids)]:
        try:
            kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def follow(run_: api.ReasoningRun, run_dir: Path, proc: subprocess.Popen, console: Console) -> int:
    """Progress from metrics.jsonl until the trainer exits: step, reward, accuracy, tokens/s, ETA."""
    path = run_dir / "metrics.jsonl"
    max_steps = run_.spec.algorithm.max_steps
    columns = (TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    seen = 0
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("train", total=max_steps, info="starting (model build, Ray, DeepSpeed)...")
        while True:
            if path.exists():
                lines = path.read_text().splitlines()
                for line in lines[seen:]:
                    r = json.loads(line)
                    if "reward_mean" in r:
                        bar.update(task, completed=r["step"], info=(
                            f"reward {r['reward_mean']:.3f}  acc {r['accuracy']:.3f}  "
                            f"{r['tokens_per_second']:.0f} tok/s  len {r['response_length_mean']:.1f}"))
                    elif "eval_greedy" in r:
                        console.print(f"  eval @ step {r['step']}: greedy {r['eval_greedy']:.3f}  "
                                      f"pass@{r['eval_k']} {r['eval_pass@k']:.3f}  maj@{r['eval_k']} {r['eval_maj@k']:.3f}")
                seen = len(lines)
            rc = proc.poll()
            if rc is not None:
                return rc
            time.sleep(0.5)
