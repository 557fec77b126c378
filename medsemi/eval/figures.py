"""Figures a user would rather look at than read: learning curves, per-slice overlays, worst and best cases.

Everything is drawn without pyplot (a bare `Figure` or plain RGB arrays saved with PIL), so no GUI backend or
global state is involved, and written atomically. Slices are shown in array order (rows = first in-plane
axis), with intensities windowed to the 1st-99th percentile.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medsemi.data.cases import Case
from medsemi.engine.checkpoint import atomic_write_bytes

# Class colours (index 0 = background, never drawn); cycles past 8 classes.
PALETTE = np.array(
    [
        [0, 0, 0],
        [230, 25, 75],
        [60, 180, 75],
        [0, 130, 200],
        [255, 225, 25],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
    ],
    dtype=np.float32,
)
FILL_ALPHA = 0.45
MIN_PANEL_SIZE = 192
TEXT_SIZE = 12


def _save_png(path: Path, draw: Any) -> None:
    """`draw` is an (H, W, 3) uint8 array or a matplotlib Figure."""
    buffer = io.BytesIO()
    if isinstance(draw, np.ndarray):
        Image.fromarray(draw).save(buffer, format="PNG")
    else:
        draw.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(Path(path), buffer.getvalue())


def _smooth(values: np.ndarray) -> np.ndarray:
    """Running mean over ~1% of the curve, so thousands of noisy iterations read as a trend."""
    width = max(1, len(values) // 100)
    if width == 1:
        return values
    kernel = np.ones(width) / width
    padded = np.concatenate([np.full(width - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def plot_learning_curves(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Losses (total and each term, smoothed), validation Dice and learning rate against the global step.

    `rows` are the trainer's log rows (keys global_step, stage, lr, loss, loss/<term>, val_dice); stage
    changes are marked by dashed lines.
    """
    from matplotlib.figure import Figure

    steps = np.array([row["global_step"] for row in rows], dtype=float)
    figure = Figure(figsize=(13, 3.4))
    loss_axis, dice_axis, lr_axis = figure.subplots(1, 3)
    terms = sorted({key for row in rows for key in row if key.startswith("loss/")})
    for key, width in [("loss", 2.0), *((term, 1.0) for term in terms)]:
        present = [(s, row[key]) for s, row in zip(steps, rows, strict=True) if key in row]
        if present:
            x, y = np.array(present, dtype=float).T
            loss_axis.plot(x, _smooth(y), linewidth=width, label=key.removeprefix("loss/"))
    loss_axis.set_title("losses (smoothed)")
    loss_axis.legend(fontsize=7)
    validated = [(s, row["val_dice"]) for s, row in zip(steps, rows, strict=True) if "val_dice" in row]
    if validated:
        x, y = np.array(validated, dtype=float).T
        dice_axis.plot(x, y, marker="o", markersize=3)
        best = int(np.argmax(y))
        dice_axis.annotate(f"best {y[best]:.3f}", (x[best], y[best]), fontsize=8)
    dice_axis.set_title("validation Dice")
    lr_axis.plot(steps, [row["lr"] for row in rows])
    lr_axis.set_title("learning rate")
    changes = [s for s, before, after in zip(steps[1:], rows, rows[1:]) if before["stage"] != after["stage"]]
    for axis in (loss_axis, dice_axis, lr_axis):
        axis.set_xlabel("iteration")
        for change in changes:
            axis.axvline(change, color="grey", linestyle="--", linewidth=0.8)
    figure.subplots_adjust(left=0.05, right=0.98, bottom=0.15, top=0.9, wspace=0.25)
    _save_png(path, figure)


