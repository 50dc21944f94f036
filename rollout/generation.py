"""Generation engines behind one interface: Hugging Face `generate` (CPU or GPU) and vLLM (GPU).

An engine turns prompt token ids into G completions each, with the behaviour log-prob of every
sampled token at the sampling temperature, and takes new weights in place. The rollout worker
around it tokenizes, verifies and versions; it never sees which engine it has.

vLLM is used when `spec.rollout.engine` is `vllm` and the package is installed (it is not a
dependency here: no GPU on this machine). Its code path follows vLLM's public `LLM` API and the
in-place `load_weights` that TRL's colocated mode uses; it is not exercised by the tests here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from zeroth import api


@dataclass
class Completion:
    prompt: int  # index into the prompts given
    token_ids: list[int]
    logprobs: list[float]
    truncated: bool  # hit maxResponseTokens rather than a stop token


class Engine(Protocol):
    def generate(self, prompts: list[list[int]], n: int, seed: int, greedy: bool,
                 temperature: float | None) -> list[Completion]: ...

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...


class HFEngine:
    """`transformers` generate with the KV cache; left-padded batches, positions from the mask."""

    def __init__(self, model_path: str, spec: api.ReasoningRunSpec, tokenizer, stop_ids: list[int]):
        from transformers import AutoModelForCausalLM

        self.spec, self.tokenizer, self.stop_ids = spec, tokenizer, stop_ids
        self.model = AutoModelForCausalLM.from_pretrained(model_path, revision=spec.model.revision,
                                                          dtype=getattr(torch, spec.model.dtype),
                                                          trust_remote_code=spec.model.trust_remote_code).eval()
        if torch.cuda.is_available() and spec.rollout.gpus_per_replica > 0:
            self.model.to("cuda")

    @torch.no_grad()
    def generate(self, prompts, n, seed, greedy, temperature):
        algo = self.spec.algorithm
        torch.manual_seed(seed)
        enc = self.tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt").to(self.model.device)
        out = self.model.generate(
            **enc, do_sample=not greedy, num_return_sequences=n,
            temperature=(temperature or algo.temperature) if not greedy else None,
            top_p=algo.top_p if not greedy else None, top_k=0 if not greedy else None,
            max_new_tokens=algo.max_response_tokens, eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id, output_scores=True, return_dict_in_generate=True)
        gen = out.sequences[:, enc["input_ids"].shape[1]:].cpu()
        if gen.shape[1]:
            # scores are the processed logits (temperature applied): the sampling distribution
            logp = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1).cpu()
            steps = logp.gather(-1, gen.unsqueeze(-1)).squeeze(-1)
        completions = []
        for row in range(gen.shape[0]):
            ids, lps, stopped = [], [], False
            for t in range(gen.shape[1]):
                ids.append(int(gen[row, t]))
                lps.append(float(steps[row, t]))
                if ids[-1] in self.stop_ids:
                    stopped = True
                    break
            completions.append(Completion(row // n, ids, lps, truncated=not stopped))
        return completions

    def load_weights(self, weights):
        self.model.load_state_dict(weights)  # copies into the existing tensors, on their device

    def state_dict(self):
        return self.model.state_dict()


class VLLMEngine:
    """vLLM's offline `LLM`; weights replaced in place through the model's `load_weights`."""

    def __init__(self, model_path: str, spec: api.ReasoningRunSpec, tokenizer, stop_ids: list[int]):
        from vllm import LLM

        self.spec, self.stop_ids = spec, stop_ids
        algo, rollout = spec.algorithm, spec.rollout
        self.llm = LLM(model=model_path, revision=spec.model.revision, dtype=spec.model.dtype,
                       trust_remote_code=spec.model.trust_remote_code,
                       tensor_parallel_size=rollout.tensor_parallel_size,
                       gpu_memory_utilization=rollout.gpu_memory_utilization,
                       max_model_len=algo.max_prompt_tokens + algo.max_response_tokens,
                       logprobs_mode="processed_logprobs",  # log-probs after temperature: the behaviour policy
                       seed=algo.seed)

    def generate(self, prompts, n, seed, greedy, temperature):
        from vllm import SamplingParams

        algo = self.spec.algorithm
        params = SamplingParams(n=n, temperature=0.0 if greedy else (temperature or algo.temperature),
                                top_p=1.0 if greedy else algo.top_p, max_tokens=algo.max_response_tokens,
                                logprobs=0, seed=seed, stop_token_ids=self.stop_ids)
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        completions = []
        for i, request in enumerate(outputs):
            for out in request.outputs:
                ids = list(out.token_ids)
                lps = [step[tok].logprob for tok, step in zip(ids, out.logprobs)]
                completions.append(Completion(i, ids, lps, truncated=out.finish_reason == "length"))
        return completions

    def _model(self) -> Any:
        return self.llm.llm_engine.model_executor.driver_worker.model_runner.model

    def load_weights(self, weights):
        self._model().load_weights(list(weights.items()))
        self.llm.reset_prefix_cache()

    def state_dict(self):
        # vLLM fuses some parameters (qkv, gate/up): its names differ from the trainer's, so the
        # weight checksum of tests compares HF engines only.
        return self._model().state_dict()


def make_engine(model_path: str, spec: api.ReasoningRunSpec, tokenizer, stop_ids: list[int]) -> Engine:
    if spec.rollout.engine == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise RuntimeError("spec.rollout.engine is vllm but vllm is not installed in this image; "
                               "install zeroth[vllm] or set engine: hf") from None
        return VLLMEngine(model_path, spec, tokenizer, stop_ids)
    return HFEngine(model_path, spec, tokenizer, stop_ids)
