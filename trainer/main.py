"""Trainer entry point, one process per rank: `python -m zeroth.trainer.main --run-dir DIR`.

Locally `zeroth run` starts it under torchrun; on a cluster each trainer pod runs it with the
standard MASTER_ADDR / MASTER_PORT / WORLD_SIZE / RANK environment. `DIR/run.json` holds the
validated manifest.
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
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--metrics-port", type=int, default=None, help="serve /metrics on 127.0.0.1 (rank 0; 0 picks a port)")
    args = p.parse_args(argv)

    import deepspeed
    import torch.distributed as dist

    from zeroth import validation
    from zeroth.trainer import loop

    # torchrun starts each rank in a session of its own: record them, so they can be found and stopped
    pids = args.run_dir / "pids"
    pids.mkdir(exist_ok=True)
    (pids / f"rank-{os.environ.get('RANK', '0')}.pid").write_text(str(os.getpid()))
    run = validation.validate(json.loads((args.run_dir / "run.json").read_text()), source=str(args.run_dir / "run.json"))
    cuda = torch.cuda.is_available() and run.spec.trainer.gpus_per_replica > 0
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    try:
        return loop.run(run.spec, run.metadata.name, run.metadata.namespace, args.run_dir, args.metrics_port)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
