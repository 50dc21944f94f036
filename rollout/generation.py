"""Generation engines behind one interface: Hugging Face `generate` (CPU or GPU) and vLLM (GPU).

An engine turns prompt token ids into G completions each, with the behaviour log-prob of every
sampled token at the sampling temperature, and takes new weights in place. The rollout worker
around it tokenizes, verifies and versions; it never sees which engine it has.

vLLM is used when `spec.rollout.engine` is `vllm` and the package is installed (the cuda image's
`vllm` extra; not in the CPU environment). Its code path is vLLM's public V1 API: `LLM` with a
`worker_extension_cls`, and `collective_rpc` to load new weights in every worker process (each
tensor-parallel rank). The tests here check the arguments it is given (`vllm_engine_kwargs`,
`vllm_sampling_kwargs`) and the extension on a stand-in worker (`tests/unit/test_vllm_worker.py`),
not vLLM itself.

Sampling is exactly the run's: temperature, top-p, the response budget and the stops, nothing
else. A model's `generation_config.json` often carries its authors' chat defaults
(`repetition_penalty`, `top_k`, `no_repeat_ngram_size`, extra EOS ids); applied to rollouts they
would make the behaviour policy differ from the policy the trainer scores, so both engines ignore
it: HF gets an empty model-level config and an explicit one per call (`hf_generation_config`),
vLLM `generation_config="vllm"` (its neutral defaults) and explicit neutral penalties.

Stops: EOS and the token ids the worker adds, and stop strings (`rollout.stop`). A completion
ends with the token that completed a stop string (vLLM: `include_stop_str_in_output`; HF: a
stopping criterion that records where each row stopped), and its log-probs end there too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from zeroth import api
from zeroth.rollout import vllm_worker
from zeroth.rollout.broadcast import copy_into
from zeroth.rollout.weights import checksum, from_numpy


@dataclass
class Completion:
    prompt: int  # index into the prompts given
    token_ids: list[int]
    logprobs: list[float]
    truncated: bool  # hit maxResponseTokens rather than a stop token


def hf_generation_config(spec: api.ReasoningRunSpec, n: int, greedy: bool, temperature: float | None,
                         stop_ids: list[int], pad_id: int | None):
    """The `transformers.GenerationConfig` of one `generate` call: the run's settings and neutral
    values for every processor a model's own generation config could switch on."""
    from transformers import GenerationConfig

    algo = spec.algorithm
    # sampling-only settings are set only when sampling (greedy warns about them); top_k=0 is off
    sampling = {} if greedy else dict(temperature=temperature or algo.temperature, top_p=algo.top_p, top_k=0,
                                      typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0)
    return GenerationConfig(
        do_sample=not greedy, num_return_sequences=n, max_new_tokens=algo.max_response_tokens,
        eos_token_id=list(stop_ids), pad_token_id=pad_id, **sampling,
        repetition_penalty=1.0, no_repeat_ngram_size=0, encoder_repetition_penalty=1.0, min_length=0, num_beams=1,
        output_scores=True, return_dict_in_generate=True)


class StopOnStrings:
    """A `transformers` stopping criterion: a row is done once its generated text (special tokens
    skipped, as the worker decodes it) contains a stop string; `at[row]` is the index of the
    generated token that completed it. Only the last `window` tokens are decoded each step: a stop
    string ending at this token lies within them (tokens decode to at least one character, but
    for a few partial-UTF-8 byte tokens, for which the window leaves room)."""

    def __init__(self, tokenizer, stops: list[str], prompt_len: int, stop_ids: list[int]):
        self.tokenizer, self.stops, self.start, self.stop_ids = tokenizer, stops, prompt_len, set(stop_ids)
        self.window = max(len(s) for s in stops) + 8
        self.at: dict[int, int] = {}
        self.ended: set[int] = set()  # rows that stopped on a stop token first

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        gen = input_ids[:, self.start:]
        step = gen.shape[1] - 1
        last = gen[:, -1].tolist()
        live = []
        for row, token in enumerate(last):
            if row in self.at or row in self.ended:
                continue
            if token in self.stop_ids:
                self.ended.add(row)
            else:
                live.append(row)
        if live:
            texts = self.tokenizer.batch_decode(gen[live, -self.window:], skip_special_tokens=True)
            for row, text in zip(live, texts, strict=True):
                if any(stop in text for stop in self.stops):
                    self.at[row] = step
        done = torch.zeros(gen.shape[0], dtype=torch.bool, device=input_ids.device)
        done[list(self.at)] = True
        return done


