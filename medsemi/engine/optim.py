"""Optimizers and learning-rate schedules from the `optim:` settings of one optimised module."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def build_optimizer(module: nn.Module, settings: dict[str, Any]) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    name = settings["name"]
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=settings["lr"], momentum=settings["momentum"], weight_decay=settings["weight_decay"]
        )
    if name == "adamw":
        return torch.optim.AdamW(params, lr=settings["lr"], weight_decay=settings["weight_decay"])
    if name == "adam":
        return torch.optim.Adam(params, lr=settings["lr"], weight_decay=settings["weight_decay"])
    raise ValueError(f"optim.name {name!r} is not one of sgd, adam, adamw")


def learning_rate(settings: dict[str, Any], step: int, iterations: int) -> float:
    """poly: lr (1 - t/T)^power (SSL4MIS); step: lr gamma^(t // every) (BCP on LA); constant."""
    base, schedule = settings["lr"], settings["schedule"]
    if schedule == "poly":
        return base * (1.0 - step / iterations) ** settings["poly_power"]
    if schedule == "step":
        return base * settings["step_gamma"] ** (step // settings["step_every"])
    if schedule == "constant":
        return base
    raise ValueError(f"optim.schedule {schedule!r} is not one of poly, step, constant")


def set_learning_rates(
    optimizers: dict[str, torch.optim.Optimizer], settings: dict[str, dict[str, Any]], step: int, iterations: int
) -> None:
    for name, optimizer in optimizers.items():
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(settings[name], step, iterations)
