"""A tiny chat model built here (no hub): a character-level tokenizer over printable ASCII with
role tokens and a chat template, and a small random GPT-2 saved with `save_pretrained`, so tests
load both through the real `from_pretrained` paths."""

from __future__ import annotations

import string
from pathlib import Path

ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tokenizer(chat_template: bool = True):
    """One id per printable ASCII character; the role tokens are special tokens of their own."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>", *ROLE_TOKENS]
    vocab = {t: i for i, t in enumerate([*specials, *string.printable])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
                                   additional_special_tokens=ROLE_TOKENS, clean_up_tokenization_spaces=False)
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def save(folder: Path, tok, seed: int = 0, generation_config=None, rig: str | None = None) -> Path:
    """A 1-layer GPT-2 for `tok`, saved with it into `folder`.

    rig: characters the model then samples almost surely, whatever the context (the final layer
    norm's output is made constant, pointing at those characters' embeddings): for stop tests.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=32, n_head=2, n_positions=256,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    if rig:
        with torch.no_grad():
            direction = torch.zeros(config.n_embd)
            direction[0] = 1.0
            wte = model.transformer.wte.weight
            wte[:, 0] = 0.0  # no other token points that way
            for ch in rig:
                wte[tok.convert_tokens_to_ids(ch)] = direction
            model.transformer.ln_f.weight.zero_()
            model.transformer.ln_f.bias.copy_(12.0 * direction)  # logit 12 for the rigged characters, 0 else
    if generation_config is not None:
        model.generation_config = generation_config
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def spec_dict(model: Path, **sections) -> dict:
    """A run spec (camelCase, as the worker receives it) for the model in `model`, on CPU with HF."""
    spec = {
        "model": {"name": str(model), "dtype": "float32"},
        "dataset": {"source": "jsonl:unused.jsonl"},
        "verifiers": [{"name": "math"}],
        "algorithm": {"maxPromptTokens": 128, "maxResponseTokens": 24, "temperature": 1.0},
        "rollout": {"engine": "hf", "gpusPerReplica": 0},
    }
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec
