"""Weight sync by broadcast (`zeroth.rollout.broadcast`), run for real on this CPU with the gloo
communicator: the same protocol code as NCCL on GPUs, only the communicator differs.

- a trainer (this process) and receivers in processes of their own, over versions, with a receiver
  leaving and another joining between them: every receiver ends with the sender's checksum;
- the receiver's checks, each on a message broken on purpose (stale version, buckets out of order,
  a skipped bucket, a wrong count, another group's message);
- the engines' ends: the HF engine, and vLLM's worker extension on stand-in tensor-parallel
  workers (vLLM does not run here), including a version that leaves a weight out.
"""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from types import ModuleType

import pytest
import torch

from zeroth.rollout import broadcast, vllm_worker
from zeroth.rollout.broadcast import ProtocolError, Receiver, Sender, Snapshot, copy_into
from zeroth.rollout.weights import BroadcastSync, ObjectStoreSync, checksum, make_sync, sync_backend

TIMEOUT = 60.0  # a broken protocol fails a test, never hangs it
SMALL_BUCKETS = 2048  # bytes: several buckets per version, one tensor alone in its own


def state(seed: int) -> dict[str, torch.Tensor]:
    """Weights of every kind the trainer sends: fp32, bf16, a scalar, integers, a large one."""
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(40, 16, generator=g).to(torch.bfloat16),
        "layers.0.weight": torch.randn(16, 16, generator=g),
        "layers.0.bias": torch.randn(16, generator=g),
        "norm.weight": torch.randn(3, generator=g).to(torch.bfloat16),
        "scale": torch.randn((), generator=g),
        "steps": torch.randint(0, 1000, (5,), generator=g),
        "big.weight": torch.randn(40, 40, generator=g),  # 6.4 kB: over the bucket size, a bucket of its own
    }


def zeros_like(s: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: torch.zeros_like(t) for n, t in s.items()}


class DictEngine:
    """An engine's broadcast end over a plain state dict (the HF engine's, without the model)."""

    ranks = 1

    def __init__(self, like: dict[str, torch.Tensor]):
        self.state, self.receiver = zeros_like(like), Receiver()

    def join_weights(self, group, first_rank):
        self.receiver.join(group, first_rank, "cpu")

    def receive_weights(self, bucket):
        got = self.receiver.receive(bucket)
        copy_into(self.state, got.tensors)
        return got.version

    def checksum(self):
        return checksum(self.state)


class Member:
    """Calls run in a thread of its own, one at a time in submission order, as on a Ray actor."""

    def __init__(self, engine):
        self.engine, self.pool = engine, ThreadPoolExecutor(1)

    def call(self, method: str, *args) -> Future:
        return self.pool.submit(getattr(self.engine, method), *args)

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)


def connect(sender: Sender, members: list, ranks: list[int] | None = None) -> None:
    """A new group of `members` (each `ranks` ranks), joined by all of them."""
    ranks = ranks or [1] * len(members)
    group = asdict(sender.open(1 + sum(ranks)))
    joins, first = [], 1
    for m, n in zip(members, ranks):
        joins.append(m.call("join_weights", group, first))
        first += n
    sender.connect()
    for j in joins:
        j.result(TIMEOUT)


def send(sender: Sender, members: list, version: int, weights: dict, mutate=lambda i, m: m) -> list[list]:
    """Sends a version; each member's results, one per bucket (an exception where one raised).
    `mutate(i, message)` may break bucket i's metadata on its way to the members."""
    calls: list[list[Future]] = [[] for _ in members]
    index = 0

    def post(message):
        nonlocal index
        message = mutate(index, dict(message))
        index += 1
        for k, m in enumerate(members):
            calls[k].append(m.call("receive_weights", message))

    sender.send(version, Snapshot.of(weights, SMALL_BUCKETS), post)
    return [[_outcome(f) for f in fs] for fs in calls]


def _outcome(f: Future):
    try:
        return f.result(TIMEOUT)
    except Exception as e:  # noqa: BLE001 - the test looks at it
        return e


@pytest.fixture
def sender():
    s = Sender("gloo", "127.0.0.1", timeout=TIMEOUT)
    yield s
    s.close()


# --------------------------------------------------------------- between processes


def _receiver_process(inbox, outbox) -> None:
    """A receiver in a process of its own: runs (method, args) messages on a DictEngine."""
    engine = DictEngine(state(0))
    while (message := inbox.get()) is not None:
        method, args = message
        try:
            outbox.put(("ok", getattr(engine, method)(*args)))
        except Exception as e:  # noqa: BLE001 - reported to the test
            outbox.put(("error", f"{type(e).__name__}: {e}"))


