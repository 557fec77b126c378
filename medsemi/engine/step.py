"""One optimisation step of a method, shared by the trainer and the throughput benchmark so that what the
benchmark times is exactly what training runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from medsemi.methods import Batch, Method


def to_channels_last(batch: Batch) -> Batch:
    """2D images in channels-last memory format (3D volumes and labels are left as they are)."""
    for name in ("image_l", "image_u", "image_u_strong"):
        value = getattr(batch, name)
        if value is not None and value.dim() == 4:
            setattr(batch, name, value.contiguous(memory_format=torch.channels_last))
    return batch


class OptimisationStep:
    """Forward under optional autocast (float16 + gradient scaling on CUDA, bfloat16 elsewhere), then backward,
    every optimizer's step and the method's `after_step`.

    Split in two calls so the caller can inspect the losses (finite? logged?) before any weight changes.
    """

    def __init__(
        self,
        method: Method,
        optimizers: Sequence[torch.optim.Optimizer],
        device: torch.device,
        *,
        amp: bool = False,
        channels_last: bool = False,
    ) -> None:
        self.method = method
        self.optimizers = list(optimizers)
        self.device = device
        self.amp = amp
        self.channels_last = channels_last
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
        self.amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    def losses(self, batch: Batch, step: int) -> dict[str, Tensor]:
        if self.channels_last:
            batch = to_channels_last(batch)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            return self.method.training_step(batch, step)

    def update(self, total: Tensor, step: int, reduce_gradients: Callable[[], None] | None = None) -> None:
        """Backpropagate `total` and step; `reduce_gradients` runs between backward and the steps (DDP)."""
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if reduce_gradients is not None:
            reduce_gradients()
        for optimizer in self.optimizers:
            self.scaler.step(optimizer)
        self.scaler.update()
        self.method.after_step(step)
