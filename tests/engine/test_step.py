"""The optimisation step shared by the trainer and the throughput benchmark."""

from __future__ import annotations

import torch

from medsemi.data.cases import DatasetInfo
from medsemi.engine.step import OptimisationStep, to_channels_last
from medsemi.methods import Batch, Method, MethodContext, create_method
from medsemi.methods.base import NetSpec


def _supervised() -> Method:
    info = DatasetInfo("test", ["bg", "fg"], spatial_dims=2, in_channels=1)
    return create_method("supervised", {}, MethodContext(info, NetSpec("unet", {"widths": (4, 8, 16, 32, 64)}), 10))


def test_update_reduces_gradients_after_backward_and_before_the_weights_move(make_batch) -> None:
    method = _supervised().train()
    parameters = list(method.parameters())
    before = [p.detach().clone() for p in parameters]
    seen: list[tuple[bool, bool]] = []

    def reduce_gradients() -> None:
        has_gradients = all(p.grad is not None for p in parameters)
        unchanged = all(torch.equal(a, p) for a, p in zip(before, parameters))
        seen.append((has_gradients, unchanged))

    step = OptimisationStep(method, [torch.optim.SGD(parameters, lr=0.1)], torch.device("cpu"))
    losses = step.losses(make_batch((32, 32), num_classes=2), 0)
    step.update(sum(losses.values()), 0, reduce_gradients)
    assert seen == [(True, True)]
    assert any(not torch.equal(a, p) for a, p in zip(before, parameters))


def test_channels_last_converts_2d_images_only() -> None:
    batch = Batch(
        image_l=torch.randn(2, 3, 8, 8),
        label_l=torch.zeros(2, 8, 8, dtype=torch.long),
        image_u=torch.randn(2, 3, 4, 8, 8),
    )
    converted = to_channels_last(batch)
    assert converted.image_l.is_contiguous(memory_format=torch.channels_last)
    assert converted.image_l.stride()[1] == 1 and converted.image_u.is_contiguous()
    assert converted.image_u_strong is None
