"""A rollout worker: holds the policy at a known weights version, generates G samples per prompt,
verifies them, and returns token ids, behaviour log-probs, rewards and the version used.

The class is plain Python so it can be tested without Ray; `zeroth.rollout.fleet` wraps it with
`ray.remote` and places one per rollout slot (local Ray here, rollout pods on a cluster).
Generation is Hugging Face `generate` (CPU or GPU); vLLM implements the same `Generator` shape.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from zeroth import api
from zeroth.rollout import verifiers
from zeroth.rollout.weights import checksum, load_numpy


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RolloutWorker:
    def __init__(self, model_path: str, spec: dict[str, Any], index: int = 0):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.spec = api.ReasoningRunSpec.model_validate(spec)
        self.index = index
        dtype = getattr(torch, self.spec.model.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, revision=self.spec.model.revision,
                                                       trust_remote_code=self.spec.model.trust_remote_code)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(model_path, revision=self.spec.model.revision, dtype=dtype,
                                                          trust_remote_code=self.spec.model.trust_remote_code)
        self.model.eval()
        self.version = 0
        self.stop_ids = self._stop_ids()

    def _stop_ids(self) -> list[int]:
        ids = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        # A verifier reading only the first line makes everything after the newline dead weight.
        if any(v.answer.mode == "line" for v in self.spec.verifiers):
            newline = self.tokenizer.convert_tokens_to_ids("\n")
            if newline is not None and newline != self.tokenizer.unk_token_id:
                ids.append(newline)
        return ids

    # ------------------------------------------------------------------------------- weights

    def set_weights(self, version: int, weights: list[Any]) -> int:
        """Applies weights `version` (the arrays, or a one-element list of them as Ray delivers)."""
        arrays = weights[0] if isinstance(weights, list) else weights
        if not isinstance(arrays, dict):  # a Ray ObjectRef inside the list: fetch it here
            import ray

            arrays = ray.get(arrays)
        load_numpy(self.model, arrays)
        self.version = version
        return version

    def checksum(self) -> str:
        return checksum(self.model.state_dict())

    def get_version(self) -> int:
        return self.version

    # ---------------------------------------------------------------------------- generation

    @torch.no_grad()
    def generate(self, tasks: list[dict[str, Any]], group_size: int, seed: int, greedy: bool = False,
                 temperature: float | None = None) -> list[Sample]:
        """G samples for each task ({"id", "prompt", "gold"}), verified. Deterministic given seed.
        `temperature` overrides the training temperature (evaluation samples at spec.eval's)."""
        algo = self.spec.algorithm
        torch.manual_seed(seed)
        enc = self.tokenizer([t["prompt"] for t in tasks], return_tensors="pt", padding=True, truncation=True,
                             max_length=algo.max_prompt_tokens)
        out = self.model.generate(
            **enc,
            do_sample=not greedy,
            temperature=(temperature or algo.temperature) if not greedy else None,
            top_p=algo.top_p if not greedy else None,
            top_k=0 if not greedy else None,
            max_new_tokens=algo.max_response_tokens,
            num_return_sequences=group_size,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
        prompt_len = enc["input_ids"].shape[1]
        gen = out.sequences[:, prompt_len:]
        if gen.shape[1] == 0:
            steps = torch.zeros(gen.shape[0], 0)
        else:
            # scores are the processed logits (temperature applied): the sampling distribution
            logp = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)
            steps = logp.gather(-1, gen.unsqueeze(-1)).squeeze(-1)
        samples = []
        for row in range(gen.shape[0]):
            g = row // group_size
            task = tasks[g]
            ids, lps = [], []
            stopped = False
            for t in range(gen.shape[1]):
                tok = int(gen[row, t])
                ids.append(tok)
                lps.append(float(steps[row, t]))
                if tok in self.stop_ids:
                    stopped = True
                    break
            mask = enc["attention_mask"][g].bool()
            prompt_ids = enc["input_ids"][g][mask].tolist()
            completion = self.tokenizer.decode(ids, skip_special_tokens=True)
            samples.append(self._verify(task, g, prompt_ids, ids, lps, completion, truncated=not stopped))
        return samples

    def _verify(self, task, g, prompt_ids, ids, lps, completion, truncated) -> Sample:
        reward, results = verifiers.reward(self.spec.verifiers, completion, task["gold"])
        return Sample(
            task_id=task["id"], group=g, prompt_ids=prompt_ids, completion_ids=ids, logprobs=lps,
            completion=completion, reward=reward, scores={r.name: r.score for r in results},
            correct=verifiers.is_correct(results), truncated=truncated, version=self.version,
            verifier_seconds={r.name: r.seconds for r in results},
            verifier_timeouts=[r.name for r in results if r.timed_out],
        )

