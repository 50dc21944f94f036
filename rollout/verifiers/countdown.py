"""Countdown: reach the target with the given numbers, each used at most once, with + - * /.

Gold: `{"numbers": [int, ...], "target": int}`. The answer is an arithmetic expression such as
`(9-4)*2`. Score 1 when it is a valid expression over the given numbers whose exact value (in
`fractions.Fraction`) equals the target, else 0.

Rules, chosen on purpose:
- Binary `+ - * /` and parentheses only. No unary minus or plus: countdown combines numbers, and a
  sign flip adds no reachable positive target that reordering a subtraction cannot reach. No `**`,
  `//`, `%`, names, calls, floats or underscores in numbers.
- Each number at most once (a multiset check; not every number has to be used, as in the task
  generator's description). A literal that is not one of the numbers fails.
- Division is exact: intermediate fractions are allowed (`(3/2)*2` is 3), a non-integral final
  value never equals an integer target, and division by zero scores 0.

Defends against: `eval` of anything (the expression is parsed with `ast` and evaluated by a
ten-line interpreter that knows four operators), exponent towers (`9**9**9` is rejected before any
arithmetic), deep nesting and huge inputs (length, node and depth limits are checked before and
after parsing), Unicode digits (Python's parser accepts `١٢` and `１２` as numbers, so only ASCII
characters from a small alphabet pass), reused or invented numbers. Does not defend against a
policy that learns a target-blind template which happens to be right often; that is a property
of the task, not of the verifier.
"""

from __future__ import annotations

import ast
from collections import Counter
from fractions import Fraction
from typing import Any

from zeroth.api import VerifierSpec

from .extract import extract_answer

MAX_EXPRESSION_CHARS = 256
MAX_NODES = 64
MAX_DEPTH = 32
# Only these characters may appear, checked before Python's parser sees the text.
ALPHABET = frozenset("0123456789+-*/() ")
OPERATORS = {ast.Add: Fraction.__add__, ast.Sub: Fraction.__sub__, ast.Mult: Fraction.__mul__}


def check_gold(gold: Any) -> tuple[list[int], int]:
    """The numbers and the target of a countdown gold answer; ValueError when it is malformed."""
    if not isinstance(gold, dict) or "numbers" not in gold or "target" not in gold:
        raise ValueError("countdown gold must be a dict with 'numbers' and 'target'")
    numbers, target = gold["numbers"], gold["target"]
    if not isinstance(numbers, list | tuple) or not all(_is_int(n) for n in numbers) or not _is_int(target):
        raise ValueError("countdown gold 'numbers' must be a list of ints and 'target' an int")
    return [int(n) for n in numbers], int(target)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_expression(text: str) -> ast.expr | None:
    """The syntax tree of a countdown expression, or None when it breaks any rule above."""
    if not text or len(text) > MAX_EXPRESSION_CHARS or not set(text) <= ALPHABET:
        return None
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES or _depth(tree) > MAX_DEPTH:
        return None
    for node in nodes:
        if isinstance(node, ast.BinOp):
            if type(node.op) not in OPERATORS and not isinstance(node.op, ast.Div):
                return None
        elif isinstance(node, ast.Constant):
            if not _is_int(node.value):
                return None
        elif not isinstance(node, ast.operator):
            return None  # unary operators, names, calls, comparisons, tuples...
    return tree


def _depth(node: ast.AST) -> int:
    # Iterative, so the depth check itself cannot overflow the stack.
    deepest, stack = 0, [(node, 1)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(current))
    return deepest


def literals(tree: ast.expr) -> list[int]:
    """The integer literals of an expression, in order."""
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)]


def evaluate(tree: ast.expr) -> Fraction | None:
    """The exact value of a checked expression; None on division by zero."""
    if isinstance(tree, ast.Constant):
        return Fraction(tree.value)
    assert isinstance(tree, ast.BinOp)  # parse_expression let nothing else through
    left, right = evaluate(tree.left), evaluate(tree.right)
    if left is None or right is None:
        return None
    if isinstance(tree.op, ast.Div):
        return None if right == 0 else left / right
    return OPERATORS[type(tree.op)](left, right)


def answer_key(answer: str) -> str | None:
    """The form of an extracted answer that maj@k votes on: the expression without whitespace
    (`9 - 4*2` and `9-4*2` are one answer; `9-2*4` is another, even with the same value)."""
    return "".join(answer.split())


def verify(completion: str, gold: Any, spec: VerifierSpec) -> float:
    """1.0 when the answer reaches the target using each given number at most once, else 0.0."""
    numbers, target = check_gold(gold)
    answer = extract_answer(completion, spec.answer)
    if answer is None:
        return 0.0
    tree = parse_expression(answer)
    if tree is None:
        return 0.0
    if Counter(literals(tree)) - Counter(numbers):
        return 0.0  # a number not given, or used more often than given
    return 1.0 if evaluate(tree) == target else 0.0
