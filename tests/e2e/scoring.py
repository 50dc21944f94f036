"""Scores a trained countdown policy independently of the code under test: its own greedy decoding
with `transformers`, its own exact arithmetic, the target-blind baselines of `baselines.py`, and the
same policy with every prompt's target swapped for another task's (scored against the true target).

Used by tests/e2e/test_countdown.py and by bench/countdown_seeds.py (the spread over seeds).
"""

from __future__ import annotations

import ast
import operator
from fractions import Fraction
from pathlib import Path

from tests.e2e import baselines

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def value(expr: str) -> Fraction | None:
    """Exact value of a + - * / expression of integers, or None."""
    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Div) and b == 0:
                raise ZeroDivisionError
            return _OPS[type(node.op)](a, b)
        raise ValueError(node)
    try:
        if len(expr) > 64 or not set(expr) <= set("0123456789+-*/() "):
            return None
        return ev(ast.parse(expr, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


def correct(completion: str, numbers: list[int], target: int) -> bool:
    expr = completion.split("\n", 1)[0].split("=", 1)[0].strip()
    used = [int(n.value) for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Constant)] if value(expr) is not None else []
    pool = list(numbers)
    for n in used:
        if n not in pool:
            return False
        pool.remove(n)
    return bool(used) and value(expr) == target


def greedy_accuracy(model_dir: Path, golds: list[dict], targets: list[int], template: str) -> float:
    """Greedy accuracy of the model on tasks `golds` ({"numbers", "target"}), prompted with `targets`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompts = [template.format(numbers=" ".join(map(str, g["numbers"])), target=target) for g, target in zip(golds, targets)]
    hits = 0
    with torch.no_grad():
        for i in range(0, len(prompts), 50):
            enc = tok(prompts[i:i + 50], return_tensors="pt", padding=True)
            out = model.generate(**enc, do_sample=False, max_new_tokens=16, pad_token_id=tok.pad_token_id)
            for j, row in enumerate(out[:, enc["input_ids"].shape[1]:]):
                g = golds[i + j]
                hits += correct(tok.decode(row, skip_special_tokens=True), g["numbers"], g["target"])
    return hits / len(prompts)


def score(model_dir: Path, spec) -> dict:
    """Held-out greedy accuracy of `model_dir` for the run `spec`, the target-blind baselines on the
    same held-out tasks, and the accuracy with the targets swapped."""
    from zeroth.trainer import data

    held_out = data.load_tasks(spec.dataset, spec.dataset.eval_split, spec.algorithm.seed, limit=spec.dataset.eval_size)
    golds = [t.gold for t in held_out]
    template_name, template_acc = baselines.best_fixed_template(golds)
    blind_acc = baselines.best_blind_policy(golds, lambda rng: data.draw_countdown(rng, spec.dataset.countdown)[:2])
    template = spec.dataset.prompt_template
    return {
        "accuracy": greedy_accuracy(model_dir, golds, [g["target"] for g in golds], template),
        "swapped": greedy_accuracy(model_dir, golds, baselines.swapped_targets(golds), template),
        "template": template_name, "template_accuracy": template_acc, "blind_accuracy": blind_acc,
        "baseline": max(template_acc, blind_acc), "prompts": len(golds),
    }
