"""Models: what a run's `model.name` loads from, and the `builtin:tiny-arith` model built here.

`resolve` turns a `ModelSpec` into the argument of `from_pretrained`: a hub id or path as it is,
or, for `builtin:tiny-arith`, a folder built once on this machine and cached under
`$ZEROTH_CACHE/models/` (default `~/.cache/zeroth/models/`). Either way the model then loads
through `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`, the code path a
hub model takes, so tests exercise the real loading code without a hub.

tiny-arith is a 0.8 M-parameter GPT-2 over single characters, pretrained for a fixed token budget
on generic arithmetic text so that RL has a base model that can already write expressions
(RECIPES.md, "RL on a tiny model on this CPU"):

- 75 % of lines list some numbers, then an expression using each listed number at most once
  (nearly always all of them), and its exact integer value: `nums 4 9 2: 9-4*2=1`;
- 25 % are plain `expr=val` lines, including single numbers (`347=347`), so the countdown prompt
  `T=T\\nnums a b c: ` reads as two ordinary lines.

No line puts a target before an expression, and no line is a countdown solution: learning to
reach a target is left to RL. Measured on countdown-tiny's 200 held-out prompts, the base model
answers 5.5 % correctly greedy, 4.5 % at temperature 1 (pass@8 19 %); the best fixed template
scores 8.5 % there.

For the engine: the tokenizer prepends `<bos>` (every pretraining window starts with it, then a
line); a newline ends a completion (the generation config lists it as an EOS: in this text a line
is a whole answer); a prompt plus its completion must fit CONTEXT tokens.

The cache key hashes this file's source, the arithmetic it draws on, the token budget and the
library versions, so any change to the recipe builds a new model instead of reusing a stale one.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from zeroth.api import BUILTIN_MODELS, ModelSpec
from zeroth.trainer import data

log = logging.getLogger(__name__)

TINY_ARITH = "tiny-arith"
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
ALPHABET = "0123456789+-*/()= \nnums:"
# Context = training window. Windows hold about 2.5 lines: 128-token windows (7 lines) taught the
# model to copy the current line's numbers far more slowly (1 % valid countdown answers after 1 M
# tokens, against 56 % for 32-token windows), since it must first learn to skip earlier lines. A
# prompt plus completion must fit: countdown-tiny's 32 + 16 tokens do.
CONTEXT = 48
# GPT-2 with plain `gelu` (`gelu_new` is Python-level ops, 22 % of step time at this size) and no
# dropout (the RL engine's log-probs must not depend on a dropout mask).
GPT2 = dict(n_layer=4, n_embd=128, n_head=4, n_positions=CONTEXT, activation_function="gelu",
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)

# The corpus.
NUMS_SHARE = 0.75  # `nums ...: expr=val` lines; the rest are plain `expr=val`
NUMS_COUNTS = ((1, 2, 3, 4), (1, 3, 4, 3))  # how many numbers a line lists, with weights
USE_ALL = 0.85  # share of `nums` lines whose expression uses every listed number
PLAIN_COUNTS = ((1, 2, 3, 4), (2, 3, 3, 2))
MAX_DIGIT = 9  # numbers in expressions; single-number lines go to 999 so any target can be copied

# Pretraining.
PRETRAIN_TOKENS = 3_200_000
PRETRAIN_SEED = 0
BATCH = 32
LEARNING_RATE = 2e-3
WARMUP_STEPS = 100
FINAL_LR_FRACTION = 0.1


# --- the corpus (pure) ------------------------------------------------------------------------


def _expression_line(rng: random.Random, numbers: list[int]) -> str:
    while True:
        drawn = data.random_expression(rng, numbers)
        if drawn and drawn[1].denominator == 1:
            return f"{drawn[0]}={drawn[1]}"


def arith_line(rng: random.Random) -> str:
    """One line of the pretraining text: `nums 4 9 2: 9-4*2=1` or `5*(1+5)=30` or `347=347`."""
    if rng.random() < NUMS_SHARE:
        count = rng.choices(*NUMS_COUNTS)[0]
        numbers = [rng.randint(1, MAX_DIGIT) for _ in range(count)]
        used = numbers if rng.random() < USE_ALL else rng.sample(numbers, rng.randint(1, count))
        return f"nums {' '.join(map(str, numbers))}: {_expression_line(rng, used)}"
    count = rng.choices(*PLAIN_COUNTS)[0]
    if count == 1:
        n = rng.randint(1, 10 ** rng.randint(1, 3) - 1)
        return f"{n}={n}"
    return _expression_line(rng, [rng.randint(1, MAX_DIGIT) for _ in range(count)])


def arith_lines(seed: int) -> Iterator[str]:
    """The endless, seeded stream of pretraining lines."""
    rng = random.Random(f"tiny-arith:{seed}")
    while True:
        yield arith_line(rng)


def windows(lines: Iterator[str], encode: dict[str, int], bos: int, length: int) -> Iterator[list[int]]:
    """Training sequences of `length` ids: BOS, then whole lines joined by newlines, the last one cut.

    Each sequence starts at a line start right after BOS, as a prompt does at inference.
    """
    while True:
        ids = [bos]
        while len(ids) < length:
            ids.extend(encode[c] for c in next(lines) + "\n")
        yield ids[:length]


# --- the tokenizer and the model --------------------------------------------------------------


def build_tokenizer():
    """A character-level tokenizer over ALPHABET: one id per character, BOS prepended, `<unk>`
    for anything else; decoding concatenates characters (no spaces invented between them)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *ALPHABET])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    bos = vocab["<bos>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B:1", special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=CONTEXT, clean_up_tokenization_spaces=False)


