"""The rollout fleet: Ray actors running `RolloutWorker`, fed prompts and weights by the trainer.

Synchronous and asynchronous training share one code path: `Fleet.batch(step)` keeps requests
for steps `step .. step + maxStaleness` in flight, each submitted right after the newest weights
were published, so a sample's staleness (trainer version minus its version) never exceeds
`maxStaleness`. With `maxStaleness: 0` only the current step's request exists: on-policy.
Ray runs an actor's calls in submission order, so a request submitted after `publish(v)` is
generated with weights `v` (or newer).

Placement: each rollout actor (one generation engine) requests one unit of the custom resource
`ROLLOUT_RESOURCE` and `tensorParallelSize` GPUs. On a cluster every rollout pod advertises one
unit per engine it runs (`gpusPerReplica / tensorParallelSize`, one on CPU) and nothing else does;
locally `connect` gives the one Ray node as many units as there are workers, and the same code runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zeroth import api
from zeroth.rollout import local_ray, weights
from zeroth.rollout.weights import checksum
from zeroth.rollout.worker import RolloutWorker, Sample

log = logging.getLogger(__name__)

ROLLOUT_RESOURCE = api.ROLLOUT_RESOURCE  # the operator's rollout pods advertise it under this name


_local_head = None  # local_ray's process: its stdin pipe stays open while this process lives


def connect(workers: int) -> None:
    """Ray for the trainer (rank 0, the driver). With RAY_ADDRESS (a cluster), joins the run's Ray
    cluster; without, starts a local Ray (`local_ray`) with one CPU and one rollout slot per worker."""
    import ray

    global _local_head
    address = os.environ.get("RAY_ADDRESS")
    options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if not address:
        # a new Ray of our own, outside this rank's process group (local_ray says why)
        if _local_head is not None:
            local_ray.stop(_local_head)
        address, _local_head = local_ray.start(workers)
        ray.init(address=address, **options)
        return
    # A driver connects through a raylet on its own host (Ray finds it among the host's processes),
    # and a trainer pod runs none: join as a node offering no CPUs, GPUs or rollout slots, so
    # nothing is ever scheduled on it. Its raylet runs in a session of its own: torchrun's SIGTERM
    # to this rank's process group (the pod stopping) must not take it down before the checkpoint.
    if not _local_raylet():
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "start", f"--address={address}", "--num-cpus=0",
                        "--num-gpus=0", "--disable-usage-stats"], check=True, start_new_session=True)
    ray.init(address=address, **options)


def shutdown() -> None:
    """Leaves Ray, and stops the local Ray that `connect` started, if it started one."""
    global _local_head
    if "ray" in sys.modules:  # (a rank that never used Ray does not import it to leave it)
        sys.modules["ray"].shutdown()
    if _local_head is not None:
        local_ray.stop(_local_head)
        _local_head = None


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


# A fleet with no worker waits this long for a rollout pod to (re)join before the trainer gives up.
NO_WORKER_SECONDS = 900.0
# A worker gets this long to apply a version (it may first finish a generation in flight), and a
# send that failed for live workers is tried this many times in all.
SYNC_SECONDS = 1800.0
SYNC_ATTEMPTS = 2


def applied_version(result: Any) -> int | None:
    """The version a worker reports applied: a set_weights result, or a broadcast's calls' results
    (join, then one per bucket: the last one's is the version)."""
    if isinstance(result, list):
        return result[-1] if result else None
    return result


@dataclass
class Part:
    """One worker's share of a request: the task indices it generates, with their sampling seed."""
    shard: list[int]
    seed: int
    worker: Any
    future: Any = None


@dataclass
class Request:
    step: int
    cursor: int  # first prompt of this request in the data order
    version: int  # weights version published before it was submitted
    tasks: list[dict[str, Any]]
    group_size: int
    greedy: bool
    temperature: float | None
    parts: list[Part]


class Fleet:
    """The rollout actors, elastic: they follow the Ray nodes that offer a rollout slot.

    `spec.rollout.replicas` actors are created at once, and the first `publish` waits for all of
    them (the operator starts that many rollout pods), so a run's first batches are laid out the
    same way every time. Later, at each batch:
    - a free rollout slot (a rollout pod that joined: `kubectl scale` up, or a replacement) gets a
      new actor, which first loads the newest weights and only then takes requests;
    - an actor whose node went away (scale down, an evicted pod) is dropped when a call to it
      fails, and its share of every request is generated again by a live actor.
    A step's batch is the same size whatever the fleet's size; the trainer never fails because a
    rollout pod went, unless none at all is left for `NO_WORKER_SECONDS`.
    """

    def __init__(self, spec: api.ReasoningRunSpec, model_path: str, workers: int, cpus_per_worker: float = 1.0,
                 sync: weights.WeightSync | None = None, labels: dict[str, str] | None = None):
        import ray

        self.spec = spec
        self._actor = ray.remote(RolloutWorker).options(
            num_cpus=cpus_per_worker, num_gpus=spec.rollout.gpus_per_engine(), resources={ROLLOUT_RESOURCE: 1},
            max_concurrency=1, max_restarts=0)
        self._args = (model_path, spec.model_dump(by_alias=True, mode="json"))
        self._labels = labels or {}  # the run's metric labels: each actor serves its own /metrics
        self._created = 0
        self._index: dict[Any, int] = {}  # actor -> its index (the `worker` label of its metrics)
        self.workers = [self._new_actor() for _ in range(workers)]
        self.joining: dict[Any, Any] = {}  # a joining actor's first call (prepare) -> the actor
        self.sync = sync if sync is not None else weights.make_sync(spec)  # the object store, or a broadcast
        self.in_flight: dict[int, Request] = {}
        self.version = -1
        self.cursor = 0  # the next prompt a new request reads
        self.last_draw: dict[str, float] = {}  # dynamic sampling's draw for the last batch
        self.joined = self.lost = self.resubmitted = 0  # since the last membership(), for metrics

    def _new_actor(self) -> Any:
        self._created += 1
        actor = self._actor.remote(*self._args, self._created - 1, self._labels, True)
        self._index[actor] = self._created - 1
        return actor

    def queue_depths(self) -> dict[str, int]:
        """Each live worker (by index, its metrics' `worker` label): request parts submitted to it
        and not yet collected (later steps' requests, with maxStaleness)."""
        depths = {self._index[w]: 0 for w in self.workers}
        for req in self.in_flight.values():
            for part in req.parts:
                if part.worker in self._index and self._index[part.worker] in depths:
                    depths[self._index[part.worker]] += 1
        return {str(i): n for i, n in sorted(depths.items())}

    def metrics_endpoints(self) -> list[str]:
        """host:port of each live worker's /metrics."""
        return [e for w in list(self.workers) if (e := self._get(w.metrics_endpoint.remote(), w)) is not None]

    def publish(self, version: int, state_dict) -> float:
        """Sends weights `version` to every worker and waits until all applied them; returns seconds.
        A worker lost on the way is dropped, one that does not answer in `SYNC_SECONDS` too (killed:
        a broadcast a dead peer stalled may hold it); a send that failed for the others (a
        broadcast that lost a member) is sent again. Workers that join later get these weights first."""
        import time

        from ray.exceptions import GetTimeoutError, RayTaskError

        t0 = time.perf_counter()
        self.sync.put(version, state_dict)
        for _ in range(SYNC_ATTEMPTS):
            failed: list[Exception] = []
            targets = list(self.workers)
            for worker, done in zip(targets, self.sync.send(targets), strict=True):
                try:
                    applied = self._get(done, worker, timeout=SYNC_SECONDS)
                except GetTimeoutError:
                    self._drop(worker)
                except RayTaskError as e:
                    failed.append(e)
                else:
                    if applied is not None and applied_version(applied) != version:  # None: gone, dropped
                        failed.append(RuntimeError(f"a rollout worker ended weights version {version} at {applied!r}"))
            if not failed:
                break
        else:
            raise failed[0]
        self.version = version
        return time.perf_counter() - t0

    def verify(self, state_dict) -> list[str]:
        """Each worker's weights against `state_dict`, by checksum over the names the worker's engine
        keeps as the trainer names them: one line per worker that differs (none: all equal)."""
        wrong = []
        for i, w in enumerate(list(self.workers)):
            found = self._get(w.checked.remote(), w)
            if found is None:
                continue  # gone since
            value, names = found
            want = checksum({n: state_dict[n] for n in names})
            if not names or value != want:
                wrong.append(f"worker {i}: checksum {value[:16]} over {len(names)} tensors, the trainer's {want[:16]}")
        return wrong

    def checksums(self) -> list[str]:
        return [c for w in list(self.workers) if (c := self._get(w.checksum.remote(), w)) is not None]

    def membership(self) -> dict[str, int]:
        """The fleet's size now and its changes since the last call, for the step's record."""
        out = {"rollout_workers": len(self.workers), "rollout_workers_joined": self.joined,
               "rollout_workers_lost": self.lost, "rollout_requests_resubmitted": self.resubmitted}
        self.joined = self.lost = self.resubmitted = 0
        return out

    # ------------------------------------------------------------------------- membership

    def _get(self, future: Any, worker: Any, timeout: float | None = None) -> Any:
        """ray.get of a call to `worker`; None (and the worker dropped) when its actor is gone."""
        import ray
        from ray.exceptions import RayActorError

        try:
            return ray.get(future, timeout=timeout)
        except RayActorError:
            self._drop(worker)
            return None

    def _drop(self, worker: Any) -> None:
        import ray

        if worker in self.workers:
            self.workers.remove(worker)
            self.lost += 1
            ray.kill(worker, no_restart=True)

    def _follow(self) -> None:
        """Joining actors that are ready become workers once they hold the newest weights; each
        free rollout slot gets a joining actor."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        if self.joining:
            ready, _ = ray.wait(list(self.joining), num_returns=len(self.joining), timeout=0)
            for done in ready:
                actor = self.joining.pop(done)
                try:
                    applied = ray.get(done)["version"]  # its engine is loaded: now the newest weights
                    if applied < self.sync.version:
                        applied = applied_version(ray.get(self.sync.send([actor])[0], timeout=SYNC_SECONDS))
                except RayActorError:
                    continue  # its pod went before it was ready
                except (RayTaskError, GetTimeoutError) as e:
                    applied = e
                if applied != self.sync.version:
                    log.warning("a joining rollout worker did not take weights version %d (%s); its slot gets "
                                "another", self.sync.version, applied)
                    ray.kill(actor, no_restart=True)
                    continue
                self.workers.append(actor)
                self.joined += 1
        if not self.joining and self.sync.version >= 0:
            # a spurious count (resource views lag) only makes an actor wait for the next free slot
            for _ in range(int(ray.available_resources().get(ROLLOUT_RESOURCE, 0))):
                actor = self._new_actor()
                self.joining[actor.prepare.remote()] = actor

    def _live(self) -> list[Any]:
        """The workers, waiting (up to NO_WORKER_SECONDS) for one to join when none is left."""
        import time

        import ray

        deadline = time.monotonic() + NO_WORKER_SECONDS
        self._follow()
        while not self.workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no rollout worker for {NO_WORKER_SECONDS:.0f} s: every rollout pod is gone and "
                                   "none joined. Check the run's rollout pods (kubectl get pods -l "
                                   "zeroth.dev/role=rollout) and the Ray head's log")
            if self.joining:
                ray.wait(list(self.joining), num_returns=1, timeout=5.0)
            else:
                time.sleep(1.0)
            self._follow()
        return self.workers

    # ------------------------------------------------------------------------- requests

    def _submit(self, step: int, cursor: int, tasks: list[dict[str, Any]], group_size: int, greedy: bool = False,
                temperature: float | None = None) -> Request:
        workers = self._live()
        n = len(workers)
        parts = [Part(list(range(i, len(tasks), n)), sampling_seed(self.spec.algorithm.seed, step, i), w)
                 for i, w in enumerate(workers) if i < len(tasks)]
        req = Request(step, cursor, self.version, tasks, group_size, greedy, temperature, parts)
        for part in parts:
            self._start(req, part)
        return req

    @staticmethod
    def _start(req: Request, part: Part) -> None:
        part.future = part.worker.generate.remote([req.tasks[j] for j in part.shard], req.group_size, part.seed,
                                                  req.greedy, req.temperature)

    def _collect(self, req: Request) -> list[Sample]:
        """Samples in task order, each group contiguous, `group` renumbered to the task's index. A
        part whose worker was lost is generated again, with the same seed, by a live worker."""
        by_task: dict[int, list[Sample]] = {}
        for k, part in enumerate(req.parts):
            while (samples := self._get(part.future, part.worker)) is None:
                workers = self._live()
                part.worker = workers[k % len(workers)]
                self._start(req, part)
                self.resubmitted += 1
            for s in samples:
                s.group = part.shard[s.group]
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
        generated = list(samples)  # every sample made for this step, dropped groups' too
        for r in range(rounds):
            if len(keep) >= want:
                break
            tasks = prompts(self.cursor, want - len(keep))
            request = self._submit(step * 1000 + r + 1, self.cursor, tasks, G)
            self.cursor += len(tasks)
            drawn += len(tasks)
            more = self._collect(request)
            generated += more
            for i in range(0, len(more), G):
                g = more[i:i + G]
                (keep if informative([s.reward for s in g]) else dropped).append(g)
        chosen = (keep + dropped)[:want]
        self.last_draw = {"prompts_drawn": drawn, "all_equal_groups_fraction_drawn": first_dropped / max(len(groups), 1),
                          "informative_groups_drawn": len(keep),
                          # what the fleet generated, not just what the step keeps: the tokens counter
                          # and the generation FLOPs count the dropped groups too
                          "generated_tokens": sum(len(s.completion_ids) for s in generated),
                          "generated_sequence_tokens": sum(len(s.prompt_ids) + len(s.completion_ids) for s in generated)}
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
