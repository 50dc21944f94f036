"""A rollout worker: holds the policy at a known weights version, generates G samples per prompt,
verifies them, and returns token ids, behaviour log-probs, rewards and the version used.

The class is plain Python so it can be tested without Ray; `zeroth.rollout.fleet` wraps it with
`ray.remote` and places one per rollout slot (local Ray here, rollout pods on a cluster).
Generation is an `Engine` (`zeroth.rollout.generation`): Hugging Face `generate`, or vLLM on GPUs.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from zeroth import api, gpus, metrics
from zeroth.rollout import prompts as prompting
from zeroth.rollout import verifiers
from zeroth.rollout.generation import make_engine


@dataclass
class Sample:
    """One completion of one prompt, as the trainer needs it."""

    task_id: str
    group: int  # index of the prompt within the request; samples of a group are contiguous
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]  # behaviour log-probs of completion_ids under `version`, at the sampling temperature
    completion: str
    reward: float
    scores: dict[str, float]
    correct: bool
    truncated: bool  # stopped at maxResponseTokens, not at a stop token
    version: int
    verifier_seconds: dict[str, float] = field(default_factory=dict)
    verifier_timeouts: list[str] = field(default_factory=list)
    answer: str | None = None  # the normalised answer maj@k votes on (`verifiers.answer_key`); None: no vote

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# what a worker exports itself, where the samples are made and scored
METRICS = metrics.exported_by("worker")


def _address(addr: str | None) -> str:
    """Where others reach a server listening on `addr`: this host's address for every address (a
    pod's IP), else `addr` itself (loopback when unset)."""
    if addr not in ("0.0.0.0", ""):
        return addr or "127.0.0.1"
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:  # a host name nothing resolves: Prometheus finds a pod by its IP anyway
        return "127.0.0.1"


