"""Answer extraction: where a verifier reads the answer from (`VerifierSpec.answer`).

Three modes, all strict, all linear-time (plain string searches, no regular expressions):

- `tag`: the content of the LAST complete `<TAG>...</TAG>` block. Only one block ever counts, so
  listing many candidates in many blocks earns nothing (a known reward hack: open-r1's several
  answer blocks). If another `<TAG>` opens after the last `</TAG>`, the completion ended inside an
  unfinished answer: no answer.
- `line`: the first line of the completion, up to the first `=`, for a tiny character-level model
  that writes `9-4*2=1` and never learns tags.
- `boxed`: the content of the LAST `\\boxed{...}`, up to its matching brace (nested braces
  counted: `\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`), as models trained on MATH-style solutions
  write their answers. A last box that never closes (a completion cut inside it) is no answer, nor
  is `\\boxed` without a brace. Like tags, only the last box counts. Hand-written rather than
  math-verify's `extract_boxed_content` (latex2sympy2_extended) on purpose: that one is lenient
  for gold solutions (no box gives the whole text back, an unclosed box the rest of the text, and
  boxes a few characters apart are joined), which a reward must not be.

Defends against: many answer blocks (only the last counts), empty blocks (no answer), blocks of
only invisible characters (no answer either: `is_blank` — whitespace including NBSP, zero-width
and other format characters such as U+200B, U+FEFF, U+2060, controls, unassigned code points,
lone combining marks, and the blank-looking letters U+115F, U+1160, U+3164, U+FFA0, U+2800), nested or
unbalanced tags (only the last closing tag and the last opening tag before it matter), and huge
completions (over `MAX_COMPLETION_CHARS` there is no answer at all, so no later step ever sees
megabytes of hostile text). Does not judge what is inside the block: each verifier bounds and
parses its answer itself.
"""

from __future__ import annotations

import unicodedata

from zeroth.api import AnswerExtraction

# 256 Ki characters is more than any sane maxResponseTokens produces (~4 characters a token);
# a longer completion is treated as having no answer rather than truncated, so text beyond the
# limit can never decide a reward.
MAX_COMPLETION_CHARS = 256 * 1024


# Unicode categories that draw nothing: format (zero-width spaces and joiners, BOM, word joiner,
# bidi marks), controls, unassigned and surrogate code points, separators, lone combining marks.
INVISIBLE_CATEGORIES = frozenset({"Cf", "Cc", "Cn", "Cs", "Zs", "Zl", "Zp", "Mn", "Me"})
# Letters and symbols that render as blanks (Hangul fillers, the Braille blank).
INVISIBLE_CHARACTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def is_blank(text: str) -> bool:
    """Whether `text` shows nothing: empty, or only whitespace and invisible characters."""
    return all(
        c.isspace() or c in INVISIBLE_CHARACTERS or unicodedata.category(c) in INVISIBLE_CATEGORIES
        for c in text
    )


def last_tag_block(text: str, tag: str) -> str | None:
    """The content of the last complete `<tag>...</tag>` block of `text`, unstripped; None if none."""
    if not tag:
        raise ValueError("answer.tag must be set when answer.mode is 'tag'")
    opening, closing = f"<{tag}>", f"</{tag}>"
    end = text.rfind(closing)
    if end < 0:
        return None
    if text.find(opening, end + len(closing)) >= 0:
        return None  # an answer block opened after the last one closed: the completion is unfinished
    start = text.rfind(opening, 0, end)
    if start < 0:
        return None
    return text[start + len(opening) : end]


BOXED = "\\boxed"


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` of `text` (balanced braces), unstripped; None if none."""
    start = text.rfind(BOXED)
    if start < 0:
        return None
    i = start + len(BOXED)
    while i < len(text) and text[i] in " \t":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None  # never closed: the completion stopped inside its answer


def first_line_before_equals(text: str) -> str:
    """The first line of `text`, up to its first `=` (`9-4*2=1` gives `9-4*2`)."""
    line = text.split("\n", 1)[0]
    return line.split("=", 1)[0]


def extract_answer(completion: str, answer: AnswerExtraction) -> str | None:
    """The answer text a verifier should judge, stripped; None when there is no answer, or only
    whitespace and invisible characters (`is_blank`)."""
    if not isinstance(completion, str) or len(completion) > MAX_COMPLETION_CHARS:
        return None
    if answer.mode == "tag":
        found = last_tag_block(completion, answer.tag)
    elif answer.mode == "line":
        found = first_line_before_equals(completion)
    elif answer.mode == "boxed":
        found = last_boxed(completion)
    else:
        raise ValueError(f"unknown answer mode {answer.mode!r}; known: 'tag', 'line', 'boxed'")
    if found is None:
        return None
    found = found.strip()
    return None if is_blank(found) else found
