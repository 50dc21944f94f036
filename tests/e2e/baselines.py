"""Target-blind baselines for countdown, computed here, independently of the code under test.

A tiny model can raise its reward by copying the prompt's numbers into a fixed expression, which
ignores the target. These baselines say what ignoring the target can reach on a held-out set:
- the best fixed template: one expression shape over the numbers in the order shown
  (`a+b+c`, `(a-b)*c`, `b/(a-c)`, `a*b`, ...), every operator, order and bracketing tried;
- the best target-blind policy: for each multiset of numbers, always answer the target that the
  task generator most often pairs with it (estimated from many draws of the generator).
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from fractions import Fraction
from typing import Callable

OPS: dict[str, Callable[[Fraction, Fraction], Fraction | None]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b if b != 0 else None,
}


def templates(n: int):
    """Every expression shape over n positional numbers (n = 2 or 3), as (name, function)."""
    out = []
    for k in range(2, n + 1):
        for positions in itertools.permutations(range(n), k):
            for ops in itertools.product(OPS, repeat=k - 1):
                if k == 2:
                    out.append((f"x{positions[0]}{ops[0]}x{positions[1]}", _two(positions, ops)))
                else:
                    out.append((f"(x{positions[0]}{ops[0]}x{positions[1]}){ops[1]}x{positions[2]}", _left(positions, ops)))
                    out.append((f"x{positions[0]}{ops[0]}(x{positions[1]}{ops[1]}x{positions[2]})", _right(positions, ops)))
    return out


def _apply(op, a, b):
    if a is None or b is None:
        return None
    return OPS[op](a, b)


def _two(p, ops):
    return lambda xs: _apply(ops[0], Fraction(xs[p[0]]), Fraction(xs[p[1]]))


def _left(p, ops):
    return lambda xs: _apply(ops[1], _apply(ops[0], Fraction(xs[p[0]]), Fraction(xs[p[1]])), Fraction(xs[p[2]]))


def _right(p, ops):
    return lambda xs: _apply(ops[0], Fraction(xs[p[0]]), _apply(ops[1], Fraction(xs[p[1]]), Fraction(xs[p[2]])))


def best_fixed_template(tasks: list[dict]) -> tuple[str, float]:
    """The template with the highest accuracy on `tasks` ({"numbers", "target"}), and that accuracy."""
    n = len(tasks[0]["numbers"])
    best = ("", -1.0)
    for name, fn in templates(n):
        hits = sum(fn(t["numbers"]) == t["target"] for t in tasks)
        if hits / len(tasks) > best[1]:
            best = (name, hits / len(tasks))
    return best


def best_blind_policy(tasks: list[dict], draw: Callable[[random.Random], tuple[list[int], int]], draws: int = 200_000,
                      seed: int = 12345) -> float:
    """Accuracy on `tasks` of answering, for each number multiset, its most frequent target under
    the generator `draw(rng) -> (numbers, target)`."""
    rng = random.Random(seed)
    by_numbers: dict[tuple[int, ...], Counter] = {}
    for _ in range(draws):
        numbers, target = draw(rng)
        by_numbers.setdefault(tuple(sorted(numbers)), Counter())[target] += 1
    hits = 0
    for t in tasks:
        counts = by_numbers.get(tuple(sorted(t["numbers"])))
        hits += bool(counts) and counts.most_common(1)[0][0] == t["target"]
    return hits / len(tasks)


def swapped_targets(tasks: list[dict], seed: int = 7) -> list[int]:
    """Each task's target replaced by another task's (a derangement where targets differ)."""
    rng = random.Random(seed)
    targets = [t["target"] for t in tasks]
    order = list(range(len(tasks)))
    for _ in range(100):
        rng.shuffle(order)
        if all(targets[i] != targets[j] or len(set(targets)) == 1 for i, j in enumerate(order)):
            break
    return [targets[j] for j in order]
