"""Weight sync by broadcast: trainer rank 0 sends each tensor once, to every rank of every engine.

One protocol, two communicators (`COMMUNICATORS`):
- `nccl`: vLLM's `PyNcclCommunicator` over a `StatelessProcessGroup` (what TRL, OpenRLHF and veRL
  use), GPU to GPU. NCCL refuses two ranks on one GPU: the trainer and the engines must hold GPUs
  of their own (on a cluster they do: separate pods).
- `gloo`: a `ProcessGroupGloo` over a `TCPStore`, built without torch.distributed's default group
  (the trainer's own). CPU buffers; the tests run the whole protocol with it on this CPU, and it
  serves an engine that shares the trainer's GPU.

The group. Rank 0 is the trainer (its rank 0, the Ray driver). Each rollout worker holds
consecutive ranks, one per process of its engine that holds a part of the model (vLLM: one per
tensor-parallel worker, each through the worker extension; HF: one), in the sender's member order.
A group is built for a list of members and numbered (its generation); when the list changes (a
worker joined, or one was lost), the next send builds a new one, on a new port, and both sides drop
the old one. Rendezvous: a TCP store on a free port of rank 0's address (on a cluster the trainer
pod's IP, which Ray registered); NCCL and gloo then connect every pair of ranks on ports of their
own. The run's NetworkPolicy admits the run's own pods on any port (operator/builders.py).

A version travels as buckets: the state dict, in its order, packed once into flat CPU byte buffers
(a `Snapshot`, kept to bring a joining worker up to date) of at most `BUCKET_BYTES` (a larger
tensor is a bucket of its own), each tensor at a 64-byte-aligned offset; with NCCL each bucket is
copied to the sender's GPU just before its broadcast, so one bucket at a time is on the GPU.
Per bucket the metadata (`Bucket`: generation, version, index, names, dtypes, shapes, offsets;
the last one also carries the tensor count) goes to every member out of band (a Ray call), then
the bytes by one broadcast. A receiver always takes part in the broadcast, so that a message it
rejects never leaves the others waiting, and then checks: its own generation; a version never older
than the one it applied; buckets in order, none skipped; on the last one, the count. Only then does
it report the version applied. The loaders check that every weight of the model arrived.

What this does not do: abort an NCCL collective that a dead peer stalled. Broadcasts run on a
stream of their own, so a stall blocks neither side's compute; the fleet drops (kills) a worker
that does not answer in time, and the next send builds a new group without it; the stalled
communicator is dropped, not destroyed (ncclCommDestroy could wait for the dead peer).
"""

from __future__ import annotations

import datetime
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch

BUCKET_BYTES = 256 << 20
ALIGN = 64  # bytes: every tensor's offset, so that a bucket's slices view as any dtype
SYNC_TIMEOUT = 1800.0  # seconds a rendezvous or one broadcast may wait for a member


class ProtocolError(RuntimeError):
    """A message a receiver must not apply: another group's, an older version, a bucket out of order."""


@dataclass(frozen=True)
class Group:
    """What a member needs to join: plain values, as Ray and vLLM's `collective_rpc` carry them."""
    backend: str
    host: str
    port: int
    world: int
    generation: int
    timeout: float  # seconds the rendezvous and each broadcast may wait for a member


@dataclass(frozen=True)
class Bucket:
    generation: int
    version: int
    index: int
    names: list[str]
    dtypes: list[str]  # "bfloat16", as torch names them
    shapes: list[list[int]]
    offsets: list[int]
    nbytes: int
    last: bool
    count: int  # tensors in the whole version; checked on the last bucket

    def wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Bucket:
        return cls(**d)


# ----------------------------------------------------------------------------- communicators


class Communicator(Protocol):
    device: torch.device  # where buffers for it live

    def broadcast(self, buffer: torch.Tensor) -> None:
        """From rank 0 into `buffer` on every other rank. On return a receiver may read it."""

    def synchronize(self, timeout: float) -> None:
        """Waits until this rank's broadcasts completed; TimeoutError after `timeout` seconds."""

    def close(self) -> None: ...


class GlooCommunicator:
    def __init__(self, group: Group, rank: int, device: torch.device | str, timeout: float):
        from torch.distributed import BroadcastOptions, PrefixStore, TCPStore
        from torch.distributed.distributed_c10d import ProcessGroupGloo

        wait = datetime.timedelta(seconds=timeout)
        self.device = torch.device("cpu")
        self._store = TCPStore(group.host, group.port, group.world, is_master=rank == 0, timeout=wait,
                               wait_for_workers=False)
        self._pg = ProcessGroupGloo(PrefixStore(f"zeroth-weights/{group.generation}/", self._store), rank,
                                    group.world, wait)
        self._options = BroadcastOptions()
        self._options.rootRank = 0

    def broadcast(self, buffer: torch.Tensor) -> None:
        self._pg.broadcast([buffer], self._options).wait()

    def synchronize(self, timeout: float) -> None:
        pass  # gloo's broadcast returned when done

    def close(self) -> None:
        # aborting closes its connections: a peer still waiting in a broadcast fails now, not at the timeout
        self._pg.abort()
        self._pg = self._store = None


