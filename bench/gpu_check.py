"""The GPU check: the real trainer and vLLM rollouts on a model of real shape, a few steps, every
check that needs a GPU, and a table. A few minutes on one H200.

It builds here, with no hub: a Qwen2 of Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads,
2 KV heads, intermediate 4864, vocabulary 151936, tied embeddings) initialised at random, and a
byte-level BPE tokenizer trained on generated text, with Qwen's special tokens (`<|endoftext|>`,
`<|im_start|>`, `<|im_end|>` right after the BPE vocabulary, as in Qwen's) and a ChatML chat
template, padded with reserved tokens to the model's vocabulary. Then, for each configuration, it
runs `zeroth run` on a generated manifest (builtin countdown through the chat template; trainer on
CUDA, ZeRO-2, bf16; vLLM rollouts) for `--steps` steps:

- one GPU: tensor parallelism 1, the engine beside the trainer on GPU 0 (local Ray), weights once
  through Ray's object store (what `zeroth run` does there) and once by broadcast over gloo (the
  broadcast protocol into vLLM's workers; NCCL refuses two ranks on one GPU);
- two or more: the engine on GPUs of its own (a Ray head this script starts on GPUs 1..; the
  trainer keeps GPU 0), weights by NCCL broadcast as on a cluster, at tensor parallelism 1, and 2
  when there are three GPUs (with two, TP 2 runs beside the trainer, through the object store).

Checks, each failing the script (exit 1):
- after every weight sync the rollout's weights equal the trainer's: the trainer compares
  checksums after each publish (`ZEROTH_VERIFY_WEIGHTS`) and fails the run otherwise; the script
  counts the versions verified (0 .. steps);
- trainer and rollout log-probs of the sampled tokens agree within bf16 tolerance: the step
  records' `logprob_mismatch` (mean |trainer - rollout| per token) stays under `--max-mismatch`.
  The default 0.05 is a bound from bf16's 8-bit mantissa, not a measured value; a stale or
  half-loaded weight moves log-probs by far more, since an entropy bonus makes every step change
  the weights (rewards of a random model are all 0, so the GRPO term alone would not);
- the run trains all its steps.
The table: generation tokens/s, step time, weight-sync time, peak GPU memory (device-wide,
trainer and vLLM together, sampled), MFU = 6 * params * trained tokens (prompt + completion) /
training time / peak bf16 FLOPs (H200: 989 TFLOP/s dense; `--peak-tflops` for other GPUs);
medians over the steps after the first.

    python bench/gpu_check.py [--steps 5] [--out DIR] [--model DIR] [--sync objectstore,gloo]
    python bench/gpu_check.py --cpu     # the same on this CPU: tiny Qwen2, HF engine, object store

`--cpu` is what tests/e2e/test_gpu_check_cpu.py runs, so the script cannot rot; `--build-only`
builds the model and tokenizer (on a CPU, before a GPU is held) for a later `--model DIR`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QWEN2_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                 rms_norm_eps=1e-6, tie_word_embeddings=True)
TINY_QWEN2 = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=1024, max_position_embeddings=1024, rope_theta=1e4,
                  rms_norm_eps=1e-6, tie_word_embeddings=True)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
                 "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
PROMPT = "Using the numbers {numbers}, create an equation that equals {target}. Answer in <answer> </answer>."
# bf16 dense peak, TFLOP/s, by a part of the device name (first match)
PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("H800", 989.0), ("A100", 312.0),
               ("L40S", 362.0), ("A10G", 70.0), ("L4", 121.0))
VERIFIED = re.compile(r"weights version (\d+) verified")


# ------------------------------------------------------------------------ model and tokenizer


def corpus(lines: int, seed: int):
    """Generated text for the BPE: syllable words (enough distinct ones for Qwen's vocabulary
    size), numbers and arithmetic, punctuation."""
    rng = random.Random(seed)
    syllables = [c + v + e for c in "bcdfghjklmnprstvwz" for v in "aeiou" for e in ("", "n", "r", "s", "t")]
    for _ in range(lines):
        if rng.random() < 0.3:
            yield " ".join(f"{rng.randint(0, 99)} {rng.choice('+-*/=')}" for _ in range(rng.randint(2, 6))) + "\n"
        else:
            words = ("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(4, 14)))
            yield " ".join(words).capitalize() + rng.choice(".,?!:") + "\n"


def build_tokenizer(vocab: int, lines: int, seed: int):
    """Byte-level BPE up to `vocab` - 3 tokens, then Qwen's special tokens, then reserved tokens to `vocab`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab - len(SPECIAL), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(lines, seed), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIAL[1:], clean_up_tokenization_spaces=False)
    reserved = vocab - len(fast)
    if reserved > 0:  # every id the model can sample decodes (to nothing: special tokens are skipped)
        fast.add_tokens([AddedToken(f"<|reserved_{i}|>", special=True) for i in range(reserved)], special_tokens=True)
    fast.chat_template = CHAT_TEMPLATE
    assert len(fast) == vocab, (len(fast), vocab)
    return fast