class ProcessMember:
    """A Member whose engine lives in another process. Replies come
    in call order; `call` returns a Future that the test's `result` calls fill from the outbox."""

    def __init__(self, ctx):
        self.inbox, self.outbox = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(target=_receiver_process, args=(self.inbox, self.outbox), daemon=True)
        self.proc.start()
        self.waiting: list[Future] = []

    def call(self, method, *args) -> Future:
        self.inbox.put((method, args))
        reply = _Reply(self)
        self.waiting.append(reply)
        return reply

    def close(self):
        if self.proc.is_alive():
            self.inbox.put(None)
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


class _Reply(Future):
    def __init__(self, member: ProcessMember):
        super().__init__()
        self.member = member

    def result(self, timeout=None):
        while not self.done():  # read replies up to this one
            status, value = self.member.outbox.get(timeout=timeout)
            f = self.member.waiting.pop(0)
            f.set_result(value) if status == "ok" else f.set_exception(RuntimeError(value))
        return super().result()


def test_processes_receive_every_version_and_a_member_leaves_and_another_joins(sender):
    # processes forked from one fresh interpreter that imported torch and this module once
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    a, b, c = (ProcessMember(ctx) for _ in range(3))
    try:
        connect(sender, [a, b])
        first_group = sender.generation
        for version, seed in [(1, 1), (2, 2)]:
            weights = state(seed)
            results = send(sender, [a, b], version, weights)
            assert len(results[0]) > 2, "several buckets per version"
            for r in results:  # None for every bucket but the last, which completes the version
                assert r[:-1] == [None] * (len(r) - 1) and r[-1] == version, r
            for m in (a, b):
                assert m.call("checksum").result(TIMEOUT) == checksum(weights)

        b.close()  # b leaves; c joins: a new group, without b
        connect(sender, [a, c])
        assert sender.generation == first_group + 1
        weights = state(3)
        results = send(sender, [a, c], 3, weights)
        assert [r[-1] for r in results] == [3, 3]
        for m in (a, c):
            assert m.call("checksum").result(TIMEOUT) == checksum(weights)
    finally:
        for m in (a, b, c):
            m.close()


# ------------------------------------------------------------------ the receiver's checks


@pytest.fixture
def pair(sender):
    """The sender and one member in a group of two; the member has version 1 applied."""
    member = Member(DictEngine(state(0)))
    connect(sender, [member])
    assert send(sender, [member], 1, state(1))[0][-1] == 1
    yield member
    member.close()


def _errors(results) -> list[str]:
    return [str(r) for r in results if isinstance(r, Exception)]


def test_a_version_older_than_the_applied_one_is_refused(sender, pair):
    (results,) = send(sender, [pair], 0, state(9))
    assert isinstance(results[0], ProtocolError) and "older than the applied version 1" in str(results[0])
    assert all(isinstance(r, ProtocolError) for r in results)  # and every bucket after it
    assert pair.engine.receiver.applied == 1


def test_buckets_out_of_order_are_refused(sender, pair):
    def swap(i, m):
        m["index"] = {0: 1, 1: 0}.get(m["index"], m["index"])
        return m

    (results,) = send(sender, [pair], 2, state(2), swap)
    errors = _errors(results)
    assert "bucket 1 of version 2 arrived while receiving version None" in errors[0]
    assert "bucket 2 of version 2 arrived, bucket 1 expected" in errors[1]  # the "first" bucket restarted it
    assert isinstance(results[-1], ProtocolError) and pair.engine.receiver.applied == 1  # never applied
    # the same version sent again, whole, is taken
    assert send(sender, [pair], 2, state(2))[0][-1] == 2
    assert pair.engine.checksum() == checksum(state(2))


def test_a_skipped_bucket_is_refused(sender, pair):
    def skip_one(i, m):
        if i >= 1:
            m["index"] += 1  # bucket 1 "never came": its bytes are counted as bucket 2
        return m

    (results,) = send(sender, [pair], 2, state(2), skip_one)
    assert "bucket 2 of version 2 arrived, bucket 1 expected" in _errors(results)[0]
    assert pair.engine.receiver.applied == 1


def test_a_version_missing_tensors_is_refused(sender, pair):
    def fewer(i, m):
        m["count"] += 1  # the sender says it sent one more than arrived
        return m

    (results,) = send(sender, [pair], 2, state(2), fewer)
    assert "tensors arrived, the sender sent" in _errors(results)[-1]
    assert pair.engine.receiver.applied == 1


