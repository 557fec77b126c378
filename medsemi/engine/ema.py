"""Exponential moving average of a student network, kept outside autograd and outside DDP."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen deep copy: no parameter of it ever requires grad, so no loss can reach it."""
    teacher = copy.deepcopy(student)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(
    teacher: nn.Module, student: nn.Module, decay: float, step: int, *, buffers: bool = False, warmup: bool = True
) -> None:
    """SSL4MIS update with warm-up, alpha = min(1 - 1/(step + 1), decay); without `warmup`, alpha = decay (BCP).

    Parameters are averaged; buffers (BatchNorm statistics) are averaged too when `buffers` is set,
    otherwise the teacher keeps its own (the SSL4MIS behaviour).
    """
    alpha = min(1.0 - 1.0 / (step + 1), decay) if warmup else decay
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
    if buffers:
        for t, s in zip(teacher.buffers(), student.buffers()):
            if t.dtype.is_floating_point:
                t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
            else:
                t.copy_(s)