class NcclCommunicator:
    """vLLM's NCCL wrapper (imported here only: vLLM is in the CUDA image). Broadcasts run on a
    stream of their own, so a broadcast stalled by a lost peer blocks neither the trainer's
    compute stream nor the engine's."""

    def __init__(self, group: Group, rank: int, device: torch.device | str, timeout: float):
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        self.device, self.rank = torch.device(device), rank
        pg = StatelessProcessGroup.create(host=group.host, port=group.port, rank=rank, world_size=group.world,
                                          store_timeout=int(timeout))
        self._comm = PyNcclCommunicator(pg, device=self.device)
        if getattr(self._comm, "disabled", False):  # it would skip every broadcast without a word
            raise RuntimeError("vLLM's PyNcclCommunicator came up disabled (no NCCL library found?)")
        self._stream = torch.cuda.Stream(self.device)

    def broadcast(self, buffer: torch.Tensor) -> None:
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)  # the buffer was filled (rank 0) or allocated on the current stream
        buffer.record_stream(self._stream)  # not reused before the broadcast is done with it
        self._comm.broadcast(buffer, src=0, stream=self._stream)
        if self.rank != 0:
            current.wait_stream(self._stream)  # what reads the buffer next runs after it arrived

    def synchronize(self, timeout: float) -> None:
        done = torch.cuda.Event()
        done.record(self._stream)
        deadline = time.monotonic() + timeout
        while not done.query():
            if time.monotonic() > deadline:
                raise TimeoutError(f"an NCCL weight broadcast did not finish in {timeout:.0f} s (a peer lost?)")
            time.sleep(0.005)

    def close(self) -> None:
        # dropped, not destroyed: ncclCommDestroy may wait for a peer that is gone
        self._comm = self._stream = None


COMMUNICATORS: dict[str, Callable[..., Communicator]] = {"gloo": GlooCommunicator, "nccl": NcclCommunicator}


def communicator(group: Group, rank: int, device: torch.device | str) -> Communicator:
    if group.backend not in COMMUNICATORS:
        raise ValueError(f"unknown weight-sync backend {group.backend!r}; known: {sorted(COMMUNICATORS)}")
    return COMMUNICATORS[group.backend](group, rank, device, group.timeout)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ buckets


def plan(state: Mapping[str, torch.Tensor], bucket_bytes: int = BUCKET_BYTES) -> Iterator[list[str]]:
    """The names of each bucket, in the state's order: at most `bucket_bytes` each, or one tensor."""
    names: list[str] = []
    size = 0
    for name, t in state.items():
        n = _aligned(t.numel() * t.element_size())
        if names and size + n > bucket_bytes:
            yield names
            names, size = [], 0
        names.append(name)
        size += n
    if names:
        yield names


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def pack(tensors: list[tuple[str, torch.Tensor]], device: torch.device | str = "cpu"
         ) -> tuple[dict[str, list], torch.Tensor]:
    """The tensors' metadata, and one flat uint8 buffer on `device` holding their bytes."""
    offsets, size = [], 0
    for _, t in tensors:
        offsets.append(size)
        size += _aligned(t.numel() * t.element_size())
    buffer = torch.empty(size, dtype=torch.uint8, device=device)
    for (_, t), offset in zip(tensors, offsets, strict=True):
        raw = t.detach().contiguous().reshape(-1).view(torch.uint8)
        buffer[offset:offset + raw.numel()].copy_(raw)
    meta = {"names": [n for n, _ in tensors], "dtypes": [str(t.dtype).removeprefix("torch.") for _, t in tensors],
            "shapes": [list(t.shape) for _, t in tensors], "offsets": offsets}
    return meta, buffer