def vllm_engine_kwargs(model_path: str, spec: api.ReasoningRunSpec) -> dict[str, Any]:
    """Arguments of `vllm.LLM`."""
    algo, rollout = spec.algorithm, spec.rollout
    return dict(model=model_path, revision=spec.model.revision, dtype=spec.model.dtype,
                trust_remote_code=spec.model.trust_remote_code,
                tensor_parallel_size=rollout.tensor_parallel_size,
                gpu_memory_utilization=rollout.gpu_memory_utilization,
                max_model_len=algo.max_prompt_tokens + algo.max_response_tokens,
                logprobs_mode="processed_logprobs",  # log-probs after temperature: the behaviour policy
                generation_config="vllm",  # not the model's generation_config.json: only the run's sampling
                worker_extension_cls=vllm_worker.EXTENSION,  # new weights loaded in every worker process
                seed=algo.seed)


def vllm_sampling_kwargs(spec: api.ReasoningRunSpec, n: int, seed: int, greedy: bool, temperature: float | None,
                         stop_ids: list[int], stop_strings: list[str]) -> dict[str, Any]:
    """Arguments of `vllm.SamplingParams` for one `generate` call."""
    algo = spec.algorithm
    return dict(n=n, temperature=0.0 if greedy else (temperature or algo.temperature),
                top_p=1.0 if greedy else algo.top_p, top_k=-1, min_p=0.0,  # -1: off in every vLLM >= 0.10
                repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
                max_tokens=algo.max_response_tokens, logprobs=0, seed=seed,
                stop_token_ids=list(stop_ids), stop=list(stop_strings), include_stop_str_in_output=True)


class Engine(Protocol):
    def generate(self, prompts: list[list[int]], n: int, seed: int, greedy: bool,
                 temperature: float | None) -> list[Completion]: ...

    def load_weights(self, arrays: Mapping[str, np.ndarray]) -> None:
        """The trainer's weights (its names, numpy; bf16 as int16), applied in place."""

    def checksum(self) -> str:
        """`weights.checksum` of the engine's weights that have the trainer's names and shapes."""

    def checked(self) -> tuple[str, list[str]]:
        """`checksum` and the trainer's names it covers."""

    # Weights by broadcast (`zeroth.rollout.broadcast`): the engine's processes that hold a part
    # of the model join the sender's group, `ranks` consecutive ranks from `first_rank`.
    ranks: int

    def join_weights(self, group: Mapping[str, Any], first_rank: int) -> None: ...

    def receive_weights(self, bucket: Mapping[str, Any]) -> int | None:
        """Takes one bucket in place; the version once its last bucket is in, else None."""


