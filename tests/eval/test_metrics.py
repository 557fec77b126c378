import csv
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import ndimage

from medsemi.eval.metrics import (
    binary_metrics,
    case_metrics,
    hd95_from_distances,
    image_diagonal,
    surface_distances,
)
from medsemi.eval.report import plot_case_dice, summarise, write_case_table, write_summary


def medpy_reference(pred: np.ndarray, gt: np.ndarray, spacing=None) -> tuple[float, float, float, float]:
    """medpy 0.5 `dc`, `jc`, `hd95`, `asd` transcribed (whole image, no cropping) as the parity oracle."""

    def directed(result, reference):
        footprint = ndimage.generate_binary_structure(result.ndim, 1)
        result_border = result ^ ndimage.binary_erosion(result, structure=footprint, iterations=1)
        reference_border = reference ^ ndimage.binary_erosion(reference, structure=footprint, iterations=1)
        return ndimage.distance_transform_edt(~reference_border, sampling=spacing)[result_border]

    inter = np.count_nonzero(pred & gt)
    dice = 2.0 * inter / (np.count_nonzero(pred) + np.count_nonzero(gt))
    jaccard = inter / np.count_nonzero(pred | gt)
    hd95 = np.percentile(np.hstack((directed(pred, gt), directed(gt, pred))), 95)
    return dice, jaccard, float(hd95), float(directed(pred, gt).mean())


def test_dice_and_jaccard_of_offset_squares():
    pred, gt = np.zeros((12, 12), bool), np.zeros((12, 12), bool)
    pred[0:6, 0:6] = True
    gt[1:7, 1:7] = True
    result = binary_metrics(pred, gt)
    assert result.dice == pytest.approx(50 / 72)
    assert result.jaccard == pytest.approx(25 / 47)


def test_distances_of_parallel_lines_scale_with_spacing():
    pred, gt = np.zeros((8, 10), bool), np.zeros((8, 10), bool)
    pred[2, :] = True
    gt[5, :] = True
    assert binary_metrics(pred, gt).hd95 == pytest.approx(3.0)
    assert binary_metrics(pred, gt).asd == pytest.approx(3.0)
    assert binary_metrics(pred, gt, spacing=(2.0, 0.5)).hd95 == pytest.approx(6.0)
    assert binary_metrics(pred, gt, spacing=(0.5, 2.0)).asd == pytest.approx(1.5)


def test_single_points():
    pred, gt = np.zeros((5, 6, 7), bool), np.zeros((5, 6, 7), bool)
    pred[1, 1, 1] = True
    gt[4, 5, 1] = True
    assert binary_metrics(pred, gt).hd95 == pytest.approx(5.0)
    assert binary_metrics(pred, gt, spacing=(1.0, 1.0, 9.0)).asd == pytest.approx(5.0)


def test_hd95_pools_both_directions_and_asd_is_pred_to_gt():
    pred, gt = np.zeros((3, 40), bool), np.zeros((3, 40), bool)
    pred[0, :] = True
    gt[0, :20] = True
    pred_to_gt = [0.0] * 20 + [float(d) for d in range(1, 21)]
    gt_to_pred = [0.0] * 20
    pooled = float(np.percentile(pred_to_gt + gt_to_pred, 95))
    worst_direction = float(np.percentile(pred_to_gt, 95))
    result = binary_metrics(pred, gt)
    assert result.hd95 == pytest.approx(pooled)
    assert pooled != pytest.approx(worst_direction)
    assert result.asd == pytest.approx(np.mean(pred_to_gt))
    assert binary_metrics(gt, pred).asd == pytest.approx(0.0)
    d1, d2 = surface_distances(pred, gt)
    assert hd95_from_distances(d1, d2, "max") == pytest.approx(worst_direction)


def test_matches_uncropped_medpy_algorithm_on_random_blobs():
    rng = np.random.default_rng(3)
    for shape, spacing in [((9, 30, 26), None), ((9, 30, 26), (10.0, 1.5, 0.7)), ((40, 33), (0.8, 1.1))]:
        blob = ndimage.gaussian_filter(rng.normal(size=shape), 2)
        pred = blob > 0.05
        gt = ndimage.gaussian_filter(rng.normal(size=shape), 2) > 0.0
        gt[(slice(0, 3),) * len(shape)] = True  # touching the image border
        result = binary_metrics(pred, gt, spacing)
        expected = medpy_reference(pred, gt, spacing)
        assert (result.dice, result.jaccard, result.hd95, result.asd) == pytest.approx(expected, rel=1e-12)


