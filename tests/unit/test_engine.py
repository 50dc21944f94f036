"""`zeroth.trainer.engine`: device placement, ZeRO-Offload, ZeRO-3 weight export, the block-wise
log-prob pass, length-sorted micro-batches and the off-policy corrections, on a tiny GPT-2.

References are independent of the code under test: log-probs from each sample's own unpadded forward
and plain `torch.log_softmax` in float64; the loss from `grpo.policy_loss` (checked against TRL in
test_grpo_trl.py) on those log-probs; the weights from the model folder on disk. DeepSpeed runs for
real on a one-rank gloo group. No GPU here: a model on the `meta` device stands in for one, failing
like CUDA does when an input sits on another device (torch itself does not check that for
embeddings and linear layers on `meta`).
"""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch

from tests.tiny import save_random_tiny
from zeroth import validation
from zeroth.rollout.worker import Sample
from zeroth.trainer import engine, grpo
from zeroth.trainer.engine import Policy, micro_batches, pad_batch, token_logprobs

D = torch.float64


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_random_tiny(tmp_path_factory.mktemp("tiny-random"))


def make_spec(model_dir, algorithm=None, trainer=None, dtype="float32"):
    manifest = {"apiVersion": "zeroth.dev/v1alpha1", "kind": "ReasoningRun", "metadata": {"name": "engine"},
                "spec": {"model": {"name": str(model_dir), "dtype": dtype},
                         "dataset": {"source": "builtin:countdown"}, "verifiers": [{"name": "countdown"}],
                         "algorithm": {"groupSize": 4, "promptsPerStep": 2, "learningRate": 1e-2, **(algorithm or {})},
                         "trainer": {"gpusPerReplica": 0, "microBatchSize": 8, **(trainer or {})},
                         "rollout": {"engine": "hf", "gpusPerReplica": 0}}}
    return validation.validate(manifest).spec


def make_samples(n, seed=0, completion_lengths=None, version=0):
    """Random prompts (after <bos>) and completions over the alphabet's ids (4..27), ragged."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        c = completion_lengths[i] if completion_lengths else rng.randint(1, 7)
        prompt = [1] + [rng.randrange(4, 28) for _ in range(rng.randint(2, 6))]
        out.append(Sample(task_id=f"t{i // 4}", group=i // 4, prompt_ids=prompt,
                          completion_ids=[rng.randrange(4, 28) for _ in range(c)], logprobs=[0.0] * c, completion="",
                          reward=0.0, scores={}, correct=False, truncated=False, version=version))
    return out


def reference_logprobs(model, samples, temperature=1.0):
    """Per sample, (log-probs, entropies) of its completion tokens: its own unpadded forward, float64
    log_softmax over the whole vocabulary. Differentiable."""
    out = []
    for s in samples:
        logits = model(input_ids=torch.tensor([s.prompt_ids + s.completion_ids])).logits[0].to(D) / temperature
        logp_all = torch.log_softmax(logits, dim=-1)[len(s.prompt_ids) - 1:-1]
        logp = logp_all.gather(-1, torch.tensor(s.completion_ids).unsqueeze(-1)).squeeze(-1)
        out.append((logp, -(logp_all.exp() * logp_all).sum(-1)))
    return out


def load(model_dir, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)


def weights_of(policy):
    return {k: v.clone() for k, v in policy.state_dict().items()}


# --- the log-prob pass --------------------------------------------------------------------------


@pytest.mark.parametrize("block", ["whole batch", "two samples", "three positions", "one position"])
def test_block_logprobs_and_their_gradients_match_plain_log_softmax(model_dir, monkeypatch, block):
    samples = make_samples(6, seed=1)
    batch = pad_batch(samples, pad_id=0)
    T = batch["completion_mask"].shape[1]
    model, ref_model = load(model_dir), load(model_dir)
    V = model.config.vocab_size
    elements = {"whole batch": engine.LOGIT_BLOCK_ELEMENTS, "two samples": 2 * T * V, "three positions": 3 * V,
                "one position": V}[block]
    monkeypatch.setattr(engine, "LOGIT_BLOCK_ELEMENTS", elements)

    logp, entropy = token_logprobs(model, batch, temperature=0.7, entropy="grad")
    reference = reference_logprobs(ref_model, samples, temperature=0.7)
    weights = torch.randn(logp.shape, generator=torch.Generator().manual_seed(0), dtype=D)
    ours_total = ref_total = 0
    for i, (ref_logp, ref_entropy) in enumerate(reference):
        c = len(samples[i].completion_ids)
        torch.testing.assert_close(logp[i, :c].to(D), ref_logp, atol=2e-5, rtol=0)
        torch.testing.assert_close(entropy[i, :c].to(D), ref_entropy, atol=2e-5, rtol=0)
        ours_total = ours_total + (weights[i, :c] * (logp[i, :c] + entropy[i, :c])).sum()
        ref_total = ref_total + (weights[i, :c] * (ref_logp + ref_entropy)).sum()
    ours_total.backward()
    ref_total.backward()
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=2e-5, rtol=1e-4, msg=name)


class NoKeep(torch.nn.Module):
    """A causal LM whose forward has no `logits_to_keep` (older or remote-code models)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, use_cache=False):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache)


