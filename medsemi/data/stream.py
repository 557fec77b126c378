"""The labeled + unlabeled batch stream: data on the device once, batches as a pure function of the step.

SSL4MIS's TwoStreamBatchSampler walks a fresh permutation of the labeled indices per epoch and cycles the
unlabeled ones, with CPU workers augmenting each sample. Here both streams are read from per-epoch
permutations seeded by (seed, stream, epoch), so `batch(step)` depends only on (seed, step, rank): a resumed
run sees exactly the batches it would have seen, and the ranks of a multi-GPU run read disjoint parts of the
same global batch. Augmentation runs batched on the device (medsemi.data.augment).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from medsemi.data.augment import Recipe, apply_recipe, pad_for_crop, random_crop, recipe, resize, strong_view
from medsemi.data.cases import Case, DataError
from medsemi.methods.base import Batch

_LABELED, _UNLABELED = 0, 1


def _seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (SeedSequence: nearby steps give unrelated streams)."""
    state = np.random.SeedSequence(list(values)).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


Items = list[tuple[np.ndarray, np.ndarray | None]]


def _slices(cases: Sequence[Case], spatial_dims: int, with_labels: bool) -> Items:
    """(image (C, *spatial), label) pairs; a volume fed to a 2D network becomes its slices along depth."""
    items: Items = []
    for case in cases:
        label = case.label if with_labels else None
        if with_labels and label is None:
            raise DataError(f"labeled case {case.case_id!r} has no label")
        if case.image.ndim == spatial_dims + 1:
            items.append((case.image, label))
        elif spatial_dims == 2 and case.image.ndim == 4:
            items.extend((case.image[:, d], None if label is None else label[d]) for d in range(case.image.shape[1]))
        else:
            raise DataError(
                f"case {case.case_id!r} has image shape {case.image.shape}, not (C, *spatial) with "
                f"{spatial_dims} spatial axes"
            )
    return items


def _label_dtype(labels: Sequence[np.ndarray]) -> torch.dtype:
    """Labels stay compact on the device (uint8 up to 256 classes); batches turn them into int64."""
    fits = all(label.size == 0 or (label.min() >= 0 and label.max() < 256) for label in labels)
    return torch.uint8 if fits else torch.int64


class _ResizedPool:
    """2D slices resized (nearest) to the patch once, in one (N, C, *patch) tensor on the device.

    The native (H, W) of each slice is kept (on the CPU) because the ACDC rotation happens in that frame.
    """

    def __init__(self, items: Items, patch: tuple[int, ...], device: torch.device) -> None:
        with_labels = items[0][1] is not None
        self.images = torch.empty(len(items), items[0][0].shape[0], *patch, device=device)
        self.labels: Tensor | None = None
        if with_labels:
            dtype = _label_dtype([label for _, label in items if label is not None])
            self.labels = torch.empty(len(items), *patch, device=device, dtype=dtype)
        self.sizes = torch.tensor([image.shape[1:] for image, _ in items], dtype=torch.long)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (image, _) in enumerate(items):
            groups.setdefault(tuple(image.shape), []).append(i)
        for members in groups.values():
            index = torch.tensor(members, device=device)
            images = torch.as_tensor(np.stack([items[i][0] for i in members])).to(device, torch.float32)
            labels = None
            if self.labels is not None:
                labels = torch.as_tensor(np.stack([items[i][1] for i in members])).to(device, self.labels.dtype)
            images, labels = resize(images, labels, patch)
            self.images.index_copy_(0, index, images)
            if self.labels is not None and labels is not None:
                self.labels.index_copy_(0, index, labels)

    def __len__(self) -> int:
        return self.images.shape[0]

    def take(self, indices: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor | None, Tensor | None]:
        on_device = indices.to(self.images.device)
        labels = None if self.labels is None else self.labels.index_select(0, on_device)
        return self.images.index_select(0, on_device), labels, self.sizes[indices]


class _CropPool:
    """Volumes (or large 2D images) of any sizes on the device, padded once for UA-MT's random crop."""

    def __init__(self, items: Items, patch: tuple[int, ...], device: torch.device) -> None:
        self.patch = patch
        self.images: list[Tensor] = []
        self.labels: list[Tensor] | None = [] if items[0][1] is not None else None
        dtype = _label_dtype([label for _, label in items if label is not None])
        for image, label in items:
            volume = torch.from_numpy(np.array(image)).to(device, torch.float32)
            target = None if label is None else torch.from_numpy(np.array(label)).to(device, dtype)
            volume, target = pad_for_crop(volume, target, patch)
            self.images.append(volume)
            if self.labels is not None and target is not None:
                self.labels.append(target)

    def __len__(self) -> int:
        return len(self.images)

    def take(self, indices: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor | None, Tensor | None]:
        chosen = indices.tolist()
        labels = None if self.labels is None else [self.labels[i] for i in chosen]
        images, crops = random_crop([self.images[i] for i in chosen], labels, self.patch, generator)
        return images, crops, None


