"""Prompts to token ids: the one way the rollout workers and the trainer's start-up check do it.

A task's prompt is text or chat messages (`[{"role", "content"}]`, from veRL data). Messages, and
text when `spec.dataset.chatTemplate` is on (as one user message), go through the tokenizer's chat
template with `add_generation_prompt=True`; other text is tokenized as it is (with the tokenizer's
own special tokens, a BOS for most). Prompts are never cut: one over `algorithm.maxPromptTokens`
is an error naming it, at the start of the run (`check_lengths`) and again in the worker.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from zeroth import api

LIMIT_FIELD = "spec.algorithm.maxPromptTokens"
SHOWN = 5  # over-long prompts named in the error


def messages(prompt: str | list[dict[str, str]], chat_template: bool) -> list[dict[str, str]] | None:
    """The chat messages to render, or None when `prompt` is plain text tokenized as it is."""
    if isinstance(prompt, list):
        return prompt
    return [{"role": "user", "content": prompt}] if chat_template else None


def encode(tokenizer: Any, prompts: list[str | list[dict[str, str]]], chat_template: bool) -> list[list[int]]:
    """Token ids of each prompt (plain texts in one batched call); ValueError when a prompt needs
    a chat template the tokenizer lacks."""
    out: list[list[int] | None] = [None] * len(prompts)
    plain = [i for i, p in enumerate(prompts) if messages(p, chat_template) is None]
    if plain:
        for i, ids in zip(plain, tokenizer([prompts[i] for i in plain])["input_ids"], strict=True):
            out[i] = list(ids)
    for i, prompt in enumerate(prompts):
        if out[i] is not None:
            continue
        if not getattr(tokenizer, "chat_template", None):
            why = "the dataset's prompts are chat messages" if isinstance(prompt, list) else \
                "spec.dataset.chatTemplate is true"
            raise ValueError(f"{why}, but the model's tokenizer has no chat template "
                             "(`chat_template` in tokenizer_config.json, or chat_template.jinja)")
        out[i] = list(tokenizer.apply_chat_template(messages(prompt, chat_template), add_generation_prompt=True,
                                                    tokenize=True, return_dict=False))
    return out  # type: ignore[return-value]


def too_long(where: str, overs: list[tuple[str, int]], total: int, limit: int) -> str:
    """The error for the (task id, length) pairs `overs` of `total` prompts `where` ("of split 'x'")."""
    shown = ", ".join(f"{task_id} ({n} tokens)" for task_id, n in overs[:SHOWN])
    more = f" and {len(overs) - SHOWN} more" if len(overs) > SHOWN else ""
    return (f"{len(overs)} of {total} prompts {where} are longer than {LIMIT_FIELD} ({limit}): "
            f"{shown}{more}. Prompts are never cut (a cut prompt loses its question); raise "
            f"maxPromptTokens or drop these tasks")


def check_lengths(tokenizer: Any, spec: api.ReasoningRunSpec, splits: Iterable[tuple[str, list[Any]]]) -> None:
    """ValueError naming the tasks (objects with `.id` and `.prompt`) whose prompts are longer than
    `algorithm.maxPromptTokens`, per split, before any step is spent on them."""
    limit, chat = spec.algorithm.max_prompt_tokens, spec.dataset.chat_template
    errors = []
    for split, tasks in splits:
        lengths = map(len, encode(tokenizer, [t.prompt for t in tasks], chat))
        overs = [(t.id, n) for t, n in zip(tasks, lengths, strict=True) if n > limit]
        if overs:
            errors.append(too_long(f"of split {split!r}", overs, len(tasks), limit))
    if errors:
        raise ValueError("; ".join(errors))