def test_models_without_logits_to_keep_get_the_same_logprobs(model_dir):
    samples = make_samples(5, seed=4)
    logp, _ = token_logprobs(NoKeep(load(model_dir)), pad_batch(samples, pad_id=0), temperature=1.3)
    for i, (ref_logp, _) in enumerate(reference_logprobs(load(model_dir), samples, temperature=1.3)):
        torch.testing.assert_close(logp[i, :len(ref_logp)].to(D), ref_logp, atol=2e-5, rtol=0)


def test_entropy_is_computed_only_when_asked_and_in_the_graph_only_for_a_bonus(model_dir):
    model = load(model_dir)
    batch = pad_batch(make_samples(4), pad_id=0)
    logp, entropy = token_logprobs(model, batch, 1.0)
    assert entropy is None and logp.requires_grad
    _, entropy = token_logprobs(model, batch, 1.0, entropy="metric")
    assert not entropy.requires_grad
    _, entropy = token_logprobs(model, batch, 1.0, entropy="grad")
    assert entropy.requires_grad


def test_the_graph_holds_no_fp32_copy_of_the_logits_and_no_prompt_logits(model_dir):
    """bf16 model: autograd keeps the bf16 logits of the completion positions, nothing float32 of
    vocabulary width (the plain path kept the fp32 log-softmax, its exp, and the prompt's logits)."""
    model = load(model_dir, torch.bfloat16)
    samples = make_samples(8, seed=2)
    batch = pad_batch(samples, pad_id=0)
    B, T = batch["completion_mask"].shape
    V = model.config.vocab_size
    assert V not in (batch["input_ids"].shape[1], model.config.n_embd, 4 * model.config.n_embd)  # unambiguous widths
    saved, heads = [], []
    model.get_output_embeddings().register_forward_hook(lambda module, args, out: heads.append(tuple(out.shape)))

    def pack(tensor):
        saved.append((tensor.dtype, tuple(tensor.shape)))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logp, entropy = token_logprobs(model, batch, 1.0, entropy="grad")
    assert heads == [(B, T, V)]
    assert logp.dtype == entropy.dtype == torch.float32  # ratios and the loss are computed in fp32
    vocab_wide = [(dtype, shape) for dtype, shape in saved if shape and shape[-1] == V]
    assert vocab_wide and all(dtype == torch.bfloat16 for dtype, _ in vocab_wide), vocab_wide
    (logp.sum() + entropy.sum()).backward()  # the checkpointed blocks recompute in the backward pass
    assert torch.isfinite(model.get_output_embeddings().weight.grad.float()).all()


# --- micro-batches ------------------------------------------------------------------------------


def test_micro_batches_sort_by_length_and_keep_every_sample_once():
    samples = make_samples(12, completion_lengths=[5, 1, 9, 2, 2, 7, 1, 3, 8, 4, 6, 1])
    batches = micro_batches(samples, 4, length_sorted=True)
    assert sorted(i for b in batches for i in b) == list(range(12)) and [len(b) for b in batches] == [4, 4, 4]
    lengths = [[len(samples[i].completion_ids) for i in b] for b in batches]
    assert lengths == [[1, 1, 1, 2], [2, 3, 4, 5], [6, 7, 8, 9]]
    assert micro_batches(samples, 4, length_sorted=False) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