def test_a_message_of_another_group_is_refused_before_any_broadcast(sender, pair):
    message = {"generation": sender.generation - 1, "version": 2, "index": 0, "names": [], "dtypes": [], "shapes": [],
               "offsets": [], "nbytes": 0, "last": True, "count": 0}
    with pytest.raises(ProtocolError, match="group"):
        pair.engine.receive_weights(message)


def test_unknown_backend_names_the_known_ones():
    with pytest.raises(ValueError, match=r"known: \['gloo', 'nccl'\]"):
        broadcast.communicator(broadcast.Group("mpi", "127.0.0.1", 1, 2, 1, 1.0), 0, "cpu")


def test_buckets_cut_in_order_and_round_trip_bit_exact():
    weights = state(4)
    buckets = list(broadcast.plan(weights, SMALL_BUCKETS))
    assert [n for b in buckets for n in b] == list(weights)  # the state's order, every tensor once
    assert ["big.weight"] in buckets
    snapshot = Snapshot.of(weights, SMALL_BUCKETS)
    assert [meta["names"] for meta, _ in snapshot.buckets] == buckets and snapshot.count == len(weights)
    for meta, buffer in snapshot.buckets:
        assert all(o % broadcast.ALIGN == 0 for o in meta["offsets"])
        bucket = broadcast.Bucket(1, 1, 0, nbytes=buffer.numel(), last=False, count=0, **meta)
        for name, t in broadcast.unpack(buffer.clone(), bucket):
            assert t.dtype == weights[name].dtype and torch.equal(t, weights[name]), name
    with torch.no_grad():
        weights["layers.0.weight"].add_(1)  # the tensors a snapshot came from change: it does not
    views = {}
    for meta, buffer in snapshot.buckets:
        views.update(broadcast.unpack(buffer, broadcast.Bucket(1, 1, 0, nbytes=buffer.numel(), last=False, count=0, **meta)))
    assert torch.equal(views["layers.0.weight"], state(4)["layers.0.weight"])


# ------------------------------------------------------------------------ the engines' ends


def test_the_hf_engine_takes_broadcast_weights_and_refuses_an_incomplete_version(sender, tmp_path):
    from tests.unit import tiny_chat
    from tests.unit.test_generation import spec
    from zeroth.rollout.generation import HFEngine

    tok = tiny_chat.tokenizer()
    tiny_chat.save(tmp_path / "rollout", tok, seed=0)
    tiny_chat.save(tmp_path / "trainer", tok, seed=1)
    from transformers import AutoModelForCausalLM

    trainer = AutoModelForCausalLM.from_pretrained(tmp_path / "trainer").state_dict()
    engine = HFEngine(str(tmp_path / "rollout"), spec(tmp_path / "rollout"), tok, [tok.eos_token_id])
    member = Member(engine)
    try:
        connect(sender, [member])
        assert engine.checksum() != checksum(trainer)
        assert send(sender, [member], 1, trainer)[0][-1] == 1
        assert engine.checksum() == checksum(trainer)
        value, names = engine.checked()
        assert value == checksum(trainer) and names == sorted(trainer)

        partial = {n: t + 1 for n, t in trainer.items() if n != "transformer.ln_f.bias"}
        (results,) = send(sender, [member], 2, partial)
        assert "weights version 2 lacks ['transformer.ln_f.bias']" in str(results[-1])
    finally:
        member.close()


class TPWorker(vllm_worker.WeightLoader):
    """A stand-in for one of vLLM's tensor-parallel worker processes (its rank, device, model)."""

    def __init__(self, model, rank: int):
        self.model_runner = type("Runner", (), {"model": model})()
        self.rank, self.device = rank, torch.device("cpu")


class ConcurrentLLM:
    """`collective_rpc` as vLLM's: the method runs in every worker at once (they are processes)."""

    def __init__(self, workers):
        self.workers, self.resets = workers, 0
        self.pool = ThreadPoolExecutor(len(workers))

    def collective_rpc(self, method, args=()):
        calls = [self.pool.submit(getattr(w, method), *args) for w in self.workers]
        return [c.result(TIMEOUT) for c in calls]

    def reset_prefix_cache(self):
        self.resets += 1