def build(out: Path, shape: dict, dtype: str, seed: int, lines: int, console: Console) -> Path:
    """The model folder (`from_pretrained` loads it); reused when it is there."""
    folder = out / "model"
    if (folder / "config.json").exists():
        console.print(f"model: reusing {folder}")
        return folder
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    t0 = time.perf_counter()
    tok = build_tokenizer(shape["vocab_size"], lines, seed)
    t1 = time.perf_counter()
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(**shape, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, use_sliding_window=False,
                         dtype=dtype)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(eos_token_id=[eos, tok.convert_tokens_to_ids("<|im_end|>")])
    tmp = out / "model.tmp"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(folder)
    params = sum(p.numel() for p in model.parameters())
    console.print(f"model: Qwen2 {params / 1e6:.1f} M parameters, tokenizer {len(tok)} tokens "
                  f"(BPE {t1 - t0:.0f} s, model {time.perf_counter() - t1:.0f} s) in {folder}")
    return folder


# ----------------------------------------------------------------------------- configurations


@dataclass
class Config:
    name: str
    tp: int
    sync: str  # objectstore | gloo | nccl
    separate: bool = False  # engines on GPUs of their own (a Ray head on GPUs 1..), as on a cluster


def configurations(gpus: int, cpu: bool, syncs: list[str] | None) -> list[Config]:
    if cpu:
        return [Config(f"cpu-{s}", 1, s) for s in (syncs or ["objectstore"])]
    if gpus >= 2:
        out = [Config("tp1-nccl", 1, "nccl", separate=True)]
        out.append(Config("tp2-nccl", 2, "nccl", separate=True) if gpus >= 3 else Config("tp2-objectstore", 2, "objectstore"))
        return [c for c in out if syncs is None or c.sync in syncs]
    return [Config(f"tp1-{s}", 1, s) for s in (syncs or ["objectstore", "gloo"])]


def manifest(cfg: Config, model: Path, args: argparse.Namespace) -> dict:
    gpu = not args.cpu
    return {
        "apiVersion": "zeroth.dev/v1alpha1", "kind": "ReasoningRun", "metadata": {"name": f"gpu-check-{cfg.name}"},
        "spec": {
            "model": {"name": str(model), "dtype": "bfloat16" if gpu else "float32"},
            "dataset": {"source": "builtin:countdown", "promptTemplate": PROMPT, "chatTemplate": True, "evalSize": 4},
            "verifiers": [{"name": "countdown"}],
            "algorithm": {"groupSize": args.group, "promptsPerStep": args.prompts, "maxSteps": args.steps,
                          "learningRate": args.lr, "entropyCoef": 0.01, "temperature": 1.0,
                          "maxPromptTokens": args.prompt_tokens, "maxResponseTokens": args.response_tokens, "seed": 0},
            "trainer": {"replicas": 1, "gpusPerReplica": 1 if gpu else 0, "microBatchSize": args.micro_batch,
                        "deepspeed": {"zeroStage": 2}},
            "rollout": {"replicas": 1, "gpusPerReplica": cfg.tp if gpu else 0, "tensorParallelSize": cfg.tp,
                        "engine": "vllm" if gpu else "hf",
                        **({"gpuMemoryUtilization": 0.85 if cfg.separate else args.memory_share} if gpu else {})},
            "checkpoint": {"everySteps": 100000, "keep": 1},
            "export": {"which": "all"},  # the samples' prompt ids count the trained tokens
            "eval": {"everySteps": 0, "samplesPerPrompt": 1},
        },
    }


