"""What a run computes and on what: model FLOPs, MFU against the GPUs' peak, and NVML's view of the GPUs.

FLOPs follow the usual dense-transformer estimate (Kaplan et al.; what veRL and OpenRLHF report):
a forward pass costs 2·N FLOPs per token processed, training (forward and backward) 6·N, N the
policy's parameter count. Tokens are every prompt and completion token the pass processed. The
reference model's forward and attention's own FLOPs are left out, so MFU reads slightly low, never
high.

MFU is reported only where the trainer runs on GPUs whose peak it knows: `PEAK_FLOPS` holds the
dense bf16 tensor peak (fp16 where a GPU has no bf16) of common data-centre GPUs, from their
vendors' data sheets. On a CPU there is no honest peak to divide by, so MFU is absent, not zero.
GPU utilisation and memory come from NVML (nvidia-ml-py, in the cuda image); without it or without a
GPU there are none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class GpuSample:
    index: int
    utilization: float  # 0..1 over NVML's last sample period
    memory_used_bytes: int


class Nvml:
    """NVML's view of this process's GPUs; `sample()` is [] where NVML or a GPU is missing."""

    def __init__(self) -> None:
        self._nvml = None
        self._handles: list[tuple[int, object]] = []
        try:
            import pynvml
        except ImportError:
            return  # the cpu image and environment have no NVML bindings: no GPU to watch
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as e:
            log.debug("NVML not available: %s", e)  # no driver: a CPU node
            return
        self._nvml = pynvml
        self._handles = [(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in _visible(count)]

    def sample(self) -> list[GpuSample]:
        if self._nvml is None:
            return []
        out = []
        for index, handle in self._handles:
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            except self._nvml.NVMLError as e:
                log.warning("NVML could not read GPU %d: %s", index, e)
                continue
            out.append(GpuSample(index, util.gpu / 100.0, int(memory.used)))
        return out


class GpuCollector:
    """A prometheus-client collector: NVML read at each scrape (`gpu_utilization`,
    `gpu_memory_used_bytes`, labelled with the run, this host (the pod) and the GPU index); it
    yields nothing where there is no GPU, so the series are absent rather than zero."""

    def __init__(self, labels: dict[str, str], nvml: Nvml | None = None):
        import socket

        self.labels = {**labels, "pod": socket.gethostname()}
        self.nvml = nvml if nvml is not None else Nvml()

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from zeroth.metrics import BY_NAME

        samples = self.nvml.sample()
        if not samples:
            return
        util, memory = (BY_NAME[n] for n in ("gpu_utilization", "gpu_memory_used_bytes"))
        families = [GaugeMetricFamily(m.full_name, m.help, labels=m.labels) for m in (util, memory)]
        for s in samples:
            values = {**self.labels, "gpu": str(s.index)}
            families[0].add_metric([values[k] for k in util.labels], s.utilization)
            families[1].add_metric([values[k] for k in memory.labels], s.memory_used_bytes)
        yield from families


def _visible(count: int) -> list[int]:
    """The NVML indices of the GPUs CUDA_VISIBLE_DEVICES gives this process (all when unset; a pod
    sees only its own GPUs either way). UUIDs in the variable are not mapped: all are shown."""
    import os

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return list(range(count))
    try:
        return [i for i in (int(v) for v in visible.split(",")) if 0 <= i < count]
    except ValueError:
        return list(range(count))
