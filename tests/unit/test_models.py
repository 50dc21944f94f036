"""builtin:tiny-arith: its tokenizer, its corpus (never a countdown solution), its cache, its loading."""

from __future__ import annotations

import ast
import fcntl
import itertools
import random
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

from zeroth.api import BUILTIN_MODELS, ModelSpec
from zeroth.trainer import models

# Enough pretraining for the tests' sanity checks, a few seconds on one CPU thread.
TEST_TOKENS = 60_000


def value(node: ast.AST) -> tuple[Fraction, list[int]]:
    """Exact value of an arithmetic expression and the numbers it uses: independent of the code
    under test (Python's own parser, Fractions)."""
    if isinstance(node, ast.Expression):
        return value(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Fraction(node.value), [node.value]
    if isinstance(node, ast.BinOp):
        (a, na), (b, nb) = value(node.left), value(node.right)
        ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b, ast.Div: lambda: a / b}
        return ops[type(node.op)](), na + nb
    raise ValueError(ast.dump(node))


def parse(expr: str) -> tuple[Fraction, list[int]]:
    return value(ast.parse(expr, mode="eval"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """tiny-arith built through the real cache path, into a temporary cache, on a small budget."""
    cache = tmp_path_factory.mktemp("models")
    return cache, models.tiny_arith_path(cache, tokens=TEST_TOKENS)


# --- tokenizer ----------------------------------------------------------------------------------


def test_tokenizer_round_trips_every_string_over_the_alphabet():
    tok = models.build_tokenizer()
    rng = random.Random(0)
    samples = list(models.ALPHABET) + ["".join(rng.choices(models.ALPHABET, k=rng.randint(1, 40))) for _ in range(300)]
    samples += ["12=12\nnums 3 4  5: (3+4)*5=35\n", "  \n\n", "nums 1 2: 1/2-(2*1)=-1"]
    for s in samples:
        ids = tok(s).input_ids
        assert ids[0] == tok.bos_token_id and len(ids) == len(s) + 1  # one id per character
        assert tok.decode(ids, skip_special_tokens=True) == s
    assert len(set(tok(models.ALPHABET).input_ids)) == len(models.ALPHABET) + 1


def test_tokenizer_maps_other_characters_to_unk():
    tok = models.build_tokenizer()
    assert tok("x1").input_ids[1:] == [tok.unk_token_id, tok.convert_tokens_to_ids("1")]


# --- the corpus ---------------------------------------------------------------------------------

LINE = re.compile(r"^(?:nums ((?:[1-9] )*[1-9]): )?([0-9+\-*/()]+)=(-?[0-9]+)$")


def test_corpus_is_arithmetic_and_never_a_countdown_solution():
    """Each line is `expr=val` (optionally after `nums ...: `): an expression first, then its exact
    integer value, so no target ever precedes an expression; `nums` lines use only listed numbers,
    each at most once."""
    lines = list(itertools.islice(models.arith_lines(0), 20_000))
    kinds = Counter()
    for line in lines:
        m = LINE.match(line)
        assert m, line
        listed, expr, result = m.groups()
        val, used = parse(expr)
        assert val == int(result), line
        assert "=" not in expr and "\n" not in line
        if listed is not None:
            kinds["nums"] += 1
            left = Counter(int(n) for n in listed.split())
            left.subtract(used)
            assert min(left.values()) >= 0, line
        else:
            kinds["plain"] += 1
            kinds["single"] += expr.isdigit()
    assert 0.72 < kinds["nums"] / len(lines) < 0.78
    assert kinds["single"] > 0.04 * len(lines)  # `T=T` lines are ordinary text
    assert any(len(line.split("=")[0]) == 3 and line.split("=")[0].isdigit() for line in lines)


def test_corpus_is_seeded():
    a = list(itertools.islice(models.arith_lines(1), 100))
    assert a == list(itertools.islice(models.arith_lines(1), 100))
    assert a != list(itertools.islice(models.arith_lines(2), 100))


def test_windows_start_at_a_line_after_bos():
    tok = models.build_tokenizer()
    lines = iter(["1+2=3", "nums 4 5: 4*5=20"] * 20)
    first = next(models.windows(lines, tok.get_vocab(), tok.bos_token_id, 32))
    assert len(first) == 32 and tok.decode(first) == "<bos>1+2=3\nnums 4 5: 4*5=20\n1+2=3\nnu"


# --- the built model and the cache --------------------------------------------------------------


def test_loads_through_from_pretrained(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, path = built
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert 0.7e6 < sum(p.numel() for p in model.parameters()) < 0.9e6
    assert model.config.vocab_size == len(tok) and model.config.n_positions == models.CONTEXT
    assert model.config.activation_function == "gelu"
    newline = tok.convert_tokens_to_ids("\n")
    assert newline in model.generation_config.eos_token_id  # a completion is one line
    assert tok.decode(tok("7=7\nnums 1 2 3: ").input_ids, skip_special_tokens=True) == "7=7\nnums 1 2 3: "
    assert (path / "zeroth-build.json").is_file()


def test_the_cache_is_reused(built, monkeypatch):
    cache, path = built
    stamp = (path / "model.safetensors").stat().st_mtime_ns

    def no_build(*_, **__):
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(models, "build_tiny_arith", no_build)
    assert models.tiny_arith_path(cache, tokens=TEST_TOKENS) == path
    monkeypatch.setattr(models, "PRETRAIN_TOKENS", TEST_TOKENS)
    assert models.resolve(ModelSpec(name="builtin:tiny-arith"), cache_dir=cache) == str(path)
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [path.name]  # no temp folder left


def test_the_key_names_the_recipe(built):
    _, path = built
    assert path.name == f"tiny-arith-{models.recipe_key(TEST_TOKENS)}"
    assert models.recipe_key(TEST_TOKENS) != models.recipe_key(TEST_TOKENS + 1)


def test_cache_location_follows_zeroth_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEROTH_CACHE", str(tmp_path))
    assert models.models_cache() == tmp_path / "models"


def test_pretrained_model_prefers_correct_arithmetic(built):
    """Even a short pretraining ranks a true line above the same characters scrambled, and above
    a wrong result."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, path = built
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)

    def loss(text: str) -> float:
        ids = torch.tensor([tok(text).input_ids])
        with torch.no_grad():
            return model(input_ids=ids, labels=ids).loss.item()

    rng = random.Random(0)
    for line in ["nums 4 9 2: 9-4*2=1\n", "3*(2+5)=21\n", "nums 6 3: 6/3=2\n"]:
        chars = list(line[:-1])
        rng.shuffle(chars)
        assert loss(line) < loss("".join(chars) + "\n"), line
    assert loss("nums 3 4: 3+4=7\n") < loss("nums 3 4: 3+4=9-\n")


def test_builds_are_deterministic(tmp_path):
    import torch
    from safetensors.torch import load_file

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        models.build_tiny_arith(tmp_path / name, tokens=2 * models.BATCH * models.CONTEXT, seed=5)
    a, b = (load_file(tmp_path / n / "model.safetensors") for n in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resolve_passes_other_names_through_and_rejects_unknown_builtins(tmp_path):
    assert models.resolve(ModelSpec(name="Qwen/Qwen2.5-3B", revision="abc")) == "Qwen/Qwen2.5-3B"
    assert models.resolve(ModelSpec(name="/models/mine")) == "/models/mine"
    with pytest.raises(ValueError, match="builtin:tiny-arith"):
        models.resolve(ModelSpec(name="builtin:huge"), cache_dir=tmp_path)


def test_builtins_match_the_api():
    assert set(models.BUILTINS) == set(BUILTIN_MODELS)


def test_building_is_announced_once_the_lock_is_held_and_only_by_the_builder(tmp_path, built):
    cache, path = built
    calls = []
    assert models.tiny_arith_path(cache, tokens=TEST_TOKENS, building=lambda: calls.append("cached")) == path
    assert calls == []  # nothing to build: `zeroth run` starts the trainer at once
    fresh = tmp_path / "fresh"

    def building():
        lock = fresh / f".{models.tiny_arith_location(fresh, TEST_TOKENS).name}.lock"
        with open(lock) as other:  # another process (a trainer rank) must now wait for this build
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        calls.append("building")

    models.tiny_arith_path(fresh, tokens=TEST_TOKENS, building=building)
    assert calls == ["building"]


def test_the_recipe_key_follows_the_recipe_not_the_cache_code(tmp_path, monkeypatch):
    source = Path(models.__file__).read_text()
    key = models.recipe_key(TEST_TOKENS)
    head, tail = source.split("# --- the cache ---", 1)
    for name, text, same in [("cache-edit.py", head + "# --- the cache ---" + tail + "\n# how the cache is kept\n", True),
                             ("recipe-edit.py", head.replace("LEARNING_RATE = ", "LEARNING_RATE = 0.5 * ", 1)
                              + "# --- the cache ---" + tail, False)]:
        (tmp_path / name).write_text(text)
        monkeypatch.setattr(models, "__file__", str(tmp_path / name))
        assert (models.recipe_key(TEST_TOKENS) == key) is same, name