# ------------------------------------------------------------------------------------- runs


class GpuMemory:
    """Peak device memory in use (every process), sampled, over each GPU; bytes above the start."""

    def __init__(self, period: float = 0.2):
        self.peak, self._stop = 0, threading.Event()
        self._read = _memory_reader()
        self._base = self._read() if self._read else 0
        self._thread = threading.Thread(target=self._loop, args=(period,), daemon=True)

    def __enter__(self):
        if self._read:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    def _loop(self, period: float) -> None:
        while not self._stop.wait(period):
            self.peak = max(self.peak, self._read() - self._base)


def _memory_reader():
    """The most memory in use on any GPU, in bytes, as a function; None without a GPU."""
    try:
        import pynvml  # nvidia-ml-py: no CUDA context of its own

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        return lambda: max(pynvml.nvmlDeviceGetMemoryInfo(h).used for h in handles)
    except Exception:  # noqa: BLE001 - no NVML: torch's view (its context counted in the base)
        import torch

        if not torch.cuda.is_available():
            return None
        n = torch.cuda.device_count()
        return lambda: max(total - free for free, total in (torch.cuda.mem_get_info(i) for i in range(n)))


@dataclass
class Result:
    cfg: Config
    rc: int
    records: list[dict] = field(default_factory=list)
    verified: set[int] = field(default_factory=set)
    prompt_tokens: dict[int, int] = field(default_factory=dict)  # step -> prompt tokens trained on
    peak_bytes: int = 0
    run_dir: Path | None = None
    log_tail: str = ""


def ray_head(tp: int, cpus: int) -> tuple[subprocess.Popen, str]:
    """A Ray head on GPUs 1..tp with one rollout slot; the trainer (GPU 0) joins it as a driver."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from zeroth.api import ROLLOUT_RESOURCE

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(1, tp + 1))}
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    head = subprocess.Popen([*ray, "start", "--head", f"--port={port}", f"--num-cpus={cpus}", f"--num-gpus={tp}",
                             f"--resources={json.dumps({ROLLOUT_RESOURCE: 1})}", "--include-dashboard=false",
                             "--disable-usage-stats", "--block"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while subprocess.run([*ray, "status", f"--address={address}"], capture_output=True).returncode != 0:
        if head.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the Ray head for the rollout engines did not start")
        time.sleep(2)
    return head, address


def run(cfg: Config, model: Path, args: argparse.Namespace, console: Console) -> Result:
    import yaml

    work = args.out / cfg.name
    work.mkdir(parents=True, exist_ok=True)
    path = work / "run.yaml"
    path.write_text(yaml.safe_dump(manifest(cfg, model, args)))
    env = {**os.environ, "ZEROTH_VERIFY_WEIGHTS": "1", "ZEROTH_WEIGHT_SYNC": cfg.sync}
    head = None
    if cfg.separate:
        head, env["RAY_ADDRESS"] = ray_head(cfg.tp, args.rollout_cpus)
        env["CUDA_VISIBLE_DEVICES"] = "0"
    console.print(f"[bold]{cfg.name}[/]: zeroth run {path} (weights: {cfg.sync}, tensor parallel {cfg.tp})")
    try:
        with GpuMemory() as memory:
            proc = subprocess.Popen([sys.executable, "-m", "zeroth", "run", str(path), "--runs", str(work / "runs"),
                                     "--metrics-port", "0"], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            try:
                out, _ = proc.communicate(timeout=args.run_timeout)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)  # zeroth run stops its trainer
                out, _ = proc.communicate(timeout=120)
    finally:
        if head is not None:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(60)
    result = Result(cfg, proc.returncode, peak_bytes=memory.peak)
    dirs = sorted((work / "runs").glob(f"gpu-check-{cfg.name}-*"))
    if not dirs:
        result.log_tail = out[-3000:]
        return result
    result.run_dir = run_dir = dirs[-1]
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        result.records = [r for r in map(json.loads, metrics.read_text().splitlines()) if "reward_mean" in r]
    log = (run_dir / "trainer.log").read_text(errors="replace") if (run_dir / "trainer.log").exists() else ""
    result.verified = {int(v) for v in VERIFIED.findall(log)}
    for f in sorted((run_dir / "samples").glob("step-*.jsonl")):
        step = int(f.stem.split("-")[1])
        result.prompt_tokens[step] = sum(len(json.loads(line)["prompt_ids"]) for line in f.read_text().splitlines())
    result.log_tail = (out[-1500:] + "\n--- trainer.log ---\n" + log[-3000:]) if proc.returncode else ""
    return result


# ------------------------------------------------------------------------------------ report


def checks(result: Result, steps: int, max_mismatch: float) -> list[tuple[str, bool, str]]:
    """(check, passed, detail) for one configuration's run."""
    recs = result.records
    mismatch = max((r.get("logprob_mismatch", float("nan")) for r in recs), default=float("nan"))
    return [
        ("trained", result.rc == 0 and len(recs) == steps, f"exit {result.rc}, {len(recs)}/{steps} steps"),
        ("weights equal", result.verified >= set(range(steps + 1)),
         f"versions verified {sorted(result.verified)} of 0..{steps}"),
        ("log-probs agree", mismatch <= max_mismatch,  # NaN (no record) fails
         f"max over steps of mean |trainer - rollout| {mismatch:.4g} (bound {max_mismatch:g})"),
    ]


