"""Learning curves in the run folder, per-slice overlays, and the worst/best cases of an evaluation."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from medsemi.config import load_config
from medsemi.engine.trainer import train
from medsemi.eval.evaluate import evaluate_run
from medsemi.eval.figures import PALETTE, plot_learning_curves, worst_and_best, write_slice_overlays

REPO = Path(__file__).resolve().parents[2]


def test_learning_curves_png_from_log_rows(tmp_path: Path) -> None:
    rows = [
        {
            "stage": "pretrain" if step <= 5 else "train",
            "global_step": step,
            "lr": 0.01 / step,
            "loss": 1 / step,
        }
        | {"loss/supervised": 0.5 / step}
        | ({"val_dice": step / 10} if step % 5 == 0 else {})
        for step in range(1, 11)
    ]
    path = tmp_path / "curves.png"
    plot_learning_curves(rows, path)
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.width > 2 * picture.height
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # written atomically, no leftovers


def test_slice_overlays_colour_the_mask_and_show_the_uncertainty(tmp_path: Path) -> None:
    image = np.random.default_rng(0).uniform(0.4, 0.6, size=(1, 3, 20, 24)).astype(np.float32)
    labels = np.zeros((3, 20, 24), dtype=np.uint8)
    labels[1, 5:15, 6:18] = 2
    names = ["background", "RV", "Myo"]
    written = write_slice_overlays(
        image, labels, tmp_path / "o", "case", np.full(labels.shape, 0.5), axis=0, class_names=names
    )
    assert [p.name for p in written] == [f"case_slice_{k:03d}.png" for k in range(3)]
    panel = np.asarray(Image.open(written[1]))
    scale = panel.shape[1] // (3 * 24 + 2 * 2)  # image | overlay | uncertainty, 2-pixel gutters
    band = (panel.shape[0] - 20 * scale) // 2  # titles above, the class legend below
    assert panel.shape[1] == scale * (3 * 24 + 2 * 2) and band > 0
    inside = panel[band + 10 * scale, (26 + 12) * scale].astype(float)  # centre of the class-2 box, overlay panel
    outside = panel[band + 2 * scale, (26 + 2) * scale].astype(float)
    assert np.argmax(inside) == np.argmax(PALETTE[2]) and np.ptp(outside) == 0  # coloured vs grey
    title, legend = panel[:band], panel[band + 20 * scale :]
    assert (title.min(-1) < 100).any()  # dark text on white
    for k in (1, 2):  # a swatch of each class colour
        assert (np.abs(legend.astype(float) - PALETTE[k]).sum(-1) < 1).any()
    assert len(write_slice_overlays(image[:, 0], labels[0], tmp_path / "flat", "image")) == 1


def test_worst_and_best_are_disjoint_ends_of_the_ranking() -> None:
    dice = {"a": 0.9, "b": 0.2, "c": 0.6, "d": 0.95, "e": 0.4}
    rows = [{"case_id": case, "class": c, "dice": value} for case, value in dice.items() for c in ("x", "y")]
    worst, best = worst_and_best(rows, count=2)
    assert [case for case, _ in worst] == ["b", "e"] and [case for case, _ in best] == ["d", "a"]
    worst, best = worst_and_best(rows[:4], count=2)  # two cases: one of each
    assert [case for case, _ in worst] == ["b"] and [case for case, _ in best] == ["a"]


def test_training_draws_learning_curves_and_evaluation_draws_worst_and_best(tmp_path: Path) -> None:
    overrides = [
        "data.patch_size=[32,32]",
        "data.batch_labeled=2",
        "data.batch_unlabeled=2",
        "data.options={n_train_patients: 3, n_val: 1, n_test: 3, size: [32, 32], depth: 3}",
        "net.options={widths: [4, 8, 16, 32, 64]}",
        "train.iterations=2",
        "train.val_split=none",
        "train.progress=false",
        f"run.dir={tmp_path / 'run'}",
    ]
    run_dir = train(load_config(REPO / "configs/demo/supervised.yaml", overrides))
    assert (run_dir / "learning_curves.png").stat().st_size > 0
    evaluate_run(run_dir, split="test")
    out = run_dir / "eval" / "test_last"
    by_case: dict[str, list[float]] = {}
    for row in csv.DictReader((out / "cases.csv").open()):
        by_case.setdefault(row["case_id"], []).append(float(row["dice"]))
    ranked = sorted(by_case, key=lambda case: (np.mean(by_case[case]), list(by_case).index(case)))
    assert sorted(p.name for p in (out / "overlays").iterdir()) == [
        f"best_1_{ranked[-1]}.png",
        f"worst_1_{ranked[0]}.png",
    ]
