"""Label budgets and split files: which cases are labeled, unlabeled, validation and test.

The budget is counted in patients, as the literature does: "N labeled" = the first N distinct patients in
the reader's training order (ACDC: train_slices.list, 3 -> 68 slices, 7 -> 136; LA: the first N ids of
train.list).
Every case of a labeled patient is labeled, so both frames of a patient stay on one side. The rest of the
training set plus the dataset's never-annotated cases form the unlabeled pool, with their labels removed
(`label=None`) so no method can read them. A split file lists ids explicitly and overrides the budget.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from medsemi.config import DataConfig
from medsemi.data.cases import Case, DataError, Dataset, DatasetInfo
from medsemi.data.registry import create_dataset

SPLIT_KEYS = ("labeled", "unlabeled", "val", "test")


@dataclass
class Split:
    """The four case lists a run uses; `rule` says how the labeled set was chosen (for logs and reports)."""

    labeled: list[Case]
    unlabeled: list[Case]
    val: list[Case]
    test: list[Case]
    rule: str = ""

    @property
    def labeled_patients(self) -> list[str]:
        return patients(self.labeled)

    def summary(self) -> dict[str, object]:
        """Counts and the labeled patient ids, to be written into the run folder."""
        counts = {key: len(getattr(self, key)) for key in SPLIT_KEYS}
        return {"rule": self.rule, "labeled_patients": self.labeled_patients, "cases": counts}


def patients(cases: list[Case]) -> list[str]:
    """Distinct patients in order of first appearance."""
    return list(dict.fromkeys(case.patient for case in cases))


def across_patients(cases: list[Case], limit: int | None, seed: int) -> list[Case]:
    """The first `limit` cases (all when None) of a round robin over the patients (in order of first
    appearance), each patient's cases in a seeded random order: any prefix is an even, deterministic sample of
    every patient, where the first N cases of a list sorted by case id may all be one patient's."""
    by_patient: dict[str, list[Case]] = {}
    for case in cases:
        by_patient.setdefault(case.patient, []).append(case)
    queues = [
        [group[i] for i in np.random.default_rng([seed, index]).permutation(len(group))]
        for index, group in enumerate(by_patient.values())
    ]
    order = [
        queue[depth] for depth in range(max(map(len, queues), default=0)) for queue in queues if depth < len(queue)
    ]
    return order if limit is None else order[:limit]


def describe_split(split: Split, notes: dict[str, str] | None = None) -> list[str]:
    """Lines saying how the split was chosen and how many cases and patients each role holds (`notes`: a
    remark per role, e.g. which validation cases are scored), for commands to print before they work."""
    notes = notes or {}
    lines = [f"split: {split.rule}"]
    for key in SPLIT_KEYS:
        cases = getattr(split, key)
        note = f" ({notes[key]})" if key in notes else ""
        lines.append(f"  {key:<10}{len(cases):>6} cases {len(patients(cases)):>5} patients{note}")
    return lines


def unlabeled_view(cases: list[Case]) -> list[Case]:
    """The same cases without labels (arrays are shared, not copied)."""
    return [case if case.label is None else dataclasses.replace(case, label=None) for case in cases]


def make_split(dataset: Dataset, labeled: int | None, split_file: Path | str | None = None) -> Split:
    """Budget `labeled` patients (None = every training patient), or the ids of `split_file` when given."""
    if split_file is not None:
        return read_split_file(dataset, Path(split_file))
    if not dataset.train:
        raise DataError(f"data.labeled: dataset {dataset.info.name} has no annotated training cases")
    train_patients = patients(dataset.train)
    if labeled is None:
        chosen = set(train_patients)
        rule = f"all {len(train_patients)} training patients"
    else:
        if isinstance(labeled, bool) or not isinstance(labeled, int) or labeled < 1:
            raise DataError(f"data.labeled must be a positive number of patients or null for all, got {labeled!r}")
        if labeled > len(train_patients):
            raise DataError(
                f"data.labeled = {labeled} exceeds the {len(train_patients)} training patients of {dataset.info.name}"
            )
        chosen = set(train_patients[:labeled])
        rule = f"first {labeled} of {len(train_patients)} training patients"
    labeled_cases = [case for case in dataset.train if case.patient in chosen]
    rest = [case for case in dataset.train if case.patient not in chosen]
    return Split(labeled_cases, unlabeled_view(rest + dataset.unlabeled), dataset.val, dataset.test, rule)


