"""Label budgets in patients, split files, and the errors that name the setting or file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsemi.data import DataError, create_dataset, make_split, require_unlabeled
from medsemi.data.cases import Dataset


@pytest.fixture(scope="module")
def phantoms() -> Dataset:
    return create_dataset(
        "synthetic2d", n_train_patients=4, n_val=1, n_test=1, n_unlabeled_patients=1, size=[32, 32], depth=3
    )


@pytest.mark.real_data
def test_acdc_budgets_match_the_literature(acdc_root: Path) -> None:
    # 200 slices cover the first 7 patients (136 slices) and part of the 8th.
    dataset = create_dataset("acdc", acdc_root, splits=["train"], limit=200)
    three, seven = make_split(dataset, 3), make_split(dataset, 7)
    assert len(three.labeled) == 68 and len(seven.labeled) == 136
    assert three.labeled_patients == ["patient099", "patient038", "patient050"]
    assert seven.labeled_patients[3:] == ["patient100", "patient058", "patient021", "patient049"]
    for split in (three, seven):
        labeled, unlabeled = set(split.labeled_patients), {case.patient for case in split.unlabeled}
        assert labeled.isdisjoint(unlabeled)
        assert {case.case_id.split("_")[1] for case in split.labeled} == {"frame01", "frame02"}
        assert len(split.labeled) + len(split.unlabeled) == 200


def test_budget_takes_first_patients_and_hides_the_rest(phantoms: Dataset) -> None:
    split = make_split(phantoms, 2)
    assert split.labeled_patients == ["train000", "train001"] and len(split.labeled) == 6
    assert [case.patient for case in split.unlabeled] == ["train002"] * 3 + ["train003"] * 3 + ["unlabeled000"] * 3
    assert all(case.label is None for case in split.unlabeled)
    assert phantoms.train[-1].label is not None  # the dataset itself keeps its labels
    assert split.val == phantoms.val and split.test == phantoms.test
    assert split.summary()["cases"] == {"labeled": 6, "unlabeled": 9, "val": 1, "test": 1}


def test_no_budget_labels_every_training_patient(phantoms: Dataset) -> None:
    split = make_split(phantoms, None)
    assert len(split.labeled) == len(phantoms.train)
    assert [case.patient for case in split.unlabeled] == ["unlabeled000"] * 3


@pytest.mark.parametrize("budget", [5, 70])
def test_budget_larger_than_the_training_set(phantoms: Dataset, budget: int) -> None:
    with pytest.raises(DataError, match=rf"data.labeled = {budget} exceeds the 4 training patients of synthetic2d"):
        make_split(phantoms, budget)


@pytest.mark.parametrize("budget", [0, -1, True, 2.5])
def test_budget_must_be_a_positive_integer(phantoms: Dataset, budget: object) -> None:
    with pytest.raises(DataError, match="data.labeled must be a positive number"):
        make_split(phantoms, budget)  # type: ignore[arg-type]


def test_empty_unlabeled_set_is_an_error_for_ssl_methods() -> None:
    dataset = create_dataset("synthetic2d", n_train_patients=2, n_val=0, n_test=0, size=[32, 32], depth=2)
    split = make_split(dataset, 2)
    assert split.unlabeled == []
    with pytest.raises(DataError, match=r"method 'mean_teacher' needs unlabeled data.*first 2 of 2"):
        require_unlabeled(split, "mean_teacher")
    require_unlabeled(make_split(dataset, 1), "mean_teacher")


def test_yaml_split_file_overrides_the_budget(phantoms: Dataset, tmp_path: Path) -> None:
    path = tmp_path / "split.yaml"
    path.write_text("labeled: [train003, train000_slice_1]\ntest: [test000, val000]\n")
    split = make_split(phantoms, 1, path)
    assert [case.case_id for case in split.labeled] == [f"train003_slice_{k}" for k in range(3)] + ["train000_slice_1"]
    assert [case.case_id for case in split.test] == ["test000", "val000"]
    assert split.val == []  # val000 moved to test, so the default val keeps nothing twice
    unlabeled = {case.case_id for case in split.unlabeled}
    assert (
        "train000_slice_0" in unlabeled and "train000_slice_1" not in unlabeled and "unlabeled000_slice_2" in unlabeled
    )
    assert str(path) in split.rule


def test_json_split_file_with_explicit_lists(phantoms: Dataset, tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"labeled": ["train001"], "unlabeled": ["train002"], "val": ["val000"]}))
    split = make_split(phantoms, None, path)
    assert split.labeled_patients == ["train001"]
    assert {case.patient for case in split.unlabeled} == {"train002"}
    assert [case.case_id for case in split.val] == ["val000"] and split.test == phantoms.test


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("labeled: [train000, patient999]\n", r"unknown ids under labeled: \['patient999'\]"),
        ("labeled: []\n", "labeled list is missing or empty"),
        ("labled: [train000]\n", r"unknown keys \['labled'\]"),
        ("labeled: [train000]\nunlabeled: [train000_slice_0]\n", "cases in both labeled and unlabeled"),
        (
            "labeled: [train000]\nval: [train001_slice_0]\n",
            r"patients in both training and val/test.*train001",
        ),
        ("labeled: [unlabeled000]\n", "cases without a label"),
        ("labeled: train000\n", "must be a list"),
    ],
)
def test_bad_split_files_name_the_file(phantoms: Dataset, tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as error:
        make_split(phantoms, 3, path)
    assert str(path) in str(error.value)


def test_missing_split_file_is_named(phantoms: Dataset, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere\.yaml: cannot read split file"):
        make_split(phantoms, 3, tmp_path / "nowhere.yaml")
