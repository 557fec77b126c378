"""Shared fixtures: real data restored from ../shared/data into a git-ignored cache, and small synthetic sets."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest
import torch

if TYPE_CHECKING:
    from medsemi.methods import Batch

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


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread for the test: tiny networks gain nothing from threads, and thresholds measured on
    one thread must not depend on the core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_batch() -> Callable[..., Batch]:
    """`make_batch(shape, num_classes=3, n=2)`: n random labeled images, their labels and n unlabeled images."""
    from medsemi.methods import Batch

    def build(shape: tuple[int, ...], num_classes: int = 3, n: int = 2) -> Batch:
        return Batch(
            image_l=torch.randn(n, 1, *shape),
            label_l=torch.randint(0, num_classes, (n, *shape)),
            image_u=torch.randn(n, 1, *shape),
        )

    return build


class ShortRun(NamedTuple):
    dir: Path
    rows: list[dict[str, str]]  # log.csv, one row per iteration
    summary: dict[str, Any]  # evaluate_run on the test split


@pytest.fixture
def short_run(tmp_path: Path) -> Callable[..., ShortRun]:
    """`short_run(config, root, *overrides, ...)`: a few iterations of configs/<config> on the data in `root`,
    written to tmp_path/run, then its test evaluation, with the checks every such run shares: `rows` log rows
    (default `iterations`), each with a finite loss, `cases` evaluated cases (default 1) and a mean Dice in [0, 1].

    Shared overrides, before the test's own: data.root, `limit` entries of each data list (ACDC, 80: 3 labeled
    patients + 12 unlabeled, 1 val, 1 test volume; None: no limit), a `patch`, `batch` labeled + `batch`
    unlabeled, `iterations`, validation at the end on `val_limit` cases (`validate=False`: none), no progress bar.
    """
    from medsemi.config import load_config
    from medsemi.engine.trainer import train
    from medsemi.eval.evaluate import evaluate_run

    def run(
        config: str,
        root: Path,
        *overrides: str,
        limit: int | None = 80,
        patch: tuple[int, ...] = (32, 32),
        batch: int = 2,
        iterations: int = 3,
        validate: bool = True,
        val_limit: int | None = None,
        rows: int | None = None,
        cases: int = 1,
        checkpoint: str = "best",
    ) -> ShortRun:
        shared = [
            f"data.root={root}",
            *([f"data.options={{limit: {limit}}}"] if limit is not None else []),
            f"data.patch_size=[{','.join(map(str, patch))}]",
            f"data.batch_labeled={batch}",
            f"data.batch_unlabeled={batch}",
            f"train.iterations={iterations}",
            *([f"train.val_every={iterations}"] if validate else ["train.val_split=none"]),
            *([f"train.val_limit={val_limit}"] if val_limit is not None else []),
            "train.progress=false",
            f"run.dir={tmp_path / 'run'}",
        ]
        run_dir = train(load_config(REPO / "configs" / config, [*shared, *overrides]))
        with open(run_dir / "log.csv") as handle:
            log = list(csv.DictReader(handle))
        assert len(log) == (iterations if rows is None else rows)
        for row in log:
            assert math.isfinite(float(row["loss"]))
        summary = evaluate_run(run_dir, split="test", checkpoint=checkpoint, limit=cases)
        assert summary["num_cases"] == cases
        assert 0.0 <= summary["mean"]["dice"] <= 1.0
        return ShortRun(run_dir, log, summary)

    return run


@pytest.fixture
def kill_at_first_checkpoint() -> Callable[[list[str], Path, float], None]:
    """`kill_at_first_checkpoint(command, checkpoint, timeout)`: starts `command` in the repository, SIGKILLs it
    once `checkpoint` exists (or after `timeout` seconds, or when it has ended) and waits for it."""

    def kill(command: list[str], checkpoint: Path, timeout: float) -> None:
        # The same thread count as this process, so that its weights can be compared with in-process runs.
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + timeout
        while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    return kill