def build_model(tokenizer, seed: int):
    """A freshly initialised GPT-2 sized for this tokenizer, with a generation config that stops at
    a newline (or EOS)."""
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    ids = tokenizer.get_vocab()
    config = GPT2Config(vocab_size=len(ids), bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"],
                        pad_token_id=ids["<pad>"], **GPT2)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<bos>"], eos_token_id=[ids["<eos>"], ids["\n"]], pad_token_id=ids["<pad>"])
    return model


def _progress(total: int):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(TextColumn("pretraining tiny-arith"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn(),
                    console=console, disable=not console.is_terminal)


def pretrain(model, tokenizer, tokens: int, seed: int) -> dict[str, float]:
    """Train `model` on `tokens` tokens of arith_lines(seed): AdamW, linear warm-up, cosine decay.

    Returns measurements: seconds, tokens per second, the first and last loss (nats per char,
    the last averaged over the final 5 % of steps).
    """
    import torch

    steps = max(1, tokens // (BATCH * CONTEXT))
    stream = windows(arith_lines(seed), tokenizer.get_vocab(), tokenizer.bos_token_id, CONTEXT)
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.95), weight_decay=0.01)

    def lr_factor(step: int) -> float:
        if step < WARMUP_STEPS:
            return (step + 1) / WARMUP_STEPS
        done = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
        return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * done))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    with _progress(steps) as bar:
        task = bar.add_task("pretrain", total=steps, loss=float("nan"))
        for _ in range(steps):
            batch = torch.tensor([next(stream) for _ in range(BATCH)])
            loss = model(input_ids=batch, labels=batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(task, advance=1, loss=losses[-1])
    model.eval()
    seconds = time.perf_counter() - start
    tail = losses[-max(1, steps // 20):]
    return {"seconds": seconds, "tokens": steps * BATCH * CONTEXT, "tokens_per_second": steps * BATCH * CONTEXT / seconds,
            "first_loss": losses[0], "final_loss": sum(tail) / len(tail), "steps": steps}


def build_tiny_arith(dest: Path, tokens: int = PRETRAIN_TOKENS, seed: int = PRETRAIN_SEED) -> dict[str, float]:
    """Build, pretrain and save tiny-arith into `dest` (save_pretrained); returns pretrain's
    measurements, which are also saved beside the weights as `zeroth-build.json`."""
    import torch

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed)
    # One thread: the same weights whatever the machine's core count, and at this size more
    # threads barely help.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        stats = pretrain(model, tokenizer, tokens, seed)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    (dest / "zeroth-build.json").write_text(json.dumps({"recipe": recipe_key(tokens), **stats}, indent=2) + "\n")
    return stats


# --- the cache --------------------------------------------------------------------------------

_CACHE_SECTION = "# --- the cache ---"

from zeroth.trainer import model_cache  # noqa: E402 - here, not above: the recipe key hashes the file above the section


def models_cache() -> Path:
    """`$ZEROTH_CACHE/models`, default `~/.cache/zeroth/models`."""
    return Path(os.environ.get("ZEROTH_CACHE") or "~/.cache/zeroth").expanduser() / "models"


def recipe_key(tokens: int) -> str:
    """12 hex digits naming one build recipe: this file down to this section (the corpus, the
    tokenizer, the model and its pretraining; not how the cache is kept, so an edit there rebuilds
    nothing), the arithmetic it uses, the token budget and the versions of the libraries that
    compute the weights."""
    import tokenizers
    import torch
    import transformers

    recipe = Path(__file__).read_text().split(_CACHE_SECTION, 1)[0]
    parts = [recipe, inspect.getsource(data.random_expression), str(tokens),
             torch.__version__, transformers.__version__, tokenizers.__version__]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def tiny_arith_location(cache_dir: Path | None = None, tokens: int | None = None) -> Path:
    """Where tiny-arith for this recipe is (or will be, once built)."""
    tokens = PRETRAIN_TOKENS if tokens is None else tokens
    root = Path(cache_dir) if cache_dir is not None else models_cache()
    return root / f"{TINY_ARITH}-{recipe_key(tokens)}"


def tiny_arith_path(cache_dir: Path | None = None, tokens: int | None = None,
                    building: Callable[[], None] | None = None) -> Path:
    """The folder of tiny-arith for this recipe (PRETRAIN_TOKENS unless `tokens`), built first if missing.

    Built in a temporary folder and renamed into place, so a folder under its final name is always
    complete; a file lock makes concurrent processes (trainer and rollout replicas starting
    together) wait for one build instead of each running their own, for as long as it takes (no
    timeout). `building()` is called once this process holds the lock and is about to build.
    """
    tokens = PRETRAIN_TOKENS if tokens is None else tokens
    final = tiny_arith_location(cache_dir, tokens)
    if final.is_dir():
        return final
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not final.is_dir():
            if building is not None:
                building()
            log.info("building %s into %s (once per recipe, minutes on one CPU thread)", TINY_ARITH, final)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
            try:
                stats = build_tiny_arith(tmp, tokens)
                tmp.chmod(0o755)  # mkdtemp's 0700 would hide the model from other users of the cache
                os.rename(tmp, final)
                log.info("built %s: %d tokens in %.0f s (%.0f tokens/s), loss %.2f -> %.2f nats/char", TINY_ARITH,
                         stats["tokens"], stats["seconds"], stats["tokens_per_second"], stats["first_loss"], stats["final_loss"])
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return final


# Builders of `builtin:` models, and where each is once built; a test checks these match zeroth.api.BUILTIN_MODELS.
BUILTINS = {TINY_ARITH: tiny_arith_path}
LOCATIONS = {TINY_ARITH: tiny_arith_location}


def resolve(model: ModelSpec, cache_dir: Path | None = None, building: Callable[[], None] | None = None) -> str:
    """What to pass to `from_pretrained`: a built-in model's cached folder (built if missing, or
    waited for while another process builds it); with a shared model cache (`spec.modelCache`,
    `$ZEROTH_MODEL_CACHE`), a hub model's snapshot folder in it (downloaded by one process, waited
    for by the others); else the hub id or path as it is (the caller passes `model.revision`).
    `cache_dir` replaces `$ZEROTH_CACHE/models`; a built-in model missing there (not in the image)
    is built into the shared cache, when there is one. `building()` is called when this process
    starts a build."""
    kind, _, name = model.name.partition(":")
    shared = model_cache.cache_root()
    if kind != "builtin":
        if shared is not None and not Path(model.name).exists():  # a hub id, downloaded once for every pod
            return str(model_cache.cached_snapshot(model.name, model.revision, shared))
        return model.name
    if name not in BUILTINS:
        raise ValueError(f"unknown built-in model {model.name!r}; known: "
                         + ", ".join(f"builtin:{n}" for n in BUILTIN_MODELS))
    if cache_dir is None and shared is not None and not LOCATIONS[name]().is_dir():
        cache_dir = shared  # built once for every pod of the run, and kept for the next
    return str(BUILTINS[name](cache_dir, building=building))
