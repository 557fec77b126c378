"""Which torch device a config's `train.device` names; shared by training, evaluation and the benchmarks."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """`auto` is the GPU when there is one, else the CPU; any other name is taken as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
