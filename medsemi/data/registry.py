"""Dataset registry: every source of cases is created by name, `create_dataset(name, root, **options)`."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path

from medsemi.data.cases import DataError, Dataset
from medsemi.registry import Registry

DATASETS: Registry[Dataset] = Registry("dataset")

# The modules whose import registers a dataset; imported on first use so that `medsemi.data` stays light.
READER_MODULES = ("acdc", "la", "nnunet", "synthetic")


def register_dataset(name: str) -> Callable:
    """Register `factory(root: Path | None, **options) -> Dataset`; options come from data.options."""
    return DATASETS.register(name)


def _import_readers() -> None:
    for module in READER_MODULES:
        importlib.import_module(f"medsemi.data.{module}")


def dataset_factory(name: str, options: Mapping[str, object]) -> Callable[..., Dataset]:
    """The named reader, once it is known to take every one of `options` (config validation calls this
    before any data is read)."""
    _import_readers()
    factory = DATASETS.get(name)
    parameters = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(parameters) - {"root"})
    if unknown:
        known = sorted(key for key in parameters if key != "root")
        raise DataError(f"unknown data.options {unknown} for dataset {name!r}; known: {known}")
    return factory


def create_dataset(name: str, root: Path | str | None = None, **options: object) -> Dataset:
    return dataset_factory(name, options)(root=Path(root) if root is not None else None, **options)


def list_datasets() -> list[str]:
    _import_readers()
    return DATASETS.names()