def test_empty_prediction_conventions():
    gt, empty = np.zeros((10, 20), bool), np.zeros((10, 20), bool)
    gt[2:5, 3:9] = True
    diagonal = math.sqrt(10**2 + 20**2)
    papers = binary_metrics(empty, gt, convention="papers")
    strict = binary_metrics(empty, gt, convention="strict")
    assert (papers.dice, papers.jaccard, papers.hd95, papers.asd) == (0.0, 0.0, 0.0, 0.0)
    assert (strict.dice, strict.jaccard) == (0.0, 0.0)
    assert strict.hd95 == pytest.approx(diagonal) and strict.asd == pytest.approx(diagonal)
    assert binary_metrics(empty, gt, (2.0, 1.0), "strict").hd95 == pytest.approx(math.sqrt(20**2 + 20**2))
    both_papers = binary_metrics(empty, empty, convention="papers")
    both_strict = binary_metrics(empty, empty, convention="strict")
    assert (both_papers.dice, both_papers.hd95) == (0.0, 0.0)
    assert (both_strict.dice, both_strict.jaccard, both_strict.hd95, both_strict.asd) == (1.0, 1.0, 0.0, 0.0)
    for convention in ("papers", "strict"):
        false_positive = binary_metrics(gt, empty, convention=convention)
        assert (false_positive.dice, false_positive.hd95) == (0.0, pytest.approx(diagonal))
    with pytest.raises(ValueError):
        binary_metrics(gt, gt, convention="lenient")


def _three_class_case() -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((4, 16, 18), np.uint8)
    gt[1:3, 2:8, 2:8] = 1
    gt[1:4, 9:14, 4:12] = 2
    pred = gt.copy()
    pred[1:3, 2:8, 2:8] = 0
    pred[1:3, 3:9, 2:8] = 1  # class 1 shifted by one row
    pred[3, 9:14, 4:12] = 0  # class 2 loses a slice
    return pred, gt


def test_case_metrics_per_class_units_and_conventions():
    pred, gt = _three_class_case()
    spacing = (10.0, 1.0, 1.0)
    result = case_metrics(pred, gt, num_classes=4, spacing=spacing)
    assert sorted(result) == [1, 2, 3]
    for c in (1, 2):
        voxels = binary_metrics(pred == c, gt == c)
        mm = binary_metrics(pred == c, gt == c, spacing)
        row = result[c]
        assert (row["dice"], row["jaccard"], row["hd95"], row["asd"]) == pytest.approx(
            (voxels.dice, voxels.jaccard, voxels.hd95, voxels.asd)
        )
        assert (row["hd95_mm"], row["asd_mm"]) == pytest.approx((mm.hd95, mm.asd))
        assert row["hd95_strict"] == row["hd95"] and not row["empty_pred"]
    assert result[2]["hd95"] == pytest.approx(1.0) and result[2]["hd95_mm"] == pytest.approx(10.0)
    absent = result[3]
    assert absent["empty_pred"] and absent["empty_gt"]
    assert (absent["dice"], absent["dice_strict"], absent["hd95_mm_strict"]) == (0.0, 1.0, 0.0)
    assert "hd95_mm" not in case_metrics(pred, gt, num_classes=4)[1]


def test_dice_only_fast_path():
    pred, gt = _three_class_case()
    fast = case_metrics(pred, gt, num_classes=4, dice_only=True)
    full = case_metrics(pred, gt, num_classes=4)
    assert set(fast[1]) == {"dice", "dice_strict", "empty_pred", "empty_gt"}
    assert all(fast[c]["dice"] == full[c]["dice"] for c in (1, 2, 3))
    with pytest.raises(ValueError):
        case_metrics(pred, gt[:-1], num_classes=4)
    with pytest.raises(ValueError, match="outside"):
        case_metrics(pred, gt, num_classes=2)


