"""A freshly initialised tiny-arith GPT-2 saved as a Hugging Face folder: for tests that need
weights of the real architecture, not skill (no pretraining, so no cache and no wait)."""

from __future__ import annotations

from pathlib import Path

from zeroth.trainer import models


def save_random_tiny(path: Path, seed: int = 0) -> Path:
    tokenizer = models.build_tokenizer()
    models.build_model(tokenizer, seed=seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
