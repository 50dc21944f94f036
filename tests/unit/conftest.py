"""Fixtures shared by unit tests that run DeepSpeed for real."""

from __future__ import annotations

import importlib
import socket

import pytest
import torch.distributed as dist


@pytest.fixture(scope="module")
def process_group():
    """A one-rank gloo group, as `torchrun` would give a one-replica trainer."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                           "LOCAL_RANK": "0"}.items():
            mp.setenv(key, value)
        # One rank needs no shared-memory all-reduce, which DeepSpeed would JIT-compile (~30 s, or
        # minutes on a busy machine). `import deepspeed.comm.torch` would bind `torch` itself.
        mp.setattr(importlib.import_module("deepspeed.comm.torch"), "build_shm_op", lambda: None)
        dist.init_process_group("gloo", rank=0, world_size=1)
        yield
        # through DeepSpeed once it has used the group: it also drops the groups it cached (its clone
        # of the world group), which the next module's group would otherwise meet, stale
        comm = importlib.import_module("deepspeed.comm")
        (comm.destroy_process_group if comm.is_initialized() else dist.destroy_process_group)()
