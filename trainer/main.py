"""Trainer entry point, one process per rank: `python -m zeroth.trainer.main --run-dir DIR`.

Locally `zeroth run` starts it under torchrun; on a cluster each trainer pod runs it with the
standard MASTER_ADDR / MASTER_PORT / WORLD_SIZE / RANK environment (docs/operator.md):
`--config /etc/zeroth/run.json --run-dir CHECKPOINTS/R --export-dir EXPORT/R --metrics-addr 0.0.0.0`.
`DIR/run.json` holds the validated manifest; `--config` is copied there when it is missing, so a
run directory always describes its run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="zeroth.trainer.main")
    p.add_argument("--run-dir", type=Path, required=True, help="checkpoints, metrics.jsonl, plots (created if missing)")
    p.add_argument("--config", type=Path, default=None, help="the run manifest (JSON); default RUN_DIR/run.json")
    p.add_argument("--export-dir", type=Path, default=None, help="verified-sample export; default RUN_DIR/samples")
    p.add_argument("--metrics-port", type=int, default=None, help="serve /metrics (rank 0; 0 picks a port)")
    p.add_argument("--metrics-addr", default="127.0.0.1", help="address /metrics listens on (pods: 0.0.0.0)")
    args = p.parse_args(argv)

    import deepspeed
    import torch.distributed as dist

    from zeroth import validation
    from zeroth.trainer import loop

    args.run_dir.mkdir(parents=True, exist_ok=True)
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
        _skip_shared_memory_allreduce()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    try:
        return loop.run(run.spec, run.metadata.name, run.metadata.namespace, args.run_dir, args.metrics_port,
                        args.metrics_addr, args.export_dir)
    finally:
        dist.destroy_process_group()


def _skip_shared_memory_allreduce() -> None:
    """DeepSpeed's CPU backend JIT-compiles its shared-memory all-reduce when it starts: about a
    minute of g++ in every trainer pod at every start (nothing persists the build there), and no pod
    starts from an image without a C++ toolchain. Only `inference_all_reduce` uses it, which training
    never calls; marked incompatible, the op is skipped as on a platform that lacks it."""
    from deepspeed import ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().get_op_builder("ShareMemCommBuilder")  # None off the CPU accelerator
    if builder is not None:
        ops.__compatible_ops__[builder.NAME] = False


def _keep_copy(text: str, path: Path) -> None:
    """Writes the manifest to `path` unless it exists; atomically, as ranks sharing a volume may race."""
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