def unpack(buffer: torch.Tensor, bucket: Bucket) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) views into `buffer`, no copy."""
    out = []
    for name, dtype, shape, offset in zip(bucket.names, bucket.dtypes, bucket.shapes, bucket.offsets, strict=True):
        dt = getattr(torch, dtype)
        n = torch.Size(shape).numel() * torch.empty((), dtype=dt).element_size()
        out.append((name, buffer[offset:offset + n].view(dt).reshape(shape)))
    return out


@dataclass(frozen=True)
class Snapshot:
    """A state dict packed into CPU buckets: a copy, so that it can be sent again later (to a
    worker that joins) whatever became of the tensors it was taken from (a CPU trainer's are its
    live parameters)."""
    buckets: list[tuple[dict[str, list], torch.Tensor]]  # (metadata, bytes) each
    count: int

    @classmethod
    def of(cls, state: Mapping[str, torch.Tensor], bucket_bytes: int = BUCKET_BYTES) -> Snapshot:
        if not state:
            raise ValueError("no weights to send")
        return cls([pack([(n, state[n]) for n in names]) for names in plan(state, bucket_bytes)], len(state))

    @property
    def nbytes(self) -> int:
        return sum(buffer.numel() for _, buffer in self.buckets)


# --------------------------------------------------------------------------- the two ends


class Sender:
    """Rank 0: opens groups and sends versions through them."""

    def __init__(self, backend: str, host: str, device: torch.device | str = "cpu", timeout: float = SYNC_TIMEOUT):
        self.backend, self.host, self.device, self.timeout = backend, host, device, timeout
        self.generation = 0
        self.group: Group | None = None
        self.comm: Communicator | None = None

    def open(self, world: int) -> Group:
        """A new group of `world` ranks (rank 0 this one), for the members to join, then `connect`."""
        self.close()
        self.generation += 1
        self.group = Group(self.backend, self.host, free_port(self.host), world, self.generation, self.timeout)
        return self.group

    def connect(self) -> None:
        """Joins the group as rank 0: returns once every member joined (or fails at the timeout)."""
        self.comm = communicator(self.group, 0, self.device)

    def send(self, version: int, weights: Snapshot, post: Callable[[dict[str, Any]], None]) -> None:
        """Sends `weights` as version `version`: each bucket's metadata to `post` (which must
        deliver it to every member), then its bytes."""
        if self.comm is None:
            raise RuntimeError("no group: open() and connect() first")
        last = len(weights.buckets) - 1
        for index, (meta, buffer) in enumerate(weights.buckets):
            bucket = Bucket(self.generation, version, index, nbytes=buffer.numel(), last=index == last,
                            count=weights.count, **meta)
            post(bucket.wire())
            self.comm.broadcast(buffer.to(self.comm.device))  # a copy on a GPU; the buffer itself on a CPU
        self.comm.synchronize(self.timeout)

    def close(self) -> None:
        if self.comm is not None:
            self.comm.close()
        self.comm = None


@dataclass
class Received:
    tensors: list[tuple[str, torch.Tensor]]
    first: bool  # the version's first bucket
    version: int | None  # set on the last bucket: the version is complete and may be applied


class Receiver:
    """A member's end: joins groups, receives buckets, and checks the protocol (module docstring)."""

    def __init__(self) -> None:
        self.comm: Communicator | None = None
        self.generation = -1
        self.applied = -1  # the newest version received whole
        self._pending: int | None = None  # the version being received
        self._next = self._count = 0

    def join(self, group: Mapping[str, Any], rank: int, device: torch.device | str) -> None:
        if self.comm is not None:
            self.comm.close()
            self.comm = None
        g = Group(**group)
        self.comm = communicator(g, rank, device)
        self.generation, self._pending = g.generation, None

    def receive(self, message: Mapping[str, Any]) -> Received:
        bucket = Bucket.from_wire(message)
        if self.comm is None or bucket.generation != self.generation:
            # not in that group: no broadcast to take part in
            raise ProtocolError(f"a bucket of group {bucket.generation}, but this receiver is in group {self.generation}")
        buffer = torch.empty(bucket.nbytes, dtype=torch.uint8, device=self.comm.device)
        self.comm.broadcast(buffer)  # first: the others must not wait on a message rejected here
        self._check(bucket)
        if bucket.last:
            self.applied, self._pending = bucket.version, None
        return Received(unpack(buffer, bucket), bucket.index == 0, bucket.version if bucket.last else None)

    def _check(self, b: Bucket) -> None:
        pending, self._pending = self._pending, None  # any error below leaves no version half-accepted
        if b.version < self.applied:
            raise ProtocolError(f"version {b.version} is older than the applied version {self.applied}")
        if b.index == 0:
            pending, self._next, self._count = b.version, 0, 0  # a version (again, after a failed send) from the start
        if pending != b.version:
            raise ProtocolError(f"bucket {b.index} of version {b.version} arrived while receiving version {pending}")
        if b.index != self._next:
            raise ProtocolError(f"bucket {b.index} of version {b.version} arrived, bucket {self._next} expected")
        self._next += 1
        self._count += len(b.names)
        if b.last and self._count != b.count:
            raise ProtocolError(f"version {b.version}: {self._count} tensors arrived, the sender sent {b.count}")
        self._pending = b.version


def copy_into(state: Mapping[str, torch.Tensor], tensors: list[tuple[str, torch.Tensor]]) -> None:
    """Copies received tensors into a model's state dict entries (same names, same shapes)."""
    with torch.no_grad():
        for name, t in tensors:
            if name not in state:
                raise KeyError(f"received weight {name!r}, which the model does not have")
            if state[name].shape != t.shape:
                raise ValueError(f"received {name} of shape {list(t.shape)}, the model's is {list(state[name].shape)}")
            state[name].copy_(t)
