"""`medsemi data check PATH`: every problem of a dataset folder at once, and a summary of what is in it.

The check drains the readers' own lazy case iterators with a collecting `ProblemLog` (medsemi.data.io), so
it verifies exactly what loading verifies (unreadable files, missing images/labels/list entries, label values
outside the declared classes, image/label shape and spacing/affine mismatches, misnamed files, and across
cases: a case id in two roles, evaluation images or patients that are also training ones) and keeps no arrays
in memory. A declared class that occurs in no label is a warning, not a problem.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsemi.data import acdc, la, nnunet
from medsemi.data.cases import Case, DataError, DatasetInfo
from medsemi.data.io import CrossCaseChecks, DataFileError, ProblemLog, Source

SCANNERS: dict[str, Callable[[Path, ProblemLog], Source]] = {
    "acdc": acdc.scan,
    "la": la.scan,
    "nnunet": nnunet.scan,
}
LAYOUT_NAMES = {"acdc": "ACDC h5 layout (SSL4MIS)", "la": "LA h5 layout (UA-MT)", "nnunet": "nnU-Net folder"}


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class Report:
    """One pass over a folder: its layout, every problem, and a human-readable summary."""

    layout: str | None
    problems: list[Problem]
    summary: str
    warnings: list[Problem] = field(default_factory=list)


def detect_layout(path: Path) -> str | None:
    if (path / "dataset.json").is_file():
        return "nnunet"
    if (path / "train_slices.list").is_file() or (path / "data" / "slices").is_dir():
        return "acdc"
    if (path / la.VOLUMES).is_dir() or (path / "train.list").is_file():
        return "la"
    return None


def inspect_dataset(path: Path | str, dataset: str | None = None) -> Report:
    """Check and summarise in one read (the CLI should call this rather than both functions below)."""
    path = Path(path)
    if not path.is_dir():
        return Report(None, [Problem(path, "dataset folder not found")], "")
    layout = dataset or detect_layout(path)
    if layout not in SCANNERS:
        message = (
            f"cannot check dataset {layout!r}; choose from {sorted(SCANNERS)}"
            if layout
            else "unrecognised layout: expected dataset.json (nnU-Net folder), train_slices.list (ACDC h5) "
            f"or '{la.VOLUMES}/' with train.list (LA h5)"
        )
        return Report(layout, [Problem(path, message)], "")
    log = ProblemLog(collect=True)
    try:
        source = SCANNERS[layout](path, log)
    except DataError as error:
        return Report(layout, [_problem(path, error) for error in [*log.errors, error]], "")
    stats = {role: RoleStats() for role in source.roles}
    checks = CrossCaseChecks(source.info, path)
    for role, cases in source.roles.items():
        for case in cases:
            stats[role].add(case, source.info.num_classes)
            checks.add(role, case)
    problems = [_problem(path, error) for error in [*log.errors, *checks.problems()]]
    warnings = [Problem(where, message) for where, message in [*source.warnings, *checks.warnings()]]
    return Report(layout, problems, _summary(path, layout, source.info, stats), warnings)


def check_dataset(path: Path | str, dataset: str | None = None) -> list[Problem]:
    """Every problem found in the folder (empty when it loads cleanly)."""
    return inspect_dataset(path, dataset).problems


def describe(path: Path | str, dataset: str | None = None) -> str:
    """Counts, shapes, spacing, classes and class voxel shares per role."""
    return inspect_dataset(path, dataset).summary


def _problem(root: Path, error: DataError) -> Problem:
    if isinstance(error, DataFileError):
        return Problem(error.path, error.problem)
    return Problem(root, str(error))


@dataclass
class RoleStats:
    cases: int = 0
    unlabeled: int = 0
    patients: set[str] = field(default_factory=set)
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    spacings: list[tuple[float, ...] | None] = field(default_factory=list)
    channels: set[int] = field(default_factory=set)
    voxels: np.ndarray | None = None

    def add(self, case: Case, num_classes: int) -> None:
        self.cases += 1
        self.patients.add(case.patient)
        self.shapes.append(case.spatial_shape)
        self.spacings.append(None if case.spacing is None else tuple(case.spacing))
        self.channels.add(case.in_channels)
        if case.label is None:
            self.unlabeled += 1
            return
        counts = np.bincount(case.label.ravel(), minlength=num_classes)
        self.voxels = counts if self.voxels is None else self.voxels + counts

    def _spacing(self) -> str:
        known = [spacing for spacing in self.spacings if spacing is not None]
        if not known:
            return "unknown"
        unknown = len(self.spacings) - len(known)
        return f"{_ranges(known, '{:.3g}')} mm" + (f" ({unknown} cases unknown)" if unknown else "")

    def describe(self, class_names: list[str]) -> list[str]:
        labels = f", {self.unlabeled} without labels" if self.unlabeled else ""
        lines = [
            f"{self.cases} cases, {len(self.patients)} patients{labels}; channels "
            f"{'/'.join(map(str, sorted(self.channels))) or '-'}; shape {_ranges(self.shapes, '{:d}')}; "
            f"spacing {self._spacing()}"
        ]
        if self.voxels is not None:
            shares = self.voxels / max(int(self.voxels.sum()), 1)
            lines.append(
                "class voxels: "
                + ", ".join(f"{name} {share:.1%}" for name, share in zip(class_names, shares, strict=True))
            )
        return lines


def _ranges(values: list[tuple], style: str) -> str:
    """Per axis 'min..max' (or one value), axes joined by ' x '."""
    if not values:
        return "-"
    dims = sorted({len(value) for value in values})
    if len(dims) > 1:
        return f"mixed {'/'.join(map(str, dims))}D"
    columns = np.asarray(values)
    parts = []
    for column in columns.T:
        low, high = style.format(column.min().item()), style.format(column.max().item())
        parts.append(low if low == high else f"{low}..{high}")
    return " x ".join(parts)


def _summary(path: Path, layout: str, info: DatasetInfo, stats: dict[str, RoleStats]) -> str:
    classes = ", ".join(f"{index} {name}" for index, name in enumerate(info.class_names))
    lines = [
        f"{path} ({LAYOUT_NAMES[layout]}): dataset {info.name}, {info.spatial_dims}D, {info.in_channels} channel(s)",
        f"classes: {classes}",
    ]
    for role, role_stats in stats.items():
        if role_stats.cases or role == "train":
            described = role_stats.describe(info.class_names)
            lines.append(f"{role:<10} {described[0]}")
            lines += [f"{'':<10} {line}" for line in described[1:]]
    return "\n".join(lines)
