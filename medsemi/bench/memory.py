"""The one memory probe of the benchmarks: peak host memory of this process and peak CUDA memory of a device."""

from __future__ import annotations

import resource
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PeakMemory:
    """host_rss_mb: the process's peak resident set size since it started (getrusage; DataLoader workers are
    other processes and not included). cuda_mb: torch.cuda.max_memory_allocated since `reset_peak_memory`,
    None off CUDA."""

    host_rss_mb: float
    cuda_mb: float | None


def reset_peak_memory(device: torch.device) -> None:
    """Start counting the CUDA peak from here (the host peak is the process's and cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> PeakMemory:
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    cuda = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return PeakMemory(host, cuda)