class BatchStream:
    """Produces `Batch(image_l, label_l, image_u, image_u_strong)` for any step, on `device`.

    Sample indices: global position p = step * batch * world_size + rank * batch + j of a stream of length N
    reads permutation(seed, stream, p // N)[p % N], so a batch may straddle two epochs (the unlabeled stream
    cycles as in TwoStreamBatchSampler; the labeled one keeps its remainder instead of dropping it).
    Augmentation parameters come from generators seeded by (seed, step, rank); labeled and unlabeled images
    get independent draws. With no unlabeled data or batch_unlabeled == 0, image_u has 0 rows.
    """

    def __init__(
        self,
        labeled: list[Case],
        unlabeled: list[Case],
        *,
        spatial_dims: int,
        patch_size: tuple[int, ...],
        batch_labeled: int,
        batch_unlabeled: int,
        augment: str | Mapping[str, Any] | Recipe,
        strong_view: bool,
        seed: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(patch_size) != spatial_dims:
            raise DataError(f"data.patch_size {list(patch_size)} does not have {spatial_dims} axes")
        try:
            self.recipe = recipe(augment, spatial_dims)
        except ValueError as error:
            raise DataError(str(error)) from error
        if not labeled or batch_labeled < 1:
            raise DataError("the batch stream needs labeled cases and batch_labeled >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.batch_labeled, self.batch_unlabeled = batch_labeled, batch_unlabeled
        self.strong_view = strong_view
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.device = torch.device(device)
        pool = _CropPool if self.recipe.crops(spatial_dims) else _ResizedPool
        self._labeled = pool(_slices(labeled, spatial_dims, True), self.patch_size, self.device)
        self.in_channels = int(self._labeled.images[0].shape[0])
        items = _slices(unlabeled, spatial_dims, False) if batch_unlabeled > 0 else []
        self._unlabeled = pool(items, self.patch_size, self.device) if items else None

    def _indices(self, stream: int, n: int, batch: int, step: int) -> Tensor:
        start = (step * self.world_size + self.rank) * batch
        positions = torch.arange(start, start + batch)
        epochs, offsets = positions // n, positions % n
        indices = torch.empty(batch, dtype=torch.long)
        for epoch in torch.unique(epochs).tolist():
            order = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(self.seed, stream, epoch)))
            chosen = epochs == epoch
            indices[chosen] = order[offsets[chosen]]
        return indices

    def _draw(
        self, pool: _ResizedPool | _CropPool, indices: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor | None]:
        images, labels, sizes = pool.take(indices, generator)
        return apply_recipe(self.recipe, images, labels, generator, sizes)

    def sample_indices(self, step: int) -> tuple[Tensor, Tensor]:
        """(labeled, unlabeled) case/slice indices of this rank's part of the batch at `step`."""
        labeled = self._indices(_LABELED, len(self._labeled), self.batch_labeled, step)
        if self._unlabeled is None:
            return labeled, torch.empty(0, dtype=torch.long)
        return labeled, self._indices(_UNLABELED, len(self._unlabeled), self.batch_unlabeled, step)

    def batch(self, step: int) -> Batch:
        labeled, unlabeled = self.sample_indices(step)
        generator = torch.Generator().manual_seed(_seed(self.seed, step, self.rank, 0))
        image_l, label_l = self._draw(self._labeled, labeled, generator)
        if self._unlabeled is None:
            image_u = torch.empty(0, self.in_channels, *self.patch_size, device=self.device)
        else:
            image_u, _ = self._draw(self._unlabeled, unlabeled, generator)
        strong = None
        if self.strong_view:
            device_generator = torch.Generator(device=self.device).manual_seed(_seed(self.seed, step, self.rank, 1))
            strong = strong_view(image_u, device_generator, rgb=self.in_channels == 3)
        if label_l is None:
            raise DataError("labeled batch without labels")
        return Batch(image_l=image_l, label_l=label_l.long(), image_u=image_u, image_u_strong=strong)
