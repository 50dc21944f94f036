"""Format: the completion is one reasoning block followed by one answer block, and nothing else.

Accepted shape (whitespace allowed around and between the blocks):

    <think> reasoning </think> <answer> answer </answer>

The leading `<think>` is optional, because R1-Zero prompt templates end with `<think>` and the
completion then starts directly with the reasoning. Either way there must be exactly one
`</think>`, at most one `<think>` (and then at the very start), exactly one `<answer>` and one
`</answer>`, in that order, with nothing after `</answer>`. The reasoning may be empty (as in the
R1 regex); the answer may not, so an empty answer block earns no format reward, nor does one of
only invisible characters (zero-width spaces, BOMs, word joiners, NBSPs: `extract.is_blank`).
The answer tag is `spec.answer.tag` when the answer is read from a tag, else `answer`.

Defends against: several think or answer blocks (the open-r1 format hack), text after the answer
(a second try appended after the graded block), answer tags inside the reasoning, empty or
invisible answers, huge completions (over the extraction limit there is no format reward).
Does not judge whether
the reasoning is reasoning: a format reward only shapes the output, and its weight should stay
small next to the correctness verifiers.
"""

from __future__ import annotations

from typing import Any

from zeroth.api import VerifierSpec

from .extract import MAX_COMPLETION_CHARS, is_blank

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def well_formed(completion: str, tag: str = "answer") -> bool:
    """Whether `completion` is `[<think>]...</think><tag>...</tag>` with a non-empty answer."""
    if not isinstance(completion, str) or len(completion) > MAX_COMPLETION_CHARS:
        return False
    opening, closing = f"<{tag}>", f"</{tag}>"
    text = completion.strip()
    counts = (text.count(THINK_OPEN), text.count(THINK_CLOSE), text.count(opening), text.count(closing))
    if counts[0] > 1 or counts[1:] != (1, 1, 1):
        return False
    if counts[0] == 1:
        if not text.startswith(THINK_OPEN):
            return False
        text = text[len(THINK_OPEN) :]
    _reasoning, rest = text.split(THINK_CLOSE)
    rest = rest.strip()
    if not (rest.startswith(opening) and rest.endswith(closing)):
        return False
    return not is_blank(rest[len(opening) : -len(closing)])


def verify(completion: str, gold: Any, spec: VerifierSpec) -> float:
    """1.0 when the completion has the think-then-answer shape, else 0.0. `gold` is ignored."""
    tag = spec.answer.tag if spec.answer.mode == "tag" and spec.answer.tag else "answer"
    return 1.0 if well_formed(completion, tag) else 0.0