def test_image_diagonal():
    assert image_diagonal((3, 4)) == pytest.approx(5.0)
    assert image_diagonal((3, 4), (2.0, 0.5)) == pytest.approx(math.sqrt(36 + 4))


def _rows() -> list[dict]:
    return [
        {"case_id": "a", "class": "RV", "dice": 0.2, "hd95": 4.0, "empty_pred": False, "empty_gt": False},
        {"case_id": "b", "class": "RV", "dice": 0.4, "hd95": 2.0, "empty_pred": False, "empty_gt": False},
        {"case_id": "a", "class": "LV", "dice": 1.0, "hd95": 0.0, "empty_pred": True, "empty_gt": False},
    ]


def test_summary_averages_per_class_then_over_classes():
    summary = summarise(_rows())
    assert summary["per_class"]["RV"]["dice"] == pytest.approx(0.3)
    assert summary["mean"]["dice"] == pytest.approx((0.3 + 1.0) / 2)
    assert summary["mean"]["hd95"] == pytest.approx((3.0 + 0.0) / 2)
    assert summary["std"]["RV"]["dice"] == pytest.approx(0.1)
    assert summary["empty_pred"] == {"RV": 0, "LV": 1}
    assert summary["num_cases"] == 2 and summary["classes"] == ["RV", "LV"]
    assert "empty_pred" not in summary["mean"]


def test_reports_are_written_completely(tmp_path: Path):
    rows = _rows()
    write_case_table(rows, tmp_path / "cases.csv")
    with open(tmp_path / "cases.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [r["case_id"] for r in table] == ["a", "b", "a"] and float(table[1]["dice"]) == 0.4
    header = {"protocol": "acdc-ssl4mis", "seed": 1337, "checkpoint": "best-on-val"}
    write_summary(summarise(rows), tmp_path / "summary.md", tmp_path / "summary.csv", header)
    markdown = (tmp_path / "summary.md").read_text()
    assert "- checkpoint: best-on-val" in markdown and "| mean |" in markdown
    with open(tmp_path / "summary.csv") as handle:
        summary_rows = list(csv.DictReader(handle))
    assert [r["class"] for r in summary_rows] == ["RV", "LV", "mean"]
    assert summary_rows[2]["seed"] == "1337" and float(summary_rows[2]["dice"]) == pytest.approx(0.65)
    plot_case_dice(rows, tmp_path / "dice.png")
    assert (tmp_path / "dice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cases.csv",
        "dice.png",
        "summary.csv",
        "summary.md",
    ]


@pytest.mark.real_data
def test_parity_and_speed_on_real_volumes(acdc_root: Path, la_root: Path):
    """Our cropped metrics equal the whole-volume medpy algorithm on a real LA label and ACDC volume."""
    import time

    la_case = sorted((la_root / "2018LA_Seg_Training Set").iterdir())[0]
    with h5py.File(la_case / "mri_norm2.h5") as handle:
        gt = handle["label"][:].astype(bool)
    pred = ndimage.binary_dilation(ndimage.binary_erosion(gt, iterations=3), iterations=1)
    pred[:, :, : gt.shape[2] // 3] = False
    start = time.perf_counter()
    result = binary_metrics(pred, gt, spacing=(0.625, 0.625, 0.625))
    elapsed = time.perf_counter() - start
    expected = medpy_reference(pred, gt, (0.625, 0.625, 0.625))
    assert (result.dice, result.jaccard, result.hd95, result.asd) == pytest.approx(expected, rel=1e-12)
    assert elapsed < 10.0

    name = (acdc_root / "test.list").read_text().split()[0]
    with h5py.File(acdc_root / "data" / f"{name}.h5") as handle:
        labels = handle["label"][:]
    shifted = np.roll(labels, 2, axis=2)
    rows = case_metrics(shifted, labels, num_classes=4)
    for c in (1, 2, 3):
        dice, jaccard, hd95, asd = medpy_reference(shifted == c, labels == c)
        assert (rows[c]["dice"], rows[c]["hd95"], rows[c]["asd"]) == pytest.approx((dice, hd95, asd), rel=1e-12)
