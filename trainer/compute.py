"""What a run computes and on what: model FLOPs and MFU against the GPUs' peak (NVML's view of the
GPUs is zeroth.gpus).

FLOPs follow the usual dense-transformer estimate (Kaplan et al.; what veRL and OpenRLHF report):
a forward pass costs 2·N FLOPs per token processed, training (forward and backward) 6·N, N the
policy's parameter count. Tokens are every prompt and completion token the pass processed. The
reference model's forward and attention's own FLOPs are left out, so MFU reads slightly low, never
high.

MFU is reported only where the trainer runs on GPUs whose peak it knows: `PEAK_FLOPS` holds the
dense bf16 tensor peak (fp16 where a GPU has no bf16) of common data-centre GPUs, from their
vendors' data sheets. On a CPU there is no honest peak to divide by, so MFU is absent, not zero.
"""

from __future__ import annotations

TRAIN_FLOPS_PER_PARAM_TOKEN = 6
FORWARD_FLOPS_PER_PARAM_TOKEN = 2

# name fragment (as torch.cuda.get_device_name reports it, lower case) -> dense FLOP/s; the first
# fragment found in the name wins, so more specific names come first
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("b200", 2.25e15),
    ("h200", 989e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),
    ("h800", 989e12),
    ("gh200", 989e12),
    ("l40s", 362e12),
    ("l40", 181e12),
    ("a100", 312e12),
    ("a800", 312e12),
    ("a10g", 125e12),  # AWS's A10G: the A10's figure
    ("a10", 125e12),
    ("l4", 121e12),
    ("a6000", 155e12),
    ("v100", 125e12),  # fp16
    ("t4", 65e12),  # fp16
)


def peak_flops(device_name: str) -> float | None:
    """The dense bf16 (or fp16) peak FLOP/s of one GPU of this name; None when unknown."""
    name = device_name.lower()
    return next((flops for fragment, flops in PEAK_FLOPS if fragment in name), None)


def model_flops(parameters: int, tokens: int, training: bool) -> float:
    """FLOPs of passing `tokens` tokens through a model of `parameters` parameters."""
    per = TRAIN_FLOPS_PER_PARAM_TOKEN if training else FORWARD_FLOPS_PER_PARAM_TOKEN
    return float(per) * parameters * tokens


def mfu(flops: float, seconds: float, devices: int, peak: float | None) -> float | None:
    """Model FLOPs utilisation: FLOPs done over what `devices` GPUs at `peak` could do in `seconds`;
    None without a peak (a CPU, an unknown GPU) or without time."""
    if peak is None or seconds <= 0 or devices <= 0:
        return None
    return flops / (seconds * devices * peak)
