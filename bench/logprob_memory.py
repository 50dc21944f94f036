"""Memory and speed of the trainer's log-prob pass: the old path against the block-wise one.

The old path (kept here only, for the comparison) computed logits at every position, prompt
included, then a float32 log-softmax over the whole vocabulary and, in the graph, the entropy from
it. The new one (`zeroth.trainer.engine.token_logprobs`) computes logits only at the completion's
positions (`logits_to_keep`), log p = logit[token] - logsumexp(logits) block by block with each
block recomputed in the backward pass instead of kept, and the entropy as a metric outside the
graph (an entropy bonus, entropyCoef != 0, puts it back in).

One pass is what a training micro-batch does: forward, log-probs and entropy, a token-mean loss,
backward. On a freshly initialised tiny-arith GPT-2 (the CPU example's architecture; weights do not
change the cost) with countdown-tiny's micro-batch (64 samples, prompts of 16-19 tokens,
completions of 4-16), and the same layers with a 32k vocabulary, the size of real tokenizers'.
Each measurement runs in a fresh process: after a warm-up pass (and `malloc_trim`, so that memory
freed by it is mapped again when needed), peak memory is the rise of the peak resident set (VmHWM)
over the resident set before one pass; tokens/s counts completion tokens over `--passes` more
passes; medians of `--rounds` processes each, old and new alternating.

    python bench/logprob_memory.py [--rounds 3] [--passes 5]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {"tiny-arith": None, "tiny-arith layers, 32k vocabulary": 32_000}  # name -> vocabulary (None: its own)
BATCH, PROMPT, COMPLETION = 64, (16, 19), (4, 16)


def old_token_logprobs(model, batch, temperature):
    """The trainer's log-prob pass before block-wise log-probs (entropy always in the graph)."""
    import torch

    P = batch["input_ids"].shape[1] - batch["completion_mask"].shape[1]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], use_cache=False).logits
    logits = logits[:, P - 1:-1].float() / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, batch["input_ids"][:, P:].unsqueeze(-1)).squeeze(-1)
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def _status(field: str) -> int:
    """A /proc/self/status field, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(path: str, model_name: str, passes: int) -> None:
    """One measurement: prints {"peak_mib", "tokens_per_second"} as JSON."""
    import torch

    from zeroth.rollout.worker import Sample
    from zeroth.trainer import models
    from zeroth.trainer.engine import pad_batch, token_logprobs

    tokenizer = models.build_tokenizer()
    model = models.build_model(tokenizer, seed=0)
    vocab = MODELS[model_name]
    if vocab:
        model.resize_token_embeddings(vocab)
    rng = random.Random(0)
    samples = []
    for i in range(BATCH):
        c = rng.randint(*COMPLETION)
        prompt = [rng.randrange(4, 28) for _ in range(rng.randint(*PROMPT))]
        samples.append(Sample(task_id=str(i), group=i // 16, prompt_ids=prompt,
                              completion_ids=[rng.randrange(4, 28) for _ in range(c)], logprobs=[0.0] * c,
                              completion="", reward=0.0, scores={}, correct=False, truncated=False, version=0))
    batch = pad_batch(samples, tokenizer.pad_token_id)
    mask = batch["completion_mask"]

    def one_pass() -> None:
        if path == "old":
            logp, entropy = old_token_logprobs(model, batch, 1.0)
        else:
            logp, entropy = token_logprobs(model, batch, 1.0, entropy="metric")
        float((entropy.detach() * mask).sum())  # the step's entropy metric; `entropy` lives on, as in a step
        loss = -(logp * mask).sum() / mask.sum()
        loss.backward()
        model.zero_grad(set_to_none=True)

    one_pass()  # warm-up: lazy imports and first-call set-up are not the pass's memory
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hands back what the warm-up freed, so the pass must map it again
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    before = _status("VmRSS")
    one_pass()
    peak = _status("VmHWM") - before
    t0 = time.perf_counter()
    for _ in range(passes):
        one_pass()
    seconds = time.perf_counter() - t0
    print(json.dumps({"peak_mib": peak / 1024, "tokens_per_second": float(mask.sum()) * passes / seconds}))


def measure(model_name: str, passes: int, rounds: int) -> dict[str, tuple[float, float]]:
    """path -> (peak MiB, tokens/s), medians; old and new alternate, so a busy machine slows both."""
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for _ in range(rounds):
        for path, results in runs.items():
            out = subprocess.run([sys.executable, __file__, "--child", path, model_name, "--passes", str(passes)],
                                 check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
    return {path: (statistics.median(r["peak_mib"] for r in results),
                   statistics.median(r["tokens_per_second"] for r in results)) for path, results in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--child", nargs=2, metavar=("PATH", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.passes)
        return
    table = Table(title=f"Log-prob training pass, micro-batch of {BATCH} (prompts {PROMPT[0]}-{PROMPT[1]}, "
                        f"completions {COMPLETION[0]}-{COMPLETION[1]} tokens), median of {args.rounds} processes",
                  caption="old: logits at every position, fp32 log-softmax of all, entropy in the graph; "
                          "new: completion logits only, block-wise and recomputed, entropy as a metric")
    for col in ("model", "path", "peak memory (MiB)", "completion tokens/s", "memory old / new", "speed new / old"):
        table.add_column(col, justify="left" if col in ("model", "path") else "right")
    for name in MODELS:
        (old_mib, old_tps), (new_mib, new_tps) = measure(name, args.passes, args.rounds).values()
        table.add_row(name, "old", f"{old_mib:.1f}", f"{old_tps:,.0f}", "", "")
        table.add_row("", "new", f"{new_mib:.1f}", f"{new_tps:,.0f}", f"{old_mib / new_mib:.2f}",
                      f"{new_tps / old_tps:.2f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