def _window(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W, 3) uint8: RGB images as they are, otherwise the first channel in grey."""
    shown = image[:3] if image.shape[0] == 3 else image[:1]
    low, high = np.percentile(shown, [1, 99])
    scaled = np.clip((shown - low) / max(high - low, 1e-8), 0, 1)
    rgb = np.broadcast_to(scaled, (3, *scaled.shape[1:])) if scaled.shape[0] == 1 else scaled
    return (np.moveaxis(rgb, 0, -1) * 255).astype(np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(C, H, W) image + (H, W) class map -> (H, W, 3) uint8: translucent class fill, opaque boundaries."""
    base = _window(image).astype(np.float32)
    colours = PALETTE[labels.astype(np.int64) % len(PALETTE)]
    foreground = (labels > 0)[..., None]
    filled = np.where(foreground, (1 - FILL_ALPHA) * base + FILL_ALPHA * colours, base)
    edge = np.zeros(labels.shape, dtype=bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[1:] != labels[:-1]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    filled = np.where((edge & (labels > 0))[..., None], colours, filled)
    return filled.astype(np.uint8)


def heat(values: np.ndarray, vmax: float = 1.0) -> np.ndarray:
    """(H, W) values in [0, vmax] -> (H, W, 3) uint8 with the 'magma' colour map (dark = certain)."""
    import matplotlib

    return (matplotlib.colormaps["magma"](np.clip(values / vmax, 0, 1))[..., :3] * 255).astype(np.uint8)


def class_colours(class_names: Sequence[str]) -> list[tuple[str, tuple[float, float, float]]]:
    """(name, RGB in [0, 1]) of each foreground class as `overlay` paints it: what a legend lists."""
    return [(name, tuple(PALETTE[k % len(PALETTE)] / 255)) for k, name in enumerate(class_names) if k > 0]


def _panels(panels: list[np.ndarray], titles: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
    """Side by side with a white gutter, enlarged (nearest) so that small images stay readable, a title above
    each panel and the class legend below."""
    from PIL import ImageDraw, ImageFont

    height = panels[0].shape[0]
    scale = max(1, -(-MIN_PANEL_SIZE // max(panels[0].shape[:2])))
    gutter = np.full((height, 2, 3), 255, dtype=np.uint8)
    joined = np.concatenate([part for panel in panels for part in (panel, gutter)][:-1], axis=1)
    joined = joined.repeat(scale, axis=0).repeat(scale, axis=1)
    font = ImageFont.load_default(size=TEXT_SIZE)
    band = TEXT_SIZE + 8
    canvas = Image.new("RGB", (joined.shape[1], joined.shape[0] + 2 * band), "white")
    canvas.paste(Image.fromarray(joined), (0, band))
    draw = ImageDraw.Draw(canvas)
    for index, title in enumerate(titles):
        draw.text((index * (panels[0].shape[1] + 2) * scale + 4, 3), title, fill="black", font=font)
    x = 4
    for name, colour in class_colours(class_names):
        swatch = tuple(int(round(255 * c)) for c in colour)
        top = joined.shape[0] + band + 4
        draw.rectangle((x, top, x + TEXT_SIZE - 2, top + TEXT_SIZE - 2), fill=swatch)
        draw.text((x + TEXT_SIZE + 2, top - 2), name, fill="black", font=font)
        x += TEXT_SIZE + 10 + int(draw.textlength(name, font=font))
    return np.asarray(canvas)


def write_slice_overlays(
    image: np.ndarray,
    labels: np.ndarray,
    out_dir: Path,
    stem: str,
    uncertainty: np.ndarray | None = None,
    axis: int = 0,
    class_names: Sequence[str] = (),
) -> list[Path]:
    """One PNG per slice along spatial `axis`: [image | mask overlay | uncertainty] (the last when given),
    each panel titled, with a legend of the `class_names` colours below.

    image (C, *spatial), labels and uncertainty (*spatial); a 2D image gives one `<stem>.png`, a volume
    `<stem>_slice_<k>.png` for every k.
    """
    out_dir = Path(out_dir)
    if labels.ndim == 2:
        slices = [(f"{stem}.png", stem, image, labels, uncertainty)]
    else:
        slices = [
            (
                f"{stem}_slice_{k:03d}.png",
                f"{stem}, slice {k}",
                np.take(image, k, axis=axis + 1),
                np.take(labels, k, axis=axis),
                None if uncertainty is None else np.take(uncertainty, k, axis=axis),
            )
            for k in range(labels.shape[axis])
        ]
    written = []
    for name, title, plane, mask, certainty in slices:
        panels, titles = [_window(plane), overlay(plane, mask)], [title, "prediction"]
        if certainty is not None:
            panels.append(heat(certainty))
            titles.append("uncertainty (dark 0, bright 1)")
        _save_png(out_dir / name, _panels(panels, titles, class_names))
        written.append(out_dir / name)
    return written


def slice_axis(spatial_dims: int) -> int:
    """The axis to page through: the one a 2D network slices along (first), a 3D volume's last (NIfTI z)."""
    return 0 if spatial_dims == 2 else 2


def _display_slices(truth: np.ndarray, predicted: np.ndarray, axis: int, count: int) -> list[int]:
    """The `count` slices with the most foreground (ground truth, else prediction), in order."""
    if truth.ndim == 2:
        return [0]
    other = tuple(a for a in range(truth.ndim) if a != axis)
    area = (truth > 0).sum(other)
    if not area.any():
        area = (predicted > 0).sum(other)
    if not area.any():
        return [truth.shape[axis] // 2]
    chosen = np.argsort(-area, kind="stable")[:count]
    return sorted(int(k) for k in chosen if area[k] > 0)


@dataclass
class _Kept:
    image: list[np.ndarray]
    truth: list[np.ndarray]
    predicted: list[np.ndarray]
    slices: list[int]


@dataclass
class ExtremeCases:
    """Keeps a few display slices of every evaluated case, then draws the worst and best of them.

    Call it with each (case, predicted labels) during evaluation (no case is predicted twice and no
    whole volume is kept), then `write(rows, out_dir)` with the per-case metric rows.
    """

    axis: int = 0
    count: int = 2
    slices_per_case: int = 3
    class_names: Sequence[str] = ()
    kept: dict[str, _Kept] = field(default_factory=dict)

    def __call__(self, case: Case, predicted: np.ndarray) -> None:
        if case.label is None:
            return
        slices = _display_slices(case.label, predicted, self.axis, self.slices_per_case)

        def take(array: np.ndarray, k: int, offset: int) -> np.ndarray:
            return array if case.label.ndim == 2 else np.take(array, k, axis=self.axis + offset)

        self.kept[case.case_id] = _Kept(
            image=[take(case.image, k, 1) for k in slices],
            truth=[take(case.label, k, 0) for k in slices],
            predicted=[take(predicted, k, 0) for k in slices],
            slices=slices,
        )

    def write(self, rows: Sequence[dict[str, Any]], out_dir: Path, metric: str = "dice") -> list[Path]:
        """`worst_<i>_<case>.png`, `best_<i>_<case>.png`: a row per slice; image, truth, prediction."""
        worst, best = worst_and_best(rows, self.count, metric)
        written = []
        for kind, ids in (("worst", worst), ("best", best)):
            for position, (case_id, score) in enumerate(ids, start=1):
                if case_id in self.kept:
                    path = Path(out_dir) / f"{kind}_{position}_{case_id}.png"
                    title = f"{kind} {position}: {case_id}, mean {metric} {score:.3f}"
                    _plot_case(self.kept[case_id], title, path, self.class_names)
                    written.append(path)
        return written


def worst_and_best(
    rows: Sequence[dict[str, Any]], count: int, metric: str = "dice"
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Cases ranked by their mean `metric` over classes: the `count` lowest and, disjoint from them, the
    `count` highest (each at most half of the cases, so a small evaluation shows both ends)."""
    by_case: dict[str, list[float]] = {}
    for row in rows:
        by_case.setdefault(row["case_id"], []).append(float(row[metric]))
    ranked = sorted(((case, float(np.mean(values))) for case, values in by_case.items()), key=lambda item: item[1])
    take = max(1, min(count, len(ranked) // 2)) if ranked else 0
    worst = ranked[:take]
    best = [item for item in reversed(ranked) if item not in worst][:take]
    return worst, best


def _plot_case(kept: _Kept, title: str, path: Path, class_names: Sequence[str] = ()) -> None:
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows = len(kept.slices)
    figure = Figure(figsize=(7.5, 2.6 * rows + 0.4))
    axes = np.atleast_2d(figure.subplots(rows, 3))
    for row, (image, truth, predicted, index) in enumerate(
        zip(kept.image, kept.truth, kept.predicted, kept.slices, strict=True)
    ):
        for column, (picture, name) in enumerate(
            [
                (_window(image), "image"),
                (overlay(image, truth), "ground truth"),
                (overlay(image, predicted), "prediction"),
            ]
        ):
            axis = axes[row, column]
            axis.imshow(picture, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(
                f"{name}" + (f" (slice {index})" if column == 0 and len(kept.slices) > 1 else ""), fontsize=8
            )
    figure.suptitle(title, fontsize=10)
    legend = [Patch(facecolor=colour, label=name) for name, colour in class_colours(class_names)]
    if legend:
        figure.legend(handles=legend, loc="lower center", ncol=min(len(legend), 6), fontsize=8, frameon=False)
    bottom = 0.3 / (2.6 * rows + 0.4) if legend else 0.02
    figure.subplots_adjust(left=0.02, right=0.98, bottom=bottom, top=1 - 0.5 / (2.6 * rows + 0.4), hspace=0.2)
    _save_png(path, figure)
