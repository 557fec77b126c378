"""Data: readers turn folders into `Case`s, splits apply label budgets, augment/stream feed the trainer."""

from medsemi.data.cases import Case, DataError, Dataset, DatasetInfo
from medsemi.data.registry import create_dataset, list_datasets, register_dataset
from medsemi.data.splits import Split, make_split, require_unlabeled

__all__ = [
    "Case",
    "DataError",
    "Dataset",
    "DatasetInfo",
    "Split",
    "create_dataset",
    "list_datasets",
    "make_split",
    "register_dataset",
    "require_unlabeled",
]
