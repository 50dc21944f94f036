"""Trainer entry point, one process per rank: `python -m zeroth.trainer.main --run-dir DIR`.

Locally `zeroth run` starts it under torchrun; on a cluster each trainer pod runs it with the
standard MASTER_ADDR / MASTER_PORT / WORLD_SIZE / RANK environment (docs/operator.md):
`--config /etc/zeroth/run.json --run-dir CHECKPOINTS/R --export-dir EXPORT/R --metrics-addr 0.0.0.0`.
`DIR/run.json` holds the validated manifest; `--config` is copied there when it is missing, so a
run directory always describes its run.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import torch

TIMEOUT_VAR = "ZEROTH_COLLECTIVE_TIMEOUT"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="zeroth.trainer.main")
    p.add_argument("--run-dir", type=Path, required=True, help="checkpoints, metrics.jsonl, plots (created if missing)")
    p.add_argument("--config", type=Path, default=None, help="the run manifest (JSON); default RUN_DIR/run.json")
    p.add_argument("--export-dir", type=Path, default=None, help="verified-sample export; default RUN_DIR/samples")
    p.add_argument("--metrics-port", type=int, default=None, help="serve /metrics (rank 0; 0 picks a port)")
    p.add_argument("--metrics-addr", default="127.0.0.1", help="address /metrics listens on (pods: 0.0.0.0)")
    args = p.parse_args(argv)

    # A rank that a C++ abort or a segfault kills (inside gloo, NCCL, a kernel) leaves its threads'
    # Python stacks in the log, not just torchrun's "Signal 6". They go to a copy of stderr's file
    # descriptor: a library that points fd 2 elsewhere for a while (DeepSpeed's op probe sends it to
    # a temporary file it then deletes, while it compiles test programs) does not take them along.
    faulthandler.enable(file=os.dup(sys.stderr.fileno()))
    args.run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _train(args)
    except BaseException as e:
        _record_failure(args.run_dir, e)
        raise


def _train(args: argparse.Namespace) -> int:
    import deepspeed
    import torch.distributed as dist

    from zeroth import validation
    from zeroth.rollout import fleet as fleets
    from zeroth.trainer import loop, models

    # torchrun starts each rank in a session of its own: record them, so they can be found and stopped
    pids = args.run_dir / "pids"
    pids.mkdir(exist_ok=True)
    (pids / f"rank-{os.environ.get('RANK', '0')}.pid").write_text(str(os.getpid()))
    config = args.config or args.run_dir / "run.json"
    text = config.read_text()
    run = validation.validate(json.loads(text), source=str(config))
    _keep_copy(text, args.run_dir / "run.json")
    cuda = torch.cuda.is_available() and run.spec.trainer.gpus_per_replica > 0
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    else:
        skip_shared_memory_allreduce()
    # Every rank has the model before its first collective: a first build takes minutes (more on a
    # slow or busy machine), and is waited for on the cache's file lock, which has no timeout.
    models.resolve(run.spec.model)
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", timeout=collective_timeout())
    try:
        return loop.run(run.spec, run.metadata.name, run.metadata.namespace, args.run_dir, args.metrics_port,
                        args.metrics_addr, args.export_dir)
    finally:
        fleets.shutdown()  # rank 0: the local Ray stops before torchrun, and `zeroth run`, return
        dist.destroy_process_group()


def collective_timeout() -> timedelta:
    """How long a rank waits in one collective for its peers before it fails:
    `ZEROTH_COLLECTIVE_TIMEOUT` seconds, default 30 minutes (rank 0 alone generates and evaluates
    while the others wait; a dead peer still fails the gang, for the operator to restart)."""
    value = os.environ.get(TIMEOUT_VAR, "1800")
    try:
        seconds = float(value)
    except ValueError:
        raise SystemExit(f"{TIMEOUT_VAR}={value!r} must be a number of seconds") from None
    return timedelta(seconds=seconds)


def _record_failure(run_dir: Path, error: BaseException) -> None:
    """`RUN_DIR/errors/rank-N.txt`: this rank's error in one line, for `zeroth run` to show instead
    of a page of traceback (which goes to the log as usual)."""
    if isinstance(error, KeyboardInterrupt) or (isinstance(error, SystemExit) and error.code in (None, 0)):
        return
    if isinstance(error, SystemExit):
        line = str(error.code)
    else:
        line = f"{type(error).__name__}: {error}".strip()
    errors = run_dir / "errors"
    errors.mkdir(exist_ok=True)
    rank = os.environ.get("RANK", "0")
    tmp = errors / f".rank-{rank}.tmp"
    tmp.write_text(" ".join(line.split())[:1000] + "\n")
    os.replace(tmp, errors / f"rank-{rank}.txt")


def skip_shared_memory_allreduce() -> None:
    """DeepSpeed's CPU backend JIT-compiles its shared-memory all-reduce when it starts: about a
    minute of g++ in every trainer pod at every start (nothing persists the build there), and no pod
    starts from an image without a C++ toolchain. Only `inference_all_reduce` uses it, which training
    never calls; marked incompatible, the op is skipped as on a platform that lacks it. Every
    process that starts a CPU rank as the trainer does calls it (the ZeRO tests' ranks too)."""
    from deepspeed import ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().get_op_builder("ShareMemCommBuilder")  # None off the CPU accelerator
    if builder is not None:
        ops.__compatible_ops__[builder.NAME] = False


def _keep_copy(text: str, path: Path) -> None:
    """Writes the manifest to `path` unless it exists; atomically, as ranks sharing a volume may race.
    The temporary file's name is unique on the volume, not just in this process's PID namespace:
    every rank's container may give it the same process id."""
    if path.exists():
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
