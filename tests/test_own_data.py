"""A user's own data: a 2D PNG set with several patches per patient and a known up direction, a 3D NIfTI set
with mixed spacings, per-patient results, declared and unknown spacing, and docs/how-to/own-data.md run as
written."""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsemi.cli import main
from medsemi.config import load_config
from medsemi.data import create_dataset
from medsemi.data.check import inspect_dataset
from medsemi.data.examples import NIFTI_CASES, PNG_PATCHES, PNG_SPACING_UM, write_nifti_example, write_png_example
from medsemi.data.splits import load_split
from medsemi.engine.trainer import train
from medsemi.eval.evaluate import evaluate_run, load_run
from medsemi.eval.uncertainty import flip_axes

REPO = Path(__file__).resolve().parents[1]
UPRIGHT = "data.augment={flip: [1], rotate: 10, zoom: [0.9, 1.1], gamma: [0.8, 1.25], noise: 0.05}"
TINY = [
    "data.dataset=nnunet",
    "data.patch_size=[32,32]",
    "data.batch_labeled=2",
    "data.batch_unlabeled=2",
    "net.options={widths: [4, 8, 16, 32, 64]}",
    "train.iterations=2",
    "train.val_split=none",
    "train.progress=false",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def png_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_png_example(tmp_path_factory.mktemp("png") / "Example_OCT")


@pytest.fixture(scope="module")
def png_run(png_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mean teacher on the PNG example, upright recipe, 2 iterations."""
    run = tmp_path_factory.mktemp("png_run") / "run"
    overrides = [*TINY, f"data.root={png_root}", "data.labeled=3", UPRIGHT, f"run.dir={run}"]
    return train(load_config(REPO / "configs/demo/mean_teacher.yaml", overrides))


def test_the_png_example_has_patches_of_patients_a_known_up_and_a_declared_pixel_size(png_root: Path) -> None:
    dataset = create_dataset("nnunet", png_root)
    assert len(dataset.train) == 8 * PNG_PATCHES and len({case.patient for case in dataset.train}) == 8
    case = dataset.train[0]
    assert case.spacing == pytest.approx(tuple(v / 1000 for v in PNG_SPACING_UM))  # micrometres -> mm
    assert (case.label[0] == 0).all() and (case.label[-1] == 3).all()  # vitreous on top, the deepest layer below
    report = inspect_dataset(png_root)
    assert report.problems == [] and report.warnings == [] and "spacing 0.0039 x 0.0117 mm" in report.summary


def test_an_upright_recipe_gets_no_vertical_flips_at_test_time(png_run: Path) -> None:
    loaded = load_run(png_run)
    image = np.zeros((1, 64, 64), np.float32)
    assert flip_axes(loaded.info, image, loaded.config) == (1,)  # left-right only


def test_evaluation_is_per_case_and_per_patient_and_names_the_split_file(
    png_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = tmp_path / "split.yaml"
    split.write_text("labeled: [train00, train02]\nunlabeled: [train01]\ntest: [test00, test01]\n")
    run = tmp_path / "run"
    overrides = [*TINY, f"data.root={png_root}", f"data.split_file={split}", UPRIGHT, f"run.dir={run}"]
    train(load_config(REPO / "configs/demo/supervised.yaml", overrides))
    assert f"split: split file {split} (2 labeled patients)" in capsys.readouterr().out
    summary = evaluate_run(run, split="test", checkpoint="last")
    assert "evaluated: 8 cases of 2 patients" in capsys.readouterr().out
    cases = list(csv.DictReader((summary["folder"] / "cases.csv").open()))
    assert list(cases[0])[:3] == ["case_id", "patient", "class"]
    assert {row["patient"] for row in cases} == {"test00", "test01"}
    patients = list(csv.DictReader((summary["folder"] / "patients.csv").open()))
    assert len(patients) == 2 * 3 and {row["cases"] for row in patients} == {str(PNG_PATCHES)}
    for row in patients:
        own = [float(c["dice"]) for c in cases if c["patient"] == row["patient"] and c["class"] == row["class"]]
        assert float(row["dice"]) == pytest.approx(np.mean(own))
    assert summary["per_patient"]["num_cases"] == 2
    text = (summary["folder"] / "summary.md").read_text()
    assert f"- split rule: split file {split} (2 labeled patients)" in text and "- labeled: 2\n" in text
    assert "## Per patient" in text and "*_mm in millimetres" in text


def test_unknown_spacing_is_said_and_gives_no_millimetre_columns(
    png_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "no_spacing"
    write_png_example(root)
    meta = json.loads((root / "dataset.json").read_text())
    del meta["spacing"], meta["spacing_unit"]
    (root / "dataset.json").write_text(json.dumps(meta))
    assert main(["data", "check", str(root)]) == 0
    assert "spacing unknown" in capsys.readouterr().out
    run = tmp_path / "run"
    train(load_config(REPO / "configs/demo/supervised.yaml", [*TINY, f"data.root={root}", f"run.dir={run}"]))
    summary = evaluate_run(run, split="test", checkpoint="last", limit=2)
    assert not any(name.endswith("_mm") for name in summary["mean"]) and "hd95" in summary["mean"]
    assert "the spacing is unknown" in (summary["folder"] / "summary.md").read_text()


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        ({"spacing": [0.01]}, "spacing must be two positive numbers [rows, columns]"),
        ({"spacing": [10, 10], "spacing_unit": "inch"}, "spacing_unit 'inch' is not one of mm, um"),
        ({"spacing_unit": "um", "spacing": None}, "spacing must be two positive numbers"),
        ({"patients": {"train0*": "train00"}}, "patients names 1 id(s) that are no case, e.g. ['train0*']"),
    ],
)
def test_bad_dataset_json_entries_are_problems(tmp_path: Path, edit: dict, says: str) -> None:
    root = write_png_example(tmp_path / "data")
    meta = {**json.loads((root / "dataset.json").read_text()), **edit}
    if edit.get("patients"):
        meta["patients"] = {**json.loads((root / "dataset.json").read_text())["patients"], **edit["patients"]}
    (root / "dataset.json").write_text(json.dumps(meta))
    problems = [str(problem) for problem in inspect_dataset(root).problems]
    assert any(says in problem for problem in problems), problems


def test_a_partial_patients_mapping_is_a_warning(tmp_path: Path) -> None:
    root = write_png_example(tmp_path / "data")
    meta = json.loads((root / "dataset.json").read_text())
    meta["patients"] = {case: patient for case, patient in meta["patients"].items() if case.startswith("train")}
    (root / "dataset.json").write_text(json.dumps(meta))
    report = inspect_dataset(root)
    assert report.problems == []
    assert [w.message for w in report.warnings] == [
        "patients leaves out 24 case(s), e.g. ['test00_patch0', 'test00_patch1', 'test00_patch2']: each is its own "
        "patient"
    ]
    with pytest.warns(UserWarning, match="patients leaves out 24 case"):
        create_dataset("nnunet", root)


def test_nifti_spacing_comes_from_the_header_only(tmp_path: Path) -> None:
    root = write_nifti_example(tmp_path / "data")
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "spacing": [1, 1]}))
    assert "spacing is for PNG/TIFF data" in str(inspect_dataset(root).problems[0])


def test_a_3d_set_with_mixed_spacings_is_warned_about_trains_and_predicts_in_each_input_geometry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    total = sum(NIFTI_CASES.values())
    spacings = [(0.8, 0.8, 2.0) if i % 2 else (1.1, 1.0, 3.0) for i in range(total)]
    root = write_nifti_example(tmp_path / "data", spacings=spacings)
    assert main(["data", "check", str(root)]) == 0
    assert "different voxel spacings (0.8..1.1 x 0.8..1 x 2..3 mm)" in capsys.readouterr().out
    run = tmp_path / "run"
    overrides = [
        "data.dataset=nnunet",
        f"data.root={root}",
        "data.labeled=3",
        "data.options={val_from_train: 0}",
        "data.patch_size=[32,32,16]",
        "data.batch_labeled=1",
        "data.batch_unlabeled=1",
        "net.options={n_filters: 2}",
        "train.iterations=2",
        "train.val_split=none",
        "train.progress=false",
        "eval.stride=[32,32,16]",
        f"run.dir={run}",
    ]
    with pytest.warns(UserWarning, match="different voxel spacings"):
        train(load_config(REPO / "configs/la/mean_teacher.yaml", overrides))
    scans = sorted((root / "imagesTs").iterdir())
    assert main(["predict", str(run), *map(str, scans), "-o", str(tmp_path / "out")]) == 0
    for scan in scans:
        source = nib.load(scan)
        case = scan.name.removesuffix("_0000.nii.gz")
        for name in (f"{case}.nii.gz", f"{case}_uncertainty.nii.gz"):
            written = nib.load(tmp_path / "out" / name)
            assert written.shape == source.shape
            np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
    assert nib.load(scans[0]).header.get_zooms() != nib.load(scans[1]).header.get_zooms()


def _how_to_commands(page: Path) -> list[list[str]]:
    """The `.venv/bin/medsemi ...` commands of a page's bash blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith(".venv/bin/medsemi "):
                commands.append(shlex.split(line)[1:])
    return commands


@pytest.mark.slow
def test_the_own_data_how_to_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command of docs/how-to/own-data.md, in order, in a fresh folder (configs/ linked in)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    commands = _how_to_commands(REPO / "docs/how-to/own-data.md")
    assert [command[:2] for command in commands[:2]] == [["data", "example"], ["data", "check"]]
    for command in commands:
        assert main(command) == 0, command
    out = capsys.readouterr().out
    assert "0 problem(s) found in data/Example_OCT" in out and "0 problem(s) found in data/Example_Blobs" in out
    for path in (
        "runs/oct/eval/test_best/patients.csv",
        "predictions/oct/test00_patch0.png",
        "predictions/oct/test00_patch0_overlay/test00_patch0.png",
        "runs/oct/next.csv",
        "runs/blobs/eval/test_best/summary.md",
        "predictions/blobs/case10.nii.gz",
    ):
        assert (tmp_path / path).is_file(), path
    assert load_split(load_run(tmp_path / "runs/oct").config.data)[1].rule == "first 4 of 7 training patients"
