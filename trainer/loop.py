"""The training loop: rank 0 drives the rollout fleet through Ray; every rank trains its shard.

Per step: samples for the step (generated with weights at most `maxStaleness` versions old) →
group advantages on rank 0 → each rank gets a whole number of groups → GRPO update → the new
weights go to the fleet → metrics, and at intervals evaluation and a checkpoint.
Data order and sampling seeds derive from (seed, cursor, step), so a resumed run reads the same
prompts and draws the same samples as one that never stopped.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from zeroth import api
from zeroth.rollout import prompts as prompting
from zeroth.rollout.worker import Sample
from zeroth.trainer import checkpoint as ckpt
from zeroth.trainer import data, grpo, models
from zeroth.trainer.engine import Policy


class Stop:
    """SIGTERM/SIGINT: finish the step, checkpoint, exit cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self.install()

    def install(self) -> None:
        """(Re)takes SIGTERM and SIGINT: `ray.init` installs its own SIGTERM handler (exit at once)."""
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, *_: Any) -> None:
        self.requested = True


def _broadcast(obj: Any) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def data_order(n_tasks: int, seed: int):
    """prompts(cursor, n): tasks in a fresh seeded permutation per epoch."""
    perms: dict[int, np.ndarray] = {}

    def index(i: int) -> int:
        epoch, offset = divmod(i, n_tasks)
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n_tasks)
        return int(perms[epoch][offset])

    return index


def pass_maj(sampled: list[Sample], k: int) -> tuple[float, float]:
    """pass@k (any of k correct) and maj@k (the most frequent answer is correct), per task.

    maj@k votes on each sample's normalised answer (`Sample.answer`, the verifier's extraction),
    not on the whole text: two chains of thought reaching the same answer are one vote for it. A
    sample with no answer does not vote (a task where none has one is not a majority hit); a tie
    goes to the answer whose first vote came first in the samples' order.
    """
    by_task: dict[str, list[Sample]] = {}
    for s in sampled:
        by_task.setdefault(s.task_id, []).append(s)
    passed = majority = 0
    for group in by_task.values():
        passed += any(s.correct for s in group)
        votes: dict[str, list[Sample]] = {}  # insertion-ordered: max() keeps the earliest of a tie
        for s in group:
            if s.answer is not None:
                votes.setdefault(s.answer, []).append(s)
        if votes:
            majority += max(votes.values(), key=len)[0].correct
    n = max(len(by_task), 1)
    return passed / n, majority / n


def load_tasks(spec: api.ReasoningRunSpec, tokenizer) -> tuple[list[data.Task], list[data.Task]]:
    """The training and held-out tasks. Before any step is spent: a prompt longer than
    `algorithm.maxPromptTokens` is an error naming it, never a prompt cut short."""
    ds, seed = spec.dataset, spec.algorithm.seed
    tasks = data.load_tasks(ds, ds.split, seed, limit=ds.max_prompts)
    held_out = data.load_tasks(ds, ds.eval_split, seed, limit=ds.eval_size)
    prompting.check_lengths(tokenizer, spec, [(ds.split, tasks), (ds.eval_split, held_out)])
    return tasks, held_out


