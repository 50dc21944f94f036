"""The rollout fleet: Ray actors running `RolloutWorker`, fed prompts and weights by the trainer.

Synchronous and asynchronous training share one code path: `Fleet.batch(step)` keeps requests
for steps `step .. step + maxStaleness` in flight, each submitted right after the newest weights
were published, so a sample's staleness (trainer version minus its version) never exceeds
`maxStaleness`. With `maxStaleness: 0` only the current step's request exists: on-policy.
Ray runs an actor's calls in submission order, so a request submitted after `publish(v)` is
generated with weights `v` (or newer).

Placement: each rollout actor requests one unit of the custom resource `ROLLOUT_RESOURCE`. On a
cluster every rollout pod advertises exactly one (`ray start --resources='{"zeroth-rollout": 1}'`)
and nothing else does, so there is one actor per rollout pod; locally `connect` gives the one Ray
node as many units as there are workers, and the same code runs.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zeroth import api
from zeroth.rollout.weights import ObjectStoreSync
from zeroth.rollout.worker import RolloutWorker, Sample


ROLLOUT_RESOURCE = api.ROLLOUT_RESOURCE  # the operator's rollout pods advertise it under this name


def connect(workers: int) -> None:
    """Ray for the trainer (rank 0, the driver). With RAY_ADDRESS (a cluster), joins the run's Ray
    cluster; without, starts Ray here with one CPU and one rollout slot per worker."""
    import ray

    address = os.environ.get("RAY_ADDRESS")
    options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if not address:
        # "local": a new Ray of our own, whatever another Ray on this host left in /tmp/ray
        ray.init(address="local", num_cpus=max(workers, 1), resources={ROLLOUT_RESOURCE: workers}, **options)
        return
    # A driver connects through a raylet on its own host (Ray finds it among the host's processes),
    # and a trainer pod runs none: join as a node offering no CPUs, GPUs or rollout slots, so
    # nothing is ever scheduled on it.
    if not _local_raylet():
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "start", f"--address={address}", "--num-cpus=0",
                        "--num-gpus=0", "--disable-usage-stats"], check=True)
    ray.init(address=address, **options)


def _local_raylet() -> bool:
    try:
        from ray._private.services import find_node_ids  # what ray.init itself looks for (Ray 2.60)
    except ImportError:
        return False
    return bool(find_node_ids())


def sampling_seed(seed: int, *parts: int) -> int:
    """A seed for one request on one worker, stable across processes and restarts."""
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass
class Request:
    step: int
    cursor: int  # first prompt of this request in the data order
    version: int  # weights version published before it was submitted
    tasks: list[dict[str, Any]]
    futures: list[Any]
    shards: list[list[int]]  # task indices per worker


class Fleet:
    def __init__(self, spec: api.ReasoningRunSpec, model_path: str, workers: int, cpus_per_worker: float = 1.0):
        import ray

        self.spec = spec
        actor = ray.remote(RolloutWorker).options(num_cpus=cpus_per_worker, num_gpus=spec.rollout.gpus_per_replica,
                                                  resources={ROLLOUT_RESOURCE: 1}, max_concurrency=1)
        dumped = spec.model_dump(by_alias=True, mode="json")
        self.workers = [actor.remote(model_path, dumped, i) for i in range(workers)]
        self.sync = ObjectStoreSync(self.workers)
        self.in_flight: dict[int, Request] = {}
        self.version = -1
        self.cursor = 0  # the next prompt a new request reads
        self.last_draw: dict[str, float] = {}  # dynamic sampling's draw for the last batch

    def publish(self, version: int, state_dict) -> float:
        """Sends weights `version` to every worker and waits until all applied them; returns seconds."""
        import time

        import ray

        t0 = time.perf_counter()
        ray.get(self.sync.publish(version, state_dict))
        self.version = version
        return time.perf_counter() - t0

    def checksums(self) -> list[str]:
        import ray

        return ray.get([w.checksum.remote() for w in self.workers])

    def _submit(self, step: int, cursor: int, tasks: list[dict[str, Any]], group_size: int, greedy: bool = False,
                temperature: float | None = None) -> Request:
        n = len(self.workers)
        shards = [list(range(i, len(tasks), n)) for i in range(n)]
        futures = [
            w.generate.remote([tasks[j] for j in shard], group_size, sampling_seed(self.spec.algorithm.seed, step, i), greedy,
                              temperature)
            for i, (w, shard) in enumerate(zip(self.workers, shards))
            if shard
        ]
        return Request(step, cursor, self.version, tasks, futures, [s for s in shards if s])

    @staticmethod
    def _collect(req: Request) -> list[Sample]:
        """Samples in task order, each group contiguous, `group` renumbered to the task's index."""
        import ray

        by_task: dict[int, list[Sample]] = {}
        for shard, samples in zip(req.shards, ray.get(req.futures)):
            for s in samples:
                s.group = shard[s.group]
                by_task.setdefault(s.group, []).append(s)
        return [s for g in sorted(by_task) for s in by_task[g]]

    def batch(self, step: int, prompts: Callable[[int, int], list[dict[str, Any]]],
              informative: Callable[[list[float]], bool] | None = None) -> list[Sample]:
        """The samples for `step`. `prompts(cursor, n)`: the n tasks from `cursor` in the data order;
        `informative(group_rewards)`: whether a group carries signal (dynamic sampling keeps those)."""
        algo = self.spec.algorithm
        for s in range(step, step + algo.max_staleness + 1):
            if s not in self.in_flight:
                tasks = prompts(self.cursor, algo.prompts_per_step)
                self.in_flight[s] = self._submit(s, self.cursor, tasks, algo.group_size)
                self.cursor += len(tasks)
        samples = self._collect(self.in_flight.pop(step))
        return self._dynamic(step, samples, prompts, informative) if algo.dynamic_sampling else samples

    def _dynamic(self, step: int, samples: list[Sample], prompts, informative, rounds: int = 4) -> list[Sample]:
        """DAPO dynamic sampling: drop groups whose rewards are all equal and refill from new prompts.
        The step's size stays fixed: when refills run out, dropped groups (zero advantage) fill in."""
        G, want = self.spec.algorithm.group_size, self.spec.algorithm.prompts_per_step
        groups = [samples[i:i + G] for i in range(0, len(samples), G)]
        keep = [g for g in groups if informative([s.reward for s in g])]
        dropped = [g for g in groups if not informative([s.reward for s in g])]
        first_dropped, drawn = len(dropped), len(groups)
        for r in range(rounds):
            if len(keep) >= want:
                break
            tasks = prompts(self.cursor, want - len(keep))
            request = self._submit(step * 1000 + r + 1, self.cursor, tasks, G)
            self.cursor += len(tasks)
            drawn += len(tasks)
            more = self._collect(request)
            for i in range(0, len(more), G):
                g = more[i:i + G]
                (keep if informative([s.reward for s in g]) else dropped).append(g)
        chosen = (keep + dropped)[:want]
        self.last_draw = {"prompts_drawn": drawn, "all_equal_groups_fraction_drawn": first_dropped / max(len(groups), 1)}
        return [s for g in chosen for s in g]

    def resume_cursor(self) -> int:
        """Where a restarted run must resume reading prompts: the oldest request not yet trained on."""
        return min((r.cursor for r in self.in_flight.values()), default=self.cursor)

    def evaluate(self, tasks: list[dict[str, Any]], samples_per_prompt: int, step: int) -> tuple[list[Sample], list[Sample]]:
        """Greedy samples (one per task) and `samples_per_prompt` sampled ones, for pass@k and maj@k."""
        greedy = self._collect(self._submit(-1 - step, 0, tasks, 1, greedy=True))
        sampled = self._collect(self._submit(-1 - step, 0, tasks, samples_per_prompt,
                                             temperature=self.spec.eval.temperature))
        return greedy, sampled
