"""Generation engines sample exactly the run's policy: a model's own generation_config changes
nothing, stop strings end completions (tokens and log-probs) where they complete, and vLLM is
given the same settings (checked on the arguments it receives; vLLM is not installed here).

Log-probs are checked against a plain forward pass of a separately loaded copy of the model."""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch

from tests.unit import tiny_chat
from zeroth import api
from zeroth.rollout import generation
from zeroth.rollout.generation import HFEngine
from zeroth.rollout.worker import RolloutWorker


def spec(model_dir, **sections) -> api.ReasoningRunSpec:
    return api.ReasoningRunSpec.model_validate(tiny_chat.spec_dict(model_dir, **sections))


def forward_logprobs(model_dir, prompt: list[int], completion: list[int], temperature: float) -> list[float]:
    """log p(token | prefix) / temperature-scaled, from one forward pass of a fresh copy of the model."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0].float()
    steps = torch.log_softmax(logits[len(prompt) - 1 : -1] / temperature, dim=-1)
    return steps.gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1).tolist()


@pytest.fixture(scope="module")
def tok():
    return tiny_chat.tokenizer()


@pytest.fixture(scope="module")
def opinionated(tmp_path_factory, tok):
    """A model whose generation_config.json asks for everything that bends sampling."""
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=True, repetition_penalty=5.0, no_repeat_ngram_size=1, top_k=3, top_p=0.5,
                              temperature=0.2, min_p=0.9, suppress_tokens=list(range(10, 40)),
                              eos_token_id=tok.convert_tokens_to_ids("a"))
    return tiny_chat.save(tmp_path_factory.mktemp("opinionated"), tok, seed=1, generation_config=config)


def test_hf_samples_the_runs_policy_not_the_models_generation_config(opinionated, tok):
    run = spec(opinionated, algorithm={"temperature": 0.7, "maxResponseTokens": 40})
    engine = HFEngine(str(opinionated), run, tok, stop_ids=[tok.eos_token_id])
    prompt = tok("1+1=")["input_ids"]
    completions = engine.generate([prompt], n=4, seed=0, greedy=False, temperature=None)
    assert len(completions) == 4
    repeated = False
    for c in completions:
        assert len(c.token_ids) == len(c.logprobs) and (c.token_ids[-1] == tok.eos_token_id) != c.truncated
        assert len(c.token_ids) == 40 or c.token_ids[-1] == tok.eos_token_id  # its extra EOS ("a") is not one
        assert c.logprobs == pytest.approx(forward_logprobs(opinionated, prompt, c.token_ids, 0.7), abs=1e-4)
        repeated |= len(set(c.token_ids)) < len(c.token_ids)
    assert repeated  # no_repeat_ngram_size=1 would forbid any repeated token


def test_hf_generation_config_is_explicit_and_neutral():
    run = api.ReasoningRunSpec.model_validate(tiny_chat.spec_dict("m", algorithm={"temperature": 0.9, "topP": 0.95}))
    sampled = generation.hf_generation_config(run, 3, False, None, [1, 7], 0)
    assert (sampled.do_sample, sampled.temperature, sampled.top_p, sampled.top_k) == (True, 0.9, 0.95, 0)
    assert (sampled.repetition_penalty, sampled.no_repeat_ngram_size, sampled.num_return_sequences) == (1.0, 0, 3)
    assert (sampled.eos_token_id, sampled.pad_token_id, sampled.max_new_tokens) == ([1, 7], 0, 24)
    assert generation.hf_generation_config(run, 1, False, 0.5, [1], 0).temperature == 0.5  # evaluation's
    assert generation.hf_generation_config(run, 1, True, None, [1], 0).do_sample is False


# --- stops ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ones_and_twos(tmp_path_factory, tok):
    """A model that writes only `1`s and `2`s (almost surely), in any context."""
    return tiny_chat.save(tmp_path_factory.mktemp("rigged"), tok, rig="12")


def test_hf_stops_at_a_stop_string_with_tokens_and_logprobs_ending_there(ones_and_twos, tok):
    run = spec(ones_and_twos, algorithm={"maxResponseTokens": 100})
    engine = HFEngine(str(ones_and_twos), run, tok, stop_ids=[tok.eos_token_id], stop_strings=["21"])
    forwards = []
    engine.model.register_forward_hook(lambda *_: forwards.append(1))
    prompt = tok("go:")["input_ids"]
    completions = engine.generate([prompt, tok("again:")["input_ids"]], n=6, seed=3, greedy=False, temperature=None)
    assert len(completions) == 12
    assert len(forwards) <= max(len(c.token_ids) for c in completions)  # generation itself stopped, not only the cut
    for c in completions:
        text = tok.decode(c.token_ids)
        assert set(text) <= {"1", "2"}, text
        assert text.endswith("21") and "21" not in text[:-1], text  # the first "21" ends it, nothing after
        assert len(c.logprobs) == len(c.token_ids) and not c.truncated
    first = completions[0]
    assert first.logprobs == pytest.approx(forward_logprobs(ones_and_twos, prompt, first.token_ids, 1.0), abs=1e-4)


def test_hf_stops_at_whichever_comes_first_a_stop_token_or_a_stop_string(ones_and_twos, tok):
    two = tok.convert_tokens_to_ids("2")
    engine = HFEngine(str(ones_and_twos), spec(ones_and_twos), tok, stop_ids=[tok.eos_token_id, two], stop_strings=["11"])
    completions = engine.generate([tok("x")["input_ids"]], n=16, seed=0, greedy=False, temperature=None)
    texts = [tok.decode(c.token_ids) for c in completions]
    assert set(texts) <= {"2", "12", "11"}, texts
    assert all(len(c.logprobs) == len(c.token_ids) and not c.truncated for c in completions)


def test_without_stops_a_completion_runs_to_the_budget(ones_and_twos, tok):
    engine = HFEngine(str(ones_and_twos), spec(ones_and_twos), tok, stop_ids=[tok.eos_token_id])
    [c] = engine.generate([tok("x")["input_ids"]], n=1, seed=0, greedy=False, temperature=None)
    assert len(c.token_ids) == 24 and c.truncated


def test_the_worker_stops_on_special_tokens_by_id_and_on_text_by_string(ones_and_twos, tok):
    run = tiny_chat.spec_dict(ones_and_twos, rollout={"stop": ["<|end|>", "21", "21", "<eos>"]})
    worker = RolloutWorker(str(ones_and_twos), run)
    worker._load()
    assert worker.stop_ids == [tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")]
    assert worker.stop_strings == ["21"]
    samples = worker.generate([{"id": "t", "prompt": "go:", "gold": "1"}], group_size=3, seed=0)
    assert all(s.completion.endswith("21") and not s.truncated for s in samples)


# --- vLLM's arguments -------------------------------------------------------------------------------


def test_vllm_is_given_the_runs_sampling_and_stops_only():
    run = api.ReasoningRunSpec.model_validate(tiny_chat.spec_dict("m", algorithm={"temperature": 0.8, "topP": 0.9}))
    kw = generation.vllm_sampling_kwargs(run, 4, 11, False, None, [2, 5], ["</answer>"])
    assert kw["stop"] == ["</answer>"] and kw["include_stop_str_in_output"] is True
    assert kw["stop_token_ids"] == [2, 5]
    assert (kw["n"], kw["seed"], kw["temperature"], kw["top_p"], kw["max_tokens"]) == (4, 11, 0.8, 0.9, 24)
    assert (kw["repetition_penalty"], kw["presence_penalty"], kw["frequency_penalty"], kw["min_p"]) == (1.0, 0.0, 0.0, 0.0)
    assert kw["top_k"] in (0, -1) and kw["logprobs"] == 0
    greedy = generation.vllm_sampling_kwargs(run, 1, 0, True, None, [2], [])
    assert (greedy["temperature"], greedy["top_p"]) == (0.0, 1.0)
    engine = generation.vllm_engine_kwargs("/models/m", run)
    assert engine["generation_config"] == "vllm"  # not the model's generation_config.json
    assert engine["logprobs_mode"] == "processed_logprobs"
    assert engine["max_model_len"] == 128 + 24


def test_vllm_engine_passes_those_arguments(monkeypatch):
    """VLLMEngine's wiring, against a stand-in `vllm` module that records what it is given."""
    seen = {}

    class LLM:
        def __init__(self, **kw):
            seen["llm"] = kw

        def generate(self, prompts, params, use_tqdm):
            seen["prompts"] = prompts
            step = [{7: SimpleNamespace(logprob=-0.5)}, {8: SimpleNamespace(logprob=-0.25)}]
            return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[7, 8], logprobs=step, finish_reason="stop")])]

    fake = ModuleType("vllm")
    fake.LLM = LLM
    fake.SamplingParams = lambda **kw: seen.setdefault("params", kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    run = api.ReasoningRunSpec.model_validate(tiny_chat.spec_dict(
        "m", rollout={"engine": "vllm", "gpusPerReplica": 1, "stop": ["</answer>"]}))
    engine = generation.make_engine("/models/m", run, None, [2], ["</answer>"])
    [c] = engine.generate([[1, 2, 3]], 1, 5, False, None)
    assert seen["llm"] == generation.vllm_engine_kwargs("/models/m", run)
    assert seen["params"]["stop"] == ["</answer>"] and seen["params"]["include_stop_str_in_output"] is True
    assert seen["prompts"] == [{"prompt_token_ids": [1, 2, 3]}]
    assert (c.token_ids, c.logprobs, c.truncated) == ([7, 8], [-0.5, -0.25], False)


# --- the worker's own /metrics ----------------------------------------------------------------------


def test_a_worker_serves_what_it_generated_and_how_its_verifiers_fared(ones_and_twos):
    """Scraped over HTTP as Prometheus would: the worker's tokens, its request, its weights version,
    and its verifier's latency and errors (a task whose gold the countdown verifier cannot read is an
    error, scored 0), labelled with the run and the worker's index."""
    from prometheus_client.parser import text_string_to_metric_families
    import urllib.request

    run = tiny_chat.spec_dict(ones_and_twos, verifiers=[{"name": "countdown"}])
    worker = RolloutWorker(str(ones_and_twos), run, index=3, labels={"run": "r", "namespace": "ns"}, serve_metrics=True)
    tasks = [{"id": "good", "prompt": "go:", "gold": {"numbers": [1, 2], "target": 3}},
             {"id": "bad", "prompt": "again:", "gold": None}]
    me, verifier = {"run": "r", "namespace": "ns", "worker": "3"}, {"run": "r", "namespace": "ns", "verifier": "countdown"}

    def scrape() -> dict:
        text = urllib.request.urlopen(f"http://{worker.metrics_endpoint()}/metrics", timeout=10).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    # before any request the histograms are there at 0: rate() over the first request sees its rise
    got = scrape()
    assert got[("zeroth_worker_request_seconds_count", tuple(sorted(me.items())))] == 0
    assert got[("zeroth_verifier_seconds_count", tuple(sorted(verifier.items())))] == 0
    samples = worker.generate(tasks, group_size=2, seed=0)
    got = scrape()

    def value(name, labels):
        return got[(name, tuple(sorted(labels.items())))]

    assert value("zeroth_worker_generated_tokens_total", me) == sum(len(s.completion_ids) for s in samples) > 0
    assert value("zeroth_worker_request_seconds_count", me) == 1
    assert value("zeroth_worker_weights_version", me) == 0
    assert value("zeroth_verifier_seconds_count", verifier) == 4
    assert value("zeroth_verifier_errors_total", verifier) == 2  # the two samples of the task with no readable gold
    assert ("zeroth_verifier_timeouts_total", tuple(sorted(verifier.items()))) not in got or \
        value("zeroth_verifier_timeouts_total", verifier) == 0


def test_a_worker_serves_its_gpus_from_nvml_and_nothing_where_there_is_none(ones_and_twos, monkeypatch):
    """A rollout pod's GPUs are the workers' (vLLM's), not the trainer's: each worker exports them."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from zeroth import gpus

    run = tiny_chat.spec_dict(ones_and_twos, verifiers=[{"name": "countdown"}])

    def scrape(worker) -> dict:
        text = urllib.request.urlopen(f"http://{worker.metrics_endpoint()}/metrics", timeout=10).read().decode()
        return {(s.name, s.labels.get("gpu")): s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name.startswith("zeroth_gpu_")}

    # this machine: no NVML or no GPU, so no series at all (absent, not zero)
    bare = RolloutWorker(str(ones_and_twos), run, index=0, labels={"run": "r", "namespace": "ns"}, serve_metrics=True)
    assert scrape(bare) == {}
    monkeypatch.setattr(gpus.Nvml, "sample", lambda self: [gpus.GpuSample(2, 0.75, 3 << 30)])
    held = RolloutWorker(str(ones_and_twos), run, index=1, labels={"run": "r", "namespace": "ns"}, serve_metrics=True)
    assert scrape(held) == {("zeroth_gpu_utilization", "2"): 0.75, ("zeroth_gpu_memory_used_bytes", "2"): 3 << 30}