def measures(result: Result, params: int, peak_flops: float | None) -> dict[str, float | None]:
    """Medians over the steps after the first (its time holds start-up costs)."""
    recs = result.records[1:] or result.records
    if not recs:
        return {}

    def median(values):
        return statistics.median(values) if values else None

    train = [max(r["step_seconds"] - r["generation_seconds"] - r["weight_sync_seconds"], 1e-9) for r in recs]
    tokens = [r["trained_tokens"] + result.prompt_tokens.get(r["step"], 0) for r in recs]
    mfu = [6 * params * n / t / peak_flops for n, t in zip(tokens, train)] if peak_flops else []
    return {"tokens_per_second": median([r["tokens_per_second"] for r in recs]),
            "step_seconds": median([r["step_seconds"] for r in recs]),
            "sync_seconds": median([r["weight_sync_seconds"] for r in recs]),
            "peak_gib": result.peak_bytes / 2**30 if result.peak_bytes else None,
            "mfu": median(mfu), "mismatch_max": max(r.get("logprob_mismatch_max", 0.0) for r in result.records)}


def table(results: list[Result], params: int, peak_flops: float | None, args: argparse.Namespace) -> tuple[Table, bool]:
    t = Table(title=f"GPU check: {params / 1e6:.3g} M parameters, {args.steps} steps, "
                    f"{args.prompts} prompts x {args.group} samples, up to {args.response_tokens} tokens")
    for col in ("configuration", "tokens/s", "step s", "sync s", "peak GPU GiB", "MFU", "log-prob |Δ| max", "checks"):
        t.add_column(col, justify="left" if col in ("configuration", "checks") else "right")
    ok = True

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    for r in results:
        found = checks(r, args.steps, args.max_mismatch)
        ok &= all(passed for _, passed, _ in found)
        m = measures(r, params, peak_flops)
        t.add_row(f"{r.cfg.name} ({r.cfg.sync})", fmt(m.get("tokens_per_second"), ".0f"), fmt(m.get("step_seconds"), ".2f"),
                  fmt(m.get("sync_seconds"), ".3f"), fmt(m.get("peak_gib"), ".1f"),
                  fmt(m["mfu"] * 100, ".1f") + "%" if m.get("mfu") else "-", fmt(m.get("mismatch_max"), ".3g"),
                  "\n".join(f"{'✓' if passed else '✗'} {name}: {detail}" for name, passed, detail in found))
    return t, ok