def run(spec: api.ReasoningRunSpec, name: str, namespace: str, run_dir: Path, metrics_port: int | None,
        metrics_addr: str = "127.0.0.1", export_dir: Path | None = None) -> int:
    """Trains to `algorithm.maxSteps` (0) or until SIGTERM/SIGINT (130, after a checkpoint)."""
    started = time.monotonic()  # a local run's GPUs are held from here (`Reporter`'s gpu_seconds)
    rank, world = dist.get_rank(), dist.get_world_size()
    algo = spec.algorithm
    stop = Stop()
    fleet = reporter = None
    # the first rank of each other node (trainer pod) serves its GPUs' NVML metrics; rank 0 serves all the rest
    first_on_node = os.environ.get("LOCAL_RANK", "0") == "0"
    cuda_metrics_port = (metrics_port if rank and first_on_node and metrics_port is not None
                         and torch.cuda.is_available() and spec.trainer.gpus_per_replica else None)
    if rank == 0:
        import ray

        from zeroth.rollout import fleet as fleets

        engines = spec.rollout.replicas * spec.rollout.engines_per_replica()

        if not ray.is_initialized():
            fleets.connect(engines)  # on a cluster RAY_ADDRESS names the run's Ray head
        stop.install()
        model_path = models.resolve(spec.model)  # every rank waited for it before the process group began
        fleet = fleets.Fleet(spec, model_path, engines, labels={"run": name, "namespace": namespace})
    model_path = _broadcast(model_path if rank == 0 else None)
    batch_size = algo.prompts_per_step * algo.group_size
    if batch_size % world or (algo.prompts_per_step % world):
        raise SystemExit(f"spec.algorithm.promptsPerStep ({algo.prompts_per_step}) must be divisible by trainer.replicas ({world})")
    policy = Policy(spec, model_path, batch_size // world)
    ckpt_dir = run_dir / "checkpoints"
    found = _resume(policy, ckpt_dir)
    state = found or ckpt.TrainerState()
    torch.manual_seed(algo.seed + state.step)

    if rank == 0:
        from zeroth.trainer.report import Reporter, local_gpus
        from zeroth.trainer.status import StatusWriter

        tasks, held_out = load_tasks(spec, policy.tokenizer)
        order = data_order(len(tasks), algo.seed)

        def prompts(cursor: int, n: int) -> list[dict[str, Any]]:
            return [_task(tasks[order(i)]) for i in range(cursor, cursor + n)]

        def informative(rewards: list[float]) -> bool:
            return not bool(grpo.all_equal_groups(torch.tensor(rewards), len(rewards))[0])

        fleet.cursor = state.cursor
        # what this machine's ranks and rollout actors hold (None on a cluster: the operator counts)
        gpus = local_gpus(world if policy.engine.device.type == "cuda" else 0, engines * spec.rollout.gpus_per_engine(),
                          torch.cuda.device_count())
        reporter = Reporter(run_dir, name, namespace, spec, metrics_port, metrics_addr, export_dir,
                            StatusWriter.from_environment(), gpus=gpus, started=started)  # None off a cluster
        if found:
            reporter.checkpoint(state.step, written=False)  # the newest complete checkpoint is the one resumed from
    sync_seconds, sync_bytes = _publish(policy, fleet, state.weights_version)
    if rank == 0:
        reporter.compute(policy.parameters, world, policy.peak_flops, fleet.metrics_endpoints())
    elif cuda_metrics_port is not None:
        _serve_gpu_metrics(name, namespace, cuda_metrics_port, metrics_addr)
    if rank == 0 and state.step == 0:
        _evaluate(fleet, reporter, held_out, spec, 0)  # the base model, for the plot and the record

    while state.step < algo.max_steps:
        t0 = time.perf_counter()
        if rank == 0:
            samples = fleet.batch(state.step, prompts, informative)
            rewards = torch.tensor([s.reward for s in samples])
            if algo.overlong.buffer_tokens:
                lengths = torch.tensor([len(s.completion_ids) for s in samples])
                rewards = rewards + grpo.overlong_penalty(lengths, algo.max_response_tokens, algo.overlong.buffer_tokens,
                                                          algo.overlong.penalty)
            adv = grpo.group_advantages(rewards, algo.group_size, algo.scale_rewards, algo.only_positive_advantages)
            groups = len(samples) // algo.group_size
            per = groups // world
            shards = [(samples[r * per * algo.group_size:(r + 1) * per * algo.group_size],
                       adv[r * per * algo.group_size:(r + 1) * per * algo.group_size]) for r in range(world)]
            # dapo's global token mean counts the loss tokens: filtered overlong samples have none
            tokens = sum(len(s.completion_ids) for s in samples if not (algo.overlong.filter and s.truncated))
            payload = [shards, tokens, stop.requested]
        else:
            payload = [None, 0, False]
        dist.broadcast_object_list(payload, src=0)
        shards, tokens, stopping = payload
        my_samples, my_adv = shards[rank]
        t_gen = time.perf_counter() - t0
        stats = policy.train_step(my_samples, my_adv, tokens, weights_version=state.weights_version)
        gathered = [None] * world
        dist.all_gather_object(gathered, stats)
        state.step += 1
        state.weights_version += 1
        sync_seconds, sync_bytes = _publish(policy, fleet, state.weights_version)
        if rank == 0:
            step_seconds = time.perf_counter() - t0
            record = _record(state, samples, gathered, algo, step_seconds, t_gen, sync_seconds)
            record["weight_sync_bytes"] = sync_bytes
            record.update(fleet.last_draw)  # what dynamic sampling drew before dropping groups
            record.update(fleet.membership())  # the rollout fleet follows its pods (kubectl scale)
            record["worker_queue_depth"] = fleet.queue_depths()
            reporter.step(record, samples)
            if record["rollout_workers_joined"] or record["rollout_workers_lost"]:
                reporter.targets(fleet.metrics_endpoints())
        stopping = _broadcast(stop.requested if rank == 0 else None)
        last = state.step >= algo.max_steps
        if rank == 0 and (last or (spec.eval.every_steps and state.step % spec.eval.every_steps == 0)):
            _evaluate(fleet, reporter, held_out, spec, state.step)
        if last or stopping or state.step % spec.checkpoint.every_steps == 0:
            _save(policy, state, fleet, ckpt_dir, spec.checkpoint.keep)
            if rank == 0:
                reporter.checkpoint(state.step)
        if rank == 0:
            reporter.plot(force=last or stopping)
        if stopping:
            return 130
    _export_model(policy, run_dir / "model")
    return 0


def _export_model(policy: Policy, directory: Path) -> None:
    """The trained policy as a Hugging Face model folder (`from_pretrained` loads it), written atomically.

    The last step's checkpoint is on disk before this runs: when the write fails (a full disk), the
    partial folder is removed and every rank exits with one line naming the path and the way out
    (`zeroth run --resume` loads that checkpoint and exports again)."""
    import errno
    import shutil

    weights = policy.state_dict(keep=dist.get_rank() == 0)  # every rank takes part (ZeRO-3 gathers)
    failure = None
    if dist.get_rank() == 0:
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            policy.engine.module.save_pretrained(tmp, state_dict=weights)
            policy.tokenizer.save_pretrained(tmp)
            shutil.rmtree(directory, ignore_errors=True)
            tmp.rename(directory)
        except Exception as e:  # noqa: BLE001 - safetensors reports a full disk as its own error, not OSError
            shutil.rmtree(tmp, ignore_errors=True)
            full = getattr(e, "errno", None) == errno.ENOSPC or f"os error {errno.ENOSPC}" in str(e)
            failure = (f"exporting the trained model to {directory} failed: {type(e).__name__}: {e}. "
                       f"{'The disk is full: free space on it' if full else 'Fix the cause'}, then run "
                       f"`zeroth run --resume {directory.parent}`: it loads the last checkpoint and writes the model")
    failure = _broadcast(failure)
    if failure:
        raise SystemExit(failure)


def _task(t: data.Task) -> dict[str, Any]:
    return {"id": t.id, "prompt": t.prompt, "gold": t.gold}


# Set (to 1), rank 0 checks after every publish that each rollout worker's weights equal the
# trainer's (by checksum), prints a line saying so, and fails the run when one differs: for
# bench/gpu_check.py and debugging; it costs a checksum of the whole model per step.
VERIFY_VAR = "ZEROTH_VERIFY_WEIGHTS"


def _publish(policy: Policy, fleet, version: int) -> tuple[float, int]:
    """Weights `version` to the rollout fleet (rank 0); seconds it took to send them, and their bytes."""
    if fleet is None and policy.spec.trainer.deepspeed.zero_stage != 3:
        return 0.0, 0  # only ZeRO-3's gathers need every rank; below it rank 0 holds whole weights
    weights = policy.state_dict(keep=fleet is not None)  # every rank takes part (ZeRO-3 gathers)
    if fleet is None:
        return 0.0, 0
    seconds = fleet.publish(version, weights)
    if os.environ.get(VERIFY_VAR, "") not in ("", "0"):
        wrong = fleet.verify(weights)
        if wrong:
            raise RuntimeError(f"after publishing weights version {version}, rollout weights differ from the "
                               "trainer's: " + "; ".join(wrong))
        print(f"weights version {version} verified: {len(fleet.workers)} rollout workers hold the trainer's "
              f"weights ({type(fleet.sync).__name__}, {seconds:.3f} s)", flush=True)
    return seconds, sum(t.numel() * t.element_size() for t in weights.values())


def _serve_gpu_metrics(name: str, namespace: str, port: int, addr: str) -> None:
    """A trainer rank other than 0, first on its node: /metrics with its node's GPUs (NVML), the one
    thing it knows that rank 0 does not."""
    from prometheus_client import CollectorRegistry

    from zeroth import metrics
    from zeroth.gpus import GpuCollector

    registry = CollectorRegistry()
    registry.register(GpuCollector({"run": name, "namespace": namespace}))
    metrics.serve(registry, str(port), addr)


def _resume(policy: Policy, directory: Path) -> ckpt.TrainerState | None:
    """Loads the newest complete checkpoint (weights, optimizer, scheduler, RNGs) into `policy` and
    returns its trainer state; None when there is none. Directories without the marker are ignored."""
    found = ckpt.latest(directory)
    if not found:
        return None
    tag, state = found
    policy.load(str(directory), tag)
    ckpt.restore_rng(state.rng)
    state.restarts += 1
    return state


def _save(policy: Policy, state: ckpt.TrainerState, fleet, directory: Path, keep: int) -> None:
    if fleet is not None:
        state.cursor = fleet.resume_cursor()
    state.cursor = _broadcast(state.cursor if dist.get_rank() == 0 else None)
    state.rng = ckpt.rng_state()
    policy.save(str(directory), ckpt.tag(state.step), {"step": state.step})
    dist.barrier()  # every rank's shards are on disk before the marker makes the checkpoint real
    if dist.get_rank() == 0:
        ckpt.mark_complete(directory, state)
        ckpt.prune(directory, keep)
    dist.barrier()


def _record(state, samples: list[Sample], gathered: list[dict[str, float]], algo, step_seconds: float,
            gen_seconds: float, sync_seconds: float) -> dict[str, Any]:
    rewards = np.array([s.reward for s in samples])
    lengths = np.array([len(s.completion_ids) for s in samples])
    all_equal = grpo.all_equal_groups(torch.tensor(rewards), algo.group_size)
    # the ranks' stats: means averaged; a largest (logprob_mismatch_max) is the largest of any rank's,
    # which an average over 8 ranks would dilute 8 times
    mean = {k: float((np.max if k.endswith("_max") else np.mean)([g[k] for g in gathered])) for k in gathered[0]}
    generated = int(lengths.sum())
    by_verifier: dict[str, float] = {}
    for name in samples[0].scores:
        by_verifier[name] = float(np.mean([s.scores[name] for s in samples]))
    return {
        "step": state.step,
        "time": time.time(),
        "weights_version": state.weights_version,
        # which prompts the step trained on, so a resumed run can be compared with an unbroken one
        "tasks_sha": hashlib.sha256(",".join(s.task_id for s in samples[::algo.group_size]).encode()).hexdigest()[:16],
        "samples": len(samples),  # the step's batch: the same whatever the fleet's size
        "reward_mean": float(rewards.mean()),
        "reward_by_verifier": by_verifier,
        "accuracy": float(np.mean([s.correct for s in samples])),
        "all_equal_groups_fraction": float(all_equal.float().mean()),
        "response_length_mean": float(lengths.mean()),
        "truncated_fraction": float(np.mean([s.truncated for s in samples])),
        "staleness_max": int(max(state.weights_version - 1 - s.version for s in samples)),
        "generated_tokens": generated,  # with dynamic sampling, `fleet.last_draw`'s count replaces it
        "trained_tokens": generated,
        # over the step's wall time, not the wait for samples: with maxStaleness >= 1 the batch was
        # generated during the previous step, the wait is near 0, and tokens/wait would read huge
        "tokens_per_second": generated / max(step_seconds, 1e-9),
        "step_seconds": step_seconds,
        "generation_seconds": gen_seconds,
        "weight_sync_seconds": sync_seconds,
        **mean,
    }


def _evaluate(fleet, reporter, held_out: list[data.Task], spec: api.ReasoningRunSpec, step: int) -> None:
    k = spec.eval.samples_per_prompt
    greedy, sampled = fleet.evaluate([_task(t) for t in held_out], k, step)
    pass_k, maj_k = pass_maj(sampled, k)
    reporter.evaluation({
        "step": step, "eval_greedy": float(np.mean([s.correct for s in greedy])),
        "eval_pass@k": pass_k, "eval_maj@k": maj_k, "eval_k": k, "eval_size": len(held_out),
    })
