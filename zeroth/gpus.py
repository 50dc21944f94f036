"""NVML's view of the GPUs a process holds, exported at each scrape (`gpu_utilization`,
`gpu_memory_used_bytes`) by every process that holds GPUs: trainer rank 0, the first rank of every
other trainer pod, and each rollout worker. nvidia-ml-py is in the cuda image; without it or without
a GPU there are no series, rather than zeros.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


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
