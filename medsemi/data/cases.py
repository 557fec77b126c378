"""The one in-memory representation every reader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """Bad input data; the message names the file (or setting) and the problem."""


class DataFileError(DataError):
    """A DataError about one file: `path` and `problem` kept apart so a checker can list them."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem

    def __reduce__(self) -> tuple:
        return type(self), (self.path, self.problem)


@dataclass
class Case:
    """One image (2D slice, 2D colour image or 3D volume) with its optional label.

    image: float32, channels first, (C, *spatial). A 3D volume evaluated by a 2D network keeps its depth as
    the first spatial axis, (C, D, H, W). label: integer class map (*spatial) or None for unlabeled cases.
    spacing: physical voxel size per spatial axis in mm; None when unknown (a PNG/TIFF whose dataset.json
    declares none), so nothing is reported in mm. affine: 4x4 NIfTI affine when the source had one, so
    predictions can be written back in the input's space.
    """

    case_id: str
    patient: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, ...] | None
    affine: np.ndarray | None = None
    source: Path | None = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])

    @property
    def in_channels(self) -> int:
        return int(self.image.shape[0])


@dataclass
class DatasetInfo:
    """What a model needs to know about a dataset."""

    name: str
    class_names: list[str]
    spatial_dims: int
    in_channels: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class Dataset:
    """All cases of a dataset, by role, before a label budget is applied.

    train: annotated training cases in list order (budgets take the first N patients of it).
    unlabeled: cases that never had labels (nnU-Net folder's imagesUnlabeled/).
    val/test: annotated evaluation cases (whole volumes for ACDC).
    """

    info: DatasetInfo
    train: list[Case]
    val: list[Case] = field(default_factory=list)
    test: list[Case] = field(default_factory=list)
    unlabeled: list[Case] = field(default_factory=list)
    root: Path | None = None