def parameters(model: Path) -> int:
    """From the safetensors headers, without loading the weights (a tied head counted once, as
    the model computes with it once)."""
    from safetensors import safe_open

    total = 0
    for f in model.glob("*.safetensors"):
        with safe_open(f, "pt") as weights:
            for name in weights.keys():
                n = 1
                for d in weights.get_slice(name).get_shape():
                    n *= d
                total += n
    return total


def peak_tflops(args: argparse.Namespace) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    try:
        import torch

        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    except Exception:  # noqa: BLE001
        name = ""
    return next((v for part, v in PEAK_TFLOPS if part in name), None)


def gpu_count() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="the CPU smoke mode: tiny Qwen2, HF engine")
    p.add_argument("--steps", type=int, default=None, help="training steps per configuration (5; --cpu 2)")
    p.add_argument("--out", type=Path, default=None, help="work directory (default: a new temporary one)")
    p.add_argument("--model", type=Path, default=None, help="a model folder this script built before")
    p.add_argument("--build-only", action="store_true", help="build the model and tokenizer, then stop")
    p.add_argument("--sync", default=None, help="comma-separated weight syncs to run (objectstore, gloo, nccl)")
    p.add_argument("--prompts", type=int, default=None, help="prompts per step (16; --cpu 4)")
    p.add_argument("--group", type=int, default=None, help="samples per prompt (8; --cpu 2)")
    p.add_argument("--response-tokens", type=int, default=None, help="max tokens per completion (256; --cpu 8)")
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help="learning rate (1e-5; --cpu 1e-3)")
    p.add_argument("--memory-share", type=float, default=0.35,
                   help="vLLM's gpuMemoryUtilization beside the trainer on one GPU")
    p.add_argument("--max-mismatch", type=float, default=None, help="bound of logprob_mismatch (0.05; --cpu 1e-4)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's bf16 dense peak, for MFU")
    p.add_argument("--rollout-cpus", type=int, default=4, help="CPUs of the Ray head for separate engines")
    p.add_argument("--run-timeout", type=float, default=1200.0, help="seconds one zeroth run may take")
    args = p.parse_args(argv)
    cpu = args.cpu
    for name, gpu_value, cpu_value in [("steps", 5, 2), ("prompts", 16, 4), ("group", 8, 2), ("response_tokens", 256, 8),
                                       ("lr", 1e-5, 1e-3), ("max_mismatch", 0.05, 1e-4)]:
        if getattr(args, name) is None:
            setattr(args, name, cpu_value if cpu else gpu_value)
    args.out = (args.out or Path(tempfile.mkdtemp(prefix="zeroth-gpu-check-"))).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console()

    gpus = 0 if cpu else gpu_count()
    if not cpu and gpus == 0 and not args.build_only:
        console.print("[red]no GPU found (nvidia-smi -L)[/]: run with --cpu for the CPU smoke mode")
        return 2
    shape = TINY_QWEN2 if cpu else QWEN2_05B
    model = args.model.resolve() if args.model else build(args.out, shape, "float32" if cpu else "bfloat16", 0,
                                                           2000 if cpu else 200_000, console)
    if args.build_only:
        return 0
    params = parameters(model)
    peak = None if cpu else peak_tflops(args)
    syncs = args.sync.split(",") if args.sync else None
    results = [run(cfg, model, args, console) for cfg in configurations(gpus, cpu, syncs)]
    t, ok = table(results, params, peak * 1e12 if peak else None, args)
    console.print(t)
    for r in results:
        if r.log_tail:
            console.print(f"[red]{r.cfg.name} failed[/] ({r.run_dir or 'no run directory'}):")
            console.print(r.log_tail, markup=False, highlight=False)
    console.print(("[green]all checks passed[/]" if ok else "[red]a check failed[/]") + f" (work directory {args.out})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