def require_unlabeled(split: Split, method_name: str) -> None:
    """Methods that learn from unlabeled data call this: an empty pool is a configuration error."""
    if not split.unlabeled:
        raise DataError(
            f"method {method_name!r} needs unlabeled data but the split has none ({split.rule}): lower "
            "data.labeled, add unannotated scans (imagesUnlabeled/), or use method supervised"
        )


def read_split_file(dataset: Dataset, path: Path) -> Split:
    """Lists of patient or case ids under labeled / unlabeled / val / test (JSON or YAML).

    A missing key defaults to the dataset's own cases not listed elsewhere: unlabeled = training and
    unannotated cases, val and test = the dataset's val and test. An id names a case, or failing that every
    case of a patient.
    """
    content = _load_mapping(path)
    unknown_keys = sorted(set(content) - set(SPLIT_KEYS))
    if unknown_keys:
        raise DataError(f"{path}: unknown keys {unknown_keys}; use {list(SPLIT_KEYS)}")
    everything = dataset.train + dataset.unlabeled + dataset.val + dataset.test
    by_case = {case.case_id: [case] for case in everything}
    by_patient: dict[str, list[Case]] = {}
    for case in everything:
        by_patient.setdefault(case.patient, []).append(case)
    chosen: dict[str, list[Case]] = {}
    for key in SPLIT_KEYS:
        if key not in content:
            continue
        ids = content[key]
        if not isinstance(ids, list) or not all(isinstance(item, str | int) for item in ids):
            raise DataError(f"{path}: {key} must be a list of patient or case ids")
        unknown = [str(item) for item in ids if str(item) not in by_case and str(item) not in by_patient]
        if unknown:
            raise DataError(f"{path}: unknown ids under {key}: {unknown[:10]} (dataset {dataset.info.name})")
        cases = [case for item in ids for case in by_case.get(str(item)) or by_patient[str(item)]]
        chosen[key] = list({id(case): case for case in cases}.values())
    if not chosen.get("labeled"):
        raise DataError(f"{path}: the labeled list is missing or empty")
    taken = {id(case) for cases in chosen.values() for case in cases}
    defaults = {"unlabeled": dataset.train + dataset.unlabeled, "val": dataset.val, "test": dataset.test}
    for key, pool in defaults.items():
        chosen.setdefault(key, [case for case in pool if id(case) not in taken])
    _check_disjoint(path, chosen)
    unannotated = [case.case_id for key in ("labeled", "val", "test") for case in chosen[key] if case.label is None]
    if unannotated:
        raise DataError(f"{path}: cases without a label listed as labeled/val/test: {unannotated[:10]}")
    return Split(
        chosen["labeled"],
        unlabeled_view(chosen["unlabeled"]),
        chosen["val"],
        chosen["test"],
        rule=f"split file {path} ({len(patients(chosen['labeled']))} labeled patients)",
    )


def _load_mapping(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as error:
        raise DataError(f"{path}: cannot read split file ({error.strerror or error})") from error
    try:
        content = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise DataError(f"{path}: invalid split file ({error})") from error
    if not isinstance(content, dict):
        raise DataError(f"{path}: a split file maps labeled / unlabeled / val / test to lists of ids")
    return content


def _check_disjoint(path: Path, chosen: dict[str, list[Case]]) -> None:
    """No case in two lists; no patient both in training (labeled/unlabeled) and evaluation (val/test)."""
    for index, first in enumerate(SPLIT_KEYS):
        for second in SPLIT_KEYS[index + 1 :]:
            shared = {id(case) for case in chosen[first]} & {id(case) for case in chosen[second]}
            if shared:
                names = [case.case_id for case in chosen[first] if id(case) in shared]
                raise DataError(f"{path}: cases in both {first} and {second}: {names[:10]}")
    training = set(patients(chosen["labeled"] + chosen["unlabeled"]))
    evaluation = set(patients(chosen["val"] + chosen["test"]))
    leaked = sorted(training & evaluation)
    if leaked:
        raise DataError(f"{path}: patients in both training and val/test (a leak): {leaked[:10]}")


def load_split(data: DataConfig) -> tuple[DatasetInfo, Split]:
    """The configured dataset with its budget (or split file) applied: training, evaluation and `suggest`
    must see the same split, so they all read it here."""
    dataset = create_dataset(data.dataset, data.root, **data.options)
    return dataset.info, make_split(dataset, data.labeled, Path(data.split_file) if data.split_file else None)