class DeviceLM(torch.nn.Module):
    """A causal LM stand-in whose forward fails, as CUDA does, unless every input is on its device."""

    def __init__(self, vocab: int, device: str):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 8, device=device)
        self.head = torch.nn.Linear(8, vocab, device=device)
        self.widths: list[int] = []

    def forward(self, input_ids, attention_mask, position_ids, use_cache=False, logits_to_keep=None):
        device = self.head.weight.device
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                  "logits_to_keep": logits_to_keep}  # positions to keep, as transformers' models take them
        for name, x in inputs.items():
            assert x.device == device, f"{name} on {x.device}, the model on {device}"
        self.widths.append(input_ids.shape[1])
        return SimpleNamespace(logits=self.head(self.embed(input_ids)[:, logits_to_keep]))


class FakeEngine:
    """What the step uses of DeepSpeed's engine; its device is its module's."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.device = module.head.weight.device

    def __call__(self, **inputs):
        return self.module(**inputs)

    def train(self):
        self.module.train()

    def eval(self):
        self.module.eval()

    def backward(self, loss):
        pass

    def step(self):
        pass

    def get_global_grad_norm(self):
        return 0.0


def fake_policy(spec, device, micro):
    """A Policy around a FakeEngine on `device` (nothing loaded from disk, no DeepSpeed)."""
    policy = object.__new__(Policy)
    policy.spec, policy.world, policy.dtype = spec, 1, torch.float32
    policy.tokenizer = SimpleNamespace(pad_token_id=0)
    policy.micro, policy.gas = micro, 8 // micro
    policy.engine = FakeEngine(DeviceLM(28, device))
    policy.scheduler = SimpleNamespace(get_last_lr=lambda: [0.0])
    policy.ref = policy._reference(DeviceLM(28, "cpu"), {}) if spec.algorithm.kl_coef else None
    return policy


class Done(Exception):
    pass


def recording_loss(calls, stop_after=None):
    """Stands in for grpo.policy_loss: records what each call got and returns a CPU zero loss; raises
    Done after `stop_after` calls (a step on `meta` cannot turn its metrics into numbers)."""

    def loss(logp, old, advantages, mask, cfg, **kwargs):
        calls.append({"logp": logp, "old": old, "advantages": advantages, "mask": mask,
                      **{k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}})
        if len(calls) == stop_after:
            raise Done
        return torch.zeros(()), {}

    return loss


@pytest.mark.parametrize("algorithm", [
    {},
    {"updatesPerStep": 2, "klCoef": 0.1, "entropyCoef": 0.01, "maxStaleness": 1, "overlong": {"filter": True}},
], ids=["plain", "every-option"])
def test_every_tensor_of_a_step_is_on_the_engine_device(model_dir, monkeypatch, algorithm):
    spec = make_spec(model_dir, algorithm)
    policy = fake_policy(spec, "meta", micro=4)
    calls = []
    monkeypatch.setattr(grpo, "policy_loss", recording_loss(calls, stop_after=2 * spec.algorithm.updates_per_step))
    with pytest.raises(Done):  # every micro-batch of every update reached the loss
        policy.train_step(make_samples(8), torch.linspace(-1, 1, 8), 40, weights_version=1)
    expected = {"logp", "old", "advantages", "mask", "behaviour_logp", "stale"}
    expected |= {"ref_logp", "entropy"} if algorithm else {"entropy"}
    for call in calls:
        assert set(call) == expected
        assert {name: t.device.type for name, t in call.items()} == dict.fromkeys(expected, "meta")
        assert call["entropy"].requires_grad == (spec.algorithm.entropy_coef != 0)  # a bonus, or a metric


@pytest.mark.parametrize(("loss_type", "sorted_widths"), [("grpo", True), ("dapo", True), ("bnpo", False)])
def test_micro_batches_are_padded_to_their_own_longest_and_advantages_follow(model_dir, monkeypatch, loss_type,
                                                                              sorted_widths):
    spec = make_spec(model_dir, {"lossType": loss_type})
    policy = fake_policy(spec, "cpu", micro=2)
    # group order puts a 1-token and an 8-token completion in every micro-batch of 2
    samples = make_samples(8, completion_lengths=[1, 8, 8, 1, 1, 8, 8, 1])
    for i, s in enumerate(samples):
        s.logprobs = [-(i + 1) / 100] * len(s.completion_ids)  # tags each sample
    advantages = torch.arange(8, dtype=torch.float32)
    calls = []
    monkeypatch.setattr(grpo, "policy_loss", recording_loss(calls))
    policy.train_step(samples, advantages, 36, weights_version=0)
    widths = [call["mask"].shape[1] for call in calls]
    assert widths == ([1, 1, 8, 8] if sorted_widths else [8, 8, 8, 8])
    for call in calls:
        index = (-call["behaviour_logp"][:, 0] * 100).round().long() - 1
        assert call["advantages"].tolist() == advantages[index].tolist()


# --- DeepSpeed on a one-rank gloo group ---------------------------------------------------------


@pytest.mark.parametrize("deepspeed", [
    {"zeroStage": 2, "offloadOptimizer": True},
    {"zeroStage": 3, "offloadOptimizer": True, "offloadParams": True},
], ids=["zero2-offload-optimizer", "zero3-offload-both"])
def test_zero_offload_takes_a_step(model_dir, process_group, deepspeed):
    policy = Policy(make_spec(model_dir, trainer={"deepspeed": deepspeed}), str(model_dir), per_rank=8)
    before = weights_of(policy)
    stats = policy.train_step(make_samples(8), torch.tensor([1.0, -1.0, 0.5, -0.5] * 2), 40, weights_version=0)
    after = weights_of(policy)
    assert math.isfinite(stats["loss"]) and stats["grad_norm"] > 0
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(("stage", "dtype"), [(2, "float32"), (2, "bfloat16"), (3, "float32")])
def test_reference_model_sits_with_the_policy_in_its_dtype(model_dir, process_group, stage, dtype):
    spec = make_spec(model_dir, {"klCoef": 0.1}, {"deepspeed": {"zeroStage": stage}}, dtype=dtype)
    policy = Policy(spec, str(model_dir), per_rank=8)
    for model in (policy.engine.module, policy.ref):
        for p in model.parameters():
            assert p.device == policy.engine.device and p.dtype == getattr(torch, dtype)
    assert not any(p.requires_grad for p in policy.ref.parameters())
    if stage == 3:  # partitioned like the policy: no rank holds it whole outside a gather
        from deepspeed import DeepSpeedEngine

        assert isinstance(policy.ref, DeepSpeedEngine)
        assert all(hasattr(p, "ds_id") and p.numel() == 0 for p in policy.ref.parameters())
    stats = policy.train_step(make_samples(8), torch.tensor([1.0, -1.0, 0.5, -0.5] * 2), 40, weights_version=0)
    assert stats["kl"] == pytest.approx(0.0, abs=1e-6)  # the reference is the policy before its first update
    stats = policy.train_step(make_samples(8), torch.tensor([1.0, -1.0, 0.5, -0.5] * 2), 40, weights_version=1)
    assert stats["kl"] > 1e-6  # and stays where it was while the policy moves


def test_zero3_weights_are_gathered_one_module_at_a_time(model_dir, process_group, monkeypatch):
    import deepspeed

    policy = Policy(make_spec(model_dir, trainer={"deepspeed": {"zeroStage": 3}}), str(model_dir), per_rank=8)
    gathered = []
    real = deepspeed.zero.GatheredParameters

    def recording(params, *args, **kwargs):
        gathered.append([p.ds_numel for p in params])
        return real(params, *args, **kwargs)

    monkeypatch.setattr(deepspeed.zero, "GatheredParameters", recording)
    stream = policy.weights()
    first_name, first = next(stream)
    assert len(gathered) == 1  # a generator: the caller may stream it
    weights = {first_name: first, **dict(stream)}

    expected = load(model_dir).state_dict()
    assert list(weights) == list(expected)
    for name, tensor in weights.items():
        assert tensor.device.type == "cpu"
        torch.testing.assert_close(tensor, expected[name], atol=0, rtol=0, msg=name)
    # each gather holds one module's own parameters: at most the largest module's, never the model's
    own = [sum(p.numel() for p in m.parameters(recurse=False)) for m in load(model_dir).modules()]
    assert max(sum(g) for g in gathered) == max(own) < sum(p.numel() for p in load(model_dir).parameters())


# --- off-policy corrections through the real engine ---------------------------------------------


def behaviour_from(model_dir, samples, shift=0.0, noise=0.0):
    """Each sample's behaviour log-probs: the true ones under the model on disk, plus `shift`, plus
    Gaussian noise of std `noise` per token."""
    g = torch.Generator().manual_seed(0)
    for s, (logp, _) in zip(samples, reference_logprobs(load(model_dir), samples)):
        s.logprobs = (logp.detach() + shift + noise * torch.randn(logp.shape, generator=g, dtype=D)).tolist()


def test_clipping_binds_on_stale_samples(model_dir, process_group):
    """The rollout's log-probs are the trainer's minus log 2, so pi / pi_behaviour = 2 on every token.
    Stale samples are clipped against the behaviour policy: with every advantage positive, every
    token is above 1 + clipHigh, the gradient is zero and the weights do not move. The same samples
    fresh are anchored at the trainer's own log-probs (ratio 1, nothing clipped) and weighted by the
    truncated importance ratio min(2, cap 3) = 2."""
    spec = make_spec(model_dir, {"maxStaleness": 1}, {"deepspeed": {"zeroStage": 1}})
    samples = make_samples(8)
    behaviour_from(model_dir, samples, -math.log(2))
    advantages = torch.tensor([1.0, 0.5, 2.0, 1.5] * 2)
    tokens = sum(len(s.completion_ids) for s in samples)

    policy = Policy(spec, str(model_dir), per_rank=8)
    before = weights_of(policy)
    stale = policy.train_step(samples, advantages, tokens, weights_version=1)
    assert stale["clip_fraction"] == pytest.approx(1.0) and stale["clip_fraction_high"] == pytest.approx(1.0)
    assert stale["importance_ratio"] == pytest.approx(2.0, rel=1e-4)
    assert stale["grad_norm"] == 0.0 and stale["is_weight"] == 1.0
    assert stale["logprob_mismatch"] == pytest.approx(math.log(2), rel=1e-4)
    assert stale["logprob_mismatch_max"] == pytest.approx(math.log(2), rel=1e-4)
    assert all(torch.equal(before[k], v) for k, v in weights_of(policy).items())

    fresh = policy.train_step(samples, advantages, tokens, weights_version=0)
    assert fresh["clip_fraction"] == 0.0 and fresh["importance_ratio"] == pytest.approx(1.0)
    assert fresh["is_weight"] == pytest.approx(2.0, rel=1e-4) and fresh["is_capped_fraction"] == 0.0
    assert fresh["grad_norm"] > 0
    assert any(not torch.equal(before[k], v) for k, v in weights_of(policy).items())


@pytest.mark.parametrize("loss_type", ["grpo", "dr-grpo", "dapo"])
def test_step_loss_and_gradient_are_the_whole_batch_ones(model_dir, process_group, loss_type):
    """Four length-sorted micro-batches of 2 give the loss and gradient of the whole batch: against
    policy_loss on the whole batch with reference log-probs, under off-policy corrections so the
    loss depends on the log-probs, not only on the advantages."""
    samples = make_samples(8, seed=3)
    behaviour_from(model_dir, samples, noise=0.3)
    for s in samples[4:]:
        s.version = 0  # stale: anchored at the behaviour policy
    for s in samples[:4]:
        s.version = 1
    advantages = torch.tensor([1.2, -0.7, 0.3, -0.8, 0.9, -1.1, 0.5, -0.3])
    tokens = sum(len(s.completion_ids) for s in samples)
    algorithm = {"lossType": loss_type, "maxStaleness": 1, "maxResponseTokens": 12, "maxGradNorm": 1e6}

    model = load(model_dir)
    reference = reference_logprobs(model, samples)
    T = max(len(s.completion_ids) for s in samples)
    logp = torch.stack([torch.cat([lp, lp.new_zeros(T - len(lp))]) for lp, _ in reference])
    mask = torch.tensor([[1.0] * len(s.completion_ids) + [0.0] * (T - len(s.completion_ids)) for s in samples], dtype=D)
    behaviour = torch.tensor([s.logprobs + [0.0] * (T - len(s.logprobs)) for s in samples], dtype=D)
    stale = torch.tensor([s.version < 1 for s in samples])
    spec = make_spec(model_dir, algorithm, {"microBatchSize": 2, "deepspeed": {"zeroStage": 1}})
    loss, _ = grpo.policy_loss(logp, logp.detach(), advantages.to(D), mask, spec.algorithm, num_tokens=tokens,
                               behaviour_logp=behaviour, stale=stale)
    loss.backward()
    grad_norm = torch.sqrt(sum((p.grad.to(D) ** 2).sum() for p in model.parameters()))

    policy = Policy(spec, str(model_dir), per_rank=8)
    assert policy.gas == 4
    stats = policy.train_step(samples, advantages, tokens, weights_version=1)
    assert stats["loss"] == pytest.approx(loss.item(), abs=1e-6)
    assert stats["grad_norm"] == pytest.approx(grad_norm.item(), rel=1e-4)
    assert 0 < stats["clip_fraction"] < 1  # the stale half is clipped somewhere: the anchor matters