def test_vllm_engines_receive_in_every_tensor_parallel_worker(sender, monkeypatch):
    """Two engines of two tensor-parallel workers each: five ranks; each worker loads through the
    model's own loader (q/k/v fused), the engine reports the version once, and a version that
    leaves a parameter of the model unloaded is an error."""
    from tests.unit.test_generation import spec as spec_with
    from tests.unit.test_vllm_worker import FusedAttention, TrainerAttention
    from zeroth.rollout import generation

    torch.manual_seed(0)
    trainer = TrainerAttention(8, torch.bfloat16).state_dict()
    llms = []

    def fake_llm(**kwargs):
        llms.append(ConcurrentLLM([TPWorker(FusedAttention(8, torch.bfloat16), r) for r in range(2)]))
        return llms[-1]

    fake = ModuleType("vllm")
    fake.LLM = fake_llm
    monkeypatch.setitem(sys.modules, "vllm", fake)
    run = spec_with("m", rollout={"engine": "vllm", "gpusPerReplica": 2, "tensorParallelSize": 2})
    engines = [generation.make_engine("/m", run, None, [2]) for _ in range(2)]
    assert [e.ranks for e in engines] == [2, 2]
    members = [Member(e) for e in engines]
    try:
        connect(sender, members, ranks=[2, 2])
        assert [r[-1] for r in send(sender, members, 1, trainer)] == [1, 1]
        common = checksum({n: trainer[n] for n in ("norm.bias", "norm.weight", "o_proj.weight")})
        assert [m.engine.checksum() for m in members] == [common] * 2
        for llm in llms:
            assert llm.resets == 1
            for w in llm.workers:
                model = w.model_runner.model
                want = torch.cat([trainer["q_proj.weight"], trainer["k_proj.weight"], trainer["v_proj.weight"]])
                assert torch.equal(model.qkv_proj.weight, want) and torch.equal(model.o_proj.weight, trainer["o_proj.weight"])

        partial = {n: t for n, t in trainer.items() if n != "o_proj.weight"}
        results = send(sender, members, 2, partial)
        assert all("left ['o_proj.weight'] unloaded" in str(r[-1]) for r in results), results
    finally:
        for m in members:
            m.close()


# ------------------------------------------------------------------------------ the choice


def test_nccl_only_for_vllm_on_gpus_on_a_cluster_and_the_variable_overrides():
    from tests.unit.test_generation import spec as spec_with

    gpu = spec_with("m", rollout={"engine": "vllm", "gpusPerReplica": 1})
    gpu.trainer.gpus_per_replica = 1
    cpu = spec_with("m")
    cluster = {"RAY_ADDRESS": "run-ray-head.ns.svc:6379"}
    assert sync_backend(gpu, cluster) == "nccl"
    assert sync_backend(gpu, {}) == "objectstore"  # one machine: engines share the trainer's GPUs
    gpu.trainer.gpus_per_replica = 0
    assert sync_backend(gpu, cluster) == "objectstore"  # a CPU trainer cannot join an NCCL group
    assert sync_backend(cpu, cluster) == "objectstore"
    assert sync_backend(cpu, {"ZEROTH_WEIGHT_SYNC": "gloo"}) == "gloo"
    assert isinstance(make_sync(cpu, {"ZEROTH_WEIGHT_SYNC": "gloo"}), BroadcastSync)
    assert isinstance(make_sync(cpu, {}), ObjectStoreSync)
    with pytest.raises(ValueError, match="objectstore, nccl, gloo"):
        sync_backend(cpu, {"ZEROTH_WEIGHT_SYNC": "carrier-pigeon"})


def test_the_network_policy_lets_rollout_pods_reach_trainer_rank_0_on_any_port():
    """The broadcast's store listens on a free port of trainer rank 0 and NCCL connects every pair
    of ranks on ports of its own: the run's NetworkPolicy must admit its own pods with no port list."""
    from tests.unit.test_builders import CASES, UID
    from zeroth.operator import builders

    run = CASES["countdown-qwen2.5-3b"]
    policy = builders.network_policy(run, UID)["spec"]
    own = [rule for rule in policy["ingress"] if "from" in rule]
    assert own and all("ports" not in rule for rule in own)
    selector = own[0]["from"][0]["podSelector"]["matchLabels"]
    for pod in (builders.trainer_pod(run, UID, 0, 0), builders.rollout_pod(run, UID, 0)):
        labels = pod["metadata"]["labels"]
        assert policy["podSelector"]["matchLabels"].items() <= labels.items()  # the policy covers it
        assert selector.items() <= labels.items()  # and admits it as a source