class RolloutWorker:
    def __init__(self, model_path: str, spec: dict[str, Any], index: int = 0, labels: dict[str, str] | None = None,
                 serve_metrics: bool = False):
        """`labels`: the run's metric labels (run, namespace); `serve_metrics`: serve /metrics (a Ray
        actor does, on the port `metrics.PORTS_VAR` allows; a test of the plain class reads
        `self.metrics`)."""
        # The model is loaded on first use, not here: creating the fleet returns at once, and the
        # workers' start (imports, Ray) overlaps the trainer's DeepSpeed set-up.
        import transformers  # noqa: F401 - the slow import, done now

        self.spec = api.ReasoningRunSpec.model_validate(spec)
        self.index = index
        self.model_path = model_path
        self._engine = None
        self.version = 0
        self.metrics = metrics.Metrics(names=METRICS)
        self.labels = {"run": "", "namespace": "", **(labels or {})}
        self.endpoint = None
        if serve_metrics:
            addr = os.environ.get(metrics.ADDR_VAR)
            port = metrics.serve(self.metrics.registry, os.environ.get(metrics.PORTS_VAR), addr)
            self.endpoint = f"{_address(addr)}:{port}"
            # the GPUs Ray gave this actor (CUDA_VISIBLE_DEVICES), from NVML; none on a CPU
            self.metrics.registry.register(gpus.GpuCollector({k: self.labels[k] for k in ("run", "namespace")}))
        self._m("worker_weights_version").set(0)
        self._m("worker_generated_tokens")
        self._m("worker_request_seconds")  # a histogram at 0 too: rate() sees the first request's rise
        for verifier in self.spec.verifiers:  # counted from 0, not absent until a first timeout or error
            for name in ("verifier_timeouts", "verifier_errors", "verifier_seconds"):
                self._m(name, verifier=verifier.name)
        if any(v.name == "math" for v in self.spec.verifiers):
            import threading

            from zeroth.rollout.verifiers import math_answers

            # the math workers' zygote imports sympy while the model loads, not during the first step
            threading.Thread(target=math_answers.pool().warm_up, name="math-warm-up", daemon=True).start()

    def _m(self, name: str, **extra: str):
        labels = {**self.labels, "worker": str(self.index)} if "worker" in metrics.BY_NAME[name].labels else self.labels
        return self.metrics[name].labels(**labels, **extra)

    def metrics_endpoint(self) -> str | None:
        """host:port of this worker's /metrics (None when it serves none)."""
        return self.endpoint

    def _load(self) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, revision=self.spec.model.revision,
                                                       trust_remote_code=self.spec.model.trust_remote_code)
        self.tokenizer.padding_side = "left"
        self.stop_ids, self.stop_strings = self._stops()
        self._engine = make_engine(self.model_path, self.spec, self.tokenizer, self.stop_ids, self.stop_strings)

    @property
    def engine(self):
        if self._engine is None:
            self._load()
        return self._engine

    def _stops(self) -> tuple[list[int], list[str]]:
        """Stop token ids (EOS, and each `rollout.stop` entry that is one special token of the
        tokenizer, like `<|im_end|>`) and stop strings (the other entries)."""
        ids = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        # A verifier reading only the first line makes everything after the newline dead weight.
        if any(v.answer.mode == "line" for v in self.spec.verifiers):
            newline = self.tokenizer.convert_tokens_to_ids("\n")
            if newline is not None and newline != self.tokenizer.unk_token_id:
                ids.append(newline)
        special = set(self.tokenizer.all_special_tokens) | set(self.tokenizer.get_added_vocab())
        strings = []
        for stop in self.spec.rollout.stop:
            if stop in special:  # decoded text skips special tokens: a string match would never fire
                token = self.tokenizer.convert_tokens_to_ids(stop)
                if token not in ids:
                    ids.append(token)
            elif stop not in strings:
                strings.append(stop)
        return ids, strings

    # ------------------------------------------------------------------------------- weights

    def set_weights(self, version: int, weights: list[Any]) -> int:
        """Applies weights `version` (the arrays, or a one-element list of them as Ray delivers)."""
        arrays = weights[0] if isinstance(weights, list) else weights
        if not isinstance(arrays, dict):  # a Ray ObjectRef inside the list: fetch it here
            import ray

            arrays = ray.get(arrays)
        self.engine.load_weights(arrays)
        self.version = version
        self._m("worker_weights_version").set(version)
        return version

    def prepare(self) -> dict[str, int]:
        """Loads the engine now (the first call to a new worker); its weights version and how many
        ranks its engine takes in a broadcast group."""
        return {"version": self.version, "ranks": self.engine.ranks}

    def join_weights(self, group: dict[str, Any], first_rank: int) -> None:
        """Joins the trainer's broadcast group (`zeroth.rollout.broadcast`), as ranks from `first_rank`."""
        self.engine.join_weights(group, first_rank)

    def receive_weights(self, bucket: dict[str, Any]) -> int | None:
        """One bucket of broadcast weights; once the last is in, they are version `bucket["version"]`."""
        version = self.engine.receive_weights(bucket)
        if version is not None:
            self.version = version
            self._m("worker_weights_version").set(version)
        return version

    def checksum(self) -> str:
        return self.engine.checksum()

    def checked(self) -> tuple[str, list[str]]:
        """The checksum and the trainer's weight names it covers (all of them for HF; for vLLM the
        ones it keeps unfused and unsharded)."""
        return self.engine.checked()

    def get_version(self) -> int:
        return self.version

    # ---------------------------------------------------------------------------- generation

    def generate(self, tasks: list[dict[str, Any]], group_size: int, seed: int, greedy: bool = False,
                 temperature: float | None = None) -> list[Sample]:
        """G samples for each task ({"id", "prompt", "gold"}), verified. Deterministic given seed.
        `temperature` overrides the training temperature (evaluation samples at spec.eval's)."""
        engine = self.engine  # loads the model and tokenizer on first use
        start = time.perf_counter()
        limit, chat = self.spec.algorithm.max_prompt_tokens, self.spec.dataset.chat_template
        prompts = prompting.encode(self.tokenizer, [t["prompt"] for t in tasks], chat)
        overs = [(t["id"], len(ids)) for t, ids in zip(tasks, prompts, strict=True) if len(ids) > limit]
        if overs:  # the trainer checks every task at start; this guards any other caller
            raise ValueError(prompting.too_long("in this request", overs, len(tasks), limit))
        samples = []
        for c in engine.generate(prompts, group_size, seed, greedy, temperature):
            completion = self.tokenizer.decode(c.token_ids, skip_special_tokens=True)
            samples.append(self._verify(tasks[c.prompt], c.prompt, prompts[c.prompt], c.token_ids, c.logprobs,
                                        completion, c.truncated))
        self._m("worker_generated_tokens").inc(sum(len(s.completion_ids) for s in samples))
        self._m("worker_request_seconds").observe(time.perf_counter() - start)
        return samples

    def _verify(self, task, g, prompt_ids, ids, lps, completion, truncated) -> Sample:
        reward, results = verifiers.reward(self.spec.verifiers, completion, task["gold"])
        for r in results:
            self._m("verifier_seconds", verifier=r.name).observe(r.seconds)
            if r.timed_out:
                self._m("verifier_timeouts", verifier=r.name).inc()
            elif r.error is not None:
                self._m("verifier_errors", verifier=r.name).inc()
        return Sample(
            task_id=task["id"], group=g, prompt_ids=prompt_ids, completion_ids=ids, logprobs=lps,
            completion=completion, reward=reward, scores={r.name: r.score for r in results},
            correct=verifiers.is_correct(results), truncated=truncated, version=self.version,
            verifier_seconds={r.name: r.seconds for r in results},
            verifier_timeouts=[r.name for r in results if r.timed_out],
            answer=verifiers.answer_key(self.spec.verifiers, completion),
        )