class HFEngine:
    """`transformers` generate with the KV cache; left-padded batches, positions from the mask."""

    def __init__(self, model_path: str, spec: api.ReasoningRunSpec, tokenizer, stop_ids: list[int],
                 stop_strings: list[str] = ()):
        from transformers import AutoModelForCausalLM, GenerationConfig

        self.spec, self.tokenizer, self.stop_ids, self.stop_strings = spec, tokenizer, stop_ids, list(stop_strings)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, revision=spec.model.revision,
                                                          dtype=getattr(torch, spec.model.dtype),
                                                          trust_remote_code=spec.model.trust_remote_code).eval()
        # `generate` fills every setting a call leaves unset from the model's generation config:
        # with an empty one, only the run's settings (hf_generation_config) and neutral defaults apply.
        self.model.generation_config = GenerationConfig()
        if torch.cuda.is_available() and spec.rollout.gpus_per_replica > 0:
            self.model.to("cuda")

    @torch.no_grad()
    def generate(self, prompts, n, seed, greedy, temperature):
        from transformers import StoppingCriteriaList

        torch.manual_seed(seed)
        enc = self.tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt").to(self.model.device)
        config = hf_generation_config(self.spec, n, greedy, temperature, self.stop_ids, self.tokenizer.pad_token_id)
        strings = StopOnStrings(self.tokenizer, self.stop_strings, enc["input_ids"].shape[1], self.stop_ids) \
            if self.stop_strings else None
        out = self.model.generate(**enc, generation_config=config,
                                  stopping_criteria=StoppingCriteriaList([strings] if strings else []))
        gen = out.sequences[:, enc["input_ids"].shape[1]:].cpu()
        if gen.shape[1]:
            # scores are the processed logits (temperature applied): the sampling distribution
            logp = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1).cpu()
            steps = logp.gather(-1, gen.unsqueeze(-1)).squeeze(-1)
        completions = []
        for row in range(gen.shape[0]):
            end = strings.at.get(row) if strings else None  # index of the token that completed a stop string
            ids, lps, stopped = [], [], False
            for t in range(gen.shape[1]):
                ids.append(int(gen[row, t]))
                lps.append(float(steps[row, t]))
                if ids[-1] in self.stop_ids or t == end:
                    stopped = True
                    break
            completions.append(Completion(row // n, ids, lps, truncated=not stopped))
        return completions

    def load_weights(self, arrays):
        # copies into the existing tensors, on their device; a name missing either side is an error
        self.model.load_state_dict(from_numpy(arrays, self.model.state_dict()))

    def checksum(self):
        return checksum(self.model.state_dict())

    def checked(self):
        state = self.model.state_dict()
        return checksum(state), sorted(state)

    ranks = 1  # this process

    def join_weights(self, group, first_rank):
        from zeroth.rollout.broadcast import Receiver

        self._receiver = getattr(self, "_receiver", None) or Receiver()
        self._receiver.join(group, first_rank, self.model.device)

    def receive_weights(self, bucket):
        got = self._receiver.receive(bucket)
        state = self.model.state_dict()
        if got.first:
            self._arrived: set[str] = set()
        copy_into(state, got.tensors)  # in place, on the model's device
        self._arrived.update(name for name, _ in got.tensors)
        if got.version is not None and (missing := set(state) - self._arrived):
            raise RuntimeError(f"weights version {got.version} lacks {sorted(missing)[:5]} ({len(missing)} tensors)")
        return got.version


class VLLMEngine:
    """vLLM's offline `LLM` (the V1 engine); weights replaced in place in each of its workers."""

    def __init__(self, model_path: str, spec: api.ReasoningRunSpec, tokenizer, stop_ids: list[int],
                 stop_strings: list[str] = ()):
        from vllm import LLM

        self.spec, self.stop_ids, self.stop_strings = spec, stop_ids, list(stop_strings)
        self.llm = LLM(**vllm_engine_kwargs(model_path, spec))

    def generate(self, prompts, n, seed, greedy, temperature):
        from vllm import SamplingParams

        params = SamplingParams(**vllm_sampling_kwargs(self.spec, n, seed, greedy, temperature, self.stop_ids,
                                                       self.stop_strings))
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        completions = []
        for i, request in enumerate(outputs):
            for out in request.outputs:
                ids = list(out.token_ids)
                lps = [step[tok].logprob for tok, step in zip(ids, out.logprobs)]
                completions.append(Completion(i, ids, lps, truncated=out.finish_reason == "length"))
        return completions

    def load_weights(self, arrays):
        # V1 runs the model in worker processes (one per tensor-parallel rank): each loads its shard
        # through the extension vLLM mixed into it (zeroth.rollout.vllm_worker)
        self.llm.collective_rpc("zeroth_load", args=(dict(arrays),))
        self.llm.reset_prefix_cache()  # cached prefixes hold keys and values of the old weights
        self._shapes = {name: list(a.shape) for name, a in arrays.items()}

    def checksum(self):
        """Over the weights vLLM keeps under the trainer's name and shape (it fuses q/k/v and
        gate/up, and shards across tensor-parallel ranks); every rank must agree."""
        return self.checked()[0]

    def checked(self):
        found = self.llm.collective_rpc("zeroth_checksum", args=(getattr(self, "_shapes", {}),))
        values = {value for value, _ in found}
        value = values.pop() if len(values) == 1 else "ranks differ: " + ", ".join(sorted(values))
        return value, sorted(found[0][1]) if found else []

    @property
    def ranks(self):
        return self.spec.rollout.tensor_parallel_size  # one worker process per tensor-parallel rank

    def join_weights(self, group, first_rank):
        self.llm.collective_rpc("zeroth_join", args=(dict(group), first_rank))

    def receive_weights(self, bucket):
        # every tensor-parallel worker takes the whole bucket; the model's loader keeps its shard
        versions = set(self.llm.collective_rpc("zeroth_receive", args=(dict(bucket),)))
        if len(versions) != 1:
            raise RuntimeError(f"tensor-parallel workers ended bucket {bucket['index']} differently: {versions}")
        if bucket["index"] == 0:
            self._arriving = {}
        self._arriving.update(zip(bucket["names"], bucket["shapes"]))
        version = versions.pop()
        if version is not None:
            self.llm.reset_prefix_cache()  # cached prefixes hold keys and values of the old weights
            self._shapes = self._arriving
        return version


def make_engine(model_path: str, spec: api.ReasoningRunSpec, tokenizer, stop_ids: list[int],
                stop_strings: list[str] = ()) -> Engine:
    if spec.rollout.engine == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise RuntimeError("spec.rollout.engine is vllm but vllm is not installed in this image; "
                               "install zeroth[vllm] or set engine: hf") from None
        return VLLMEngine(model_path, spec, tokenizer, stop_ids, stop_strings)
    return HFEngine(model_path, spec, tokenizer, stop_ids, stop_strings)
