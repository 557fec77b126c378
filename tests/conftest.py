"""Shared fixtures: real data restored from ../shared/data into a git-ignored cache, and small synthetic sets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CACHE = Path(os.environ.get("MEDSEMI_DATA_CACHE", REPO / ".cache" / "data"))


def _restore(dataset: str, folder: str) -> Path:
    root = CACHE / folder
    unpacker = SHARED_DATA / "unpack.py"
    if not unpacker.exists():
        message = f"real data not available: {unpacker} is missing"
        if os.environ.get("MEDSEMI_REQUIRE_DATA") == "1":
            pytest.fail(message + " (MEDSEMI_REQUIRE_DATA=1)")
        pytest.skip(message)
    subprocess.run([sys.executable, str(unpacker), str(CACHE), dataset], check=True, capture_output=True)
    return root


@pytest.fixture(scope="session")
def acdc_root() -> Path:
    """The SSL4MIS ACDC layout (train_slices.list, data/slices/*.h5, data/*.h5)."""
    return _restore("acdc", "ACDC")


@pytest.fixture(scope="session")
def la_root() -> Path:
    """The UA-MT LA layout (train.list, test.list, 2018LA_Seg_Training Set/<id>/mri_norm2.h5)."""
    return _restore("la", "LA")


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)
