"""What medsemi refuses (docs/reference/refusals.md), one table row per bad input or fault.

Each row builds its bad input in a folder of its own (a copy of one tiny trained run, a small nnU-Net folder,
a file), runs the `medsemi` command on it and asserts the exact outcome: the exit status, one line that names
the file or setting and the problem, and not one file created, changed or deleted (every file is hashed
before and after; rows whose command succeeds list the paths it may create).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medsemi.cli import main
from medsemi.config import load_config
from medsemi.data import create_dataset
from medsemi.engine.checkpoint import load_checkpoint, non_finite
from medsemi.engine.trainer import train
from medsemi.eval.evaluate import evaluate_run

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs/demo/supervised.yaml")
RUN = [
    "data.patch_size=[32,32]",
    "data.batch_labeled=2",
    "data.batch_unlabeled=2",
    "data.options={n_train_patients: 3, n_val: 1, n_test: 2, size: [32, 32], depth: 3}",
    "net.options={widths: [4, 8, 16, 32, 64]}",
    "train.iterations=2",
    "train.checkpoint_every=1",
    "train.val_split=none",
    "train.progress=false",
]
"""The one trained run every row copies: supervised U-Net on the 2D phantom, 2 iterations, no best.pt."""

NNUNET = [
    "data.dataset=nnunet",
    "data.labeled=1",
    "data.patch_size=[16,16]",
    "data.batch_labeled=1",
    "data.batch_unlabeled=1",
    "net.options={widths: [4, 8, 16, 32, 64]}",
    "train.iterations=1",
    "train.val_split=none",
    "train.progress=false",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained run, evaluated once on its whole test split (eval/test_last)."""
    run_dir = train(load_config(CONFIG, [*RUN, f"run.dir={tmp_path_factory.mktemp('trained') / 'run'}"]))
    evaluate_run(run_dir, split="test", checkpoint="last")
    return run_dir


pytestmark = pytest.mark.usefixtures("one_thread")


class Workspace:
    """A row's own folder, with builders for the inputs the rows share."""

    def __init__(self, root: Path, trained: Path) -> None:
        self.root, self._trained = root, trained

    def run(self) -> Path:
        """A private copy of the trained run."""
        copy = self.root / "run"
        if not copy.exists():
            shutil.copytree(self._trained, copy)
        return copy

    def train(self, *overrides: str, flag: str | None = None, run_dir: Path | None = None) -> list[str]:
        """`medsemi train` of the trained run's config, into run_dir (default: a new folder)."""
        target = run_dir or self.root / "new_run"
        return ["train", CONFIG, *RUN, *overrides, f"run.dir={target}", *([flag] if flag else [])]

    def checkpoint(self, edit: Callable[[dict], object]) -> Path:
        """The run copy with last.pt rewritten after `edit(checkpoint)` (its result replaces it, if any)."""
        last = self.run() / "checkpoints" / "last.pt"
        checkpoint = torch.load(last, weights_only=True)
        torch.save(edit(checkpoint) or checkpoint, last)
        return last

    def scan(self, name: str = "scan.nii.gz", folder: str = "scans") -> Path:
        path = self.root / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image = np.random.default_rng(0).random((32, 32, 1)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), path)
        return path

    def dataset(self, classes: tuple[str, ...] = ("background", "disk"), **meta: object) -> Path:
        """A clean 2D nnU-Net folder: cases c0..c2 in imagesTr/labelsTr, random images, a disk label each."""
        root = self.root / "data"
        description = {"labels": {n: k for k, n in enumerate(classes)}, "channel_names": {"0": "MR"}, **meta}
        root.mkdir(exist_ok=True)
        (root / "dataset.json").write_text(json.dumps(description))
        for index in range(3):
            self.nifti(f"imagesTr/c{index}_0000.nii.gz", seed=index)
            self.nifti(f"labelsTr/c{index}.nii.gz", label=True)
        return root

    def nifti(
        self,
        relative: str,
        *,
        seed: int = 0,
        label: bool = False,
        scale: float = 1.0,
        affine: np.ndarray | None = None,
    ) -> Path:
        path = self.root / "data" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[:16, :16]
        disk = ((yy - 8) ** 2 + (xx - 8) ** 2 < 20).astype(np.uint8)[:, :, None]
        array = disk if label else (np.random.default_rng(seed).random((16, 16, 1)) * scale).astype(np.float32)
        if affine is None:
            nib.save(nib.Nifti1Image(array, np.diag([1.0, 1.0, 2.0, 1.0])), path)
        else:  # written through the header, which nibabel would otherwise rebuild from a valid affine
            header = nib.Nifti1Header()
            header.set_data_shape(array.shape)
            header.set_data_dtype(array.dtype)
            for row, key in enumerate(("srow_x", "srow_y", "srow_z")):
                header[key] = affine[row]
            header["sform_code"], header["qform_code"] = 2, 0
            nib.save(nib.Nifti1Image(array, None, header=header), path)
        return path

    def pixdim(self, relative: str, spacing: tuple[float, float, float]) -> Path:
        """Overwrite the stored voxel size (nibabel refuses to write a zero or negative one)."""
        path = self.root / "data" / relative
        raw = bytearray(gzip.decompress(path.read_bytes()))
        raw[80:92] = struct.pack("<3f", *spacing)  # pixdim[1:4] of the NIfTI-1 header
        path.write_bytes(gzip.compress(bytes(raw)))
        return path

    def train_on_data(self) -> list[str]:
        return ["train", CONFIG, *NNUNET, f"data.root={self.root / 'data'}", f"run.dir={self.root / 'new_run'}"]


Built = tuple[list[str], list[str]]
"""A row's command line and the fragments its one line must hold."""
Builder = Callable[[Workspace], Built]

MARKER = "payload_ran"


class Payload:
    """Unpickling this runs a shell command that creates MARKER in the current folder."""

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {MARKER}",)


def _crafted(ws: Workspace) -> Path:
    return ws.checkpoint(lambda checkpoint: {**checkpoint, "note": Payload()})


def _nan_weights(ws: Workspace) -> Path:
    def poison(checkpoint: dict) -> None:
        for value in checkpoint["method"].values():
            if value.is_floating_point():
                value.fill_(float("nan"))

    return ws.checkpoint(poison)


def _truncated(ws: Workspace) -> Path:
    last = ws.run() / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    return last


def _garbage(ws: Workspace) -> Path:
    last = ws.run() / "checkpoints" / "last.pt"
    last.write_bytes(b"not a checkpoint\n" * 50)
    return last


def _incomplete(ws: Workspace) -> Path:
    return ws.checkpoint(lambda checkpoint: {"method": checkpoint["method"]})


def _other_network(ws: Workspace) -> Path:
    config = ws.run() / "config.yaml"
    config.write_text(config.read_text().replace("widths:\n    - 4\n    - 8", "widths:\n    - 8\n    - 8"))
    return ws.run() / "checkpoints" / "last.pt"


@dataclass(frozen=True)
class Row:
    """`build(ws)` makes the bad input and returns the command line and the fragments its one line must hold."""

    name: str
    build: Builder
    status: int = 2
    writes: tuple[str, ...] = ()  # path prefixes (in the row's folder) the command may create or rewrite
    kind: str = "error"  # "warning": the line is a warning and the command goes on; "none": no line expected


def _on_run(verb: str, damage: Callable[[Workspace], Path], *says: str) -> Builder:
    """Run `verb` on the run copy after `damage` (which returns the file the line must name)."""

    def build(ws: Workspace) -> Built:
        path = damage(ws)
        run = ws.run()
        arguments = {
            "evaluate": ["evaluate", str(run), "--checkpoint", "last"],
            "predict": ["predict", str(run), str(ws.scan()), "-o", str(ws.root / "out")],
            "export": ["export", str(run), "-o", str(ws.root / "model.onnx")],
            "suggest": ["suggest", str(run), "--budget", "1", "-o", str(ws.root / "picks.csv")],
            "resume": ws.train(flag="--resume", run_dir=run),
        }[verb]
        return arguments, [str(path), *says]

    return build


def _config(*overrides: str, says: str) -> Builder:
    def build(ws: Workspace) -> Built:
        return ws.train(*overrides), [says]

    return build


def _resume_with(*overrides: str, says: tuple[str, ...]) -> Builder:
    def build(ws: Workspace) -> Built:
        run = ws.run()
        return ws.train(*overrides, flag="--resume", run_dir=run), [str(run / "config.yaml"), *says]

    return build


def _foreign_folder(flag: str | None, *names: str) -> Builder:
    def build(ws: Workspace) -> Built:
        folder = ws.root / "notes"
        folder.mkdir()
        for name in names:
            (folder / name).write_text("someone's work\n")
        return ws.train(flag=flag, run_dir=folder), [str(folder), "is not a medsemi run folder", names[0]]

    return build


def _dataset_as_run_dir(ws: Workspace) -> Built:
    root = ws.dataset()
    return ws.train(flag="--overwrite", run_dir=root), [str(root), "is not a medsemi run folder", "dataset.json"]


def _run_dir_is_a_file(ws: Workspace) -> Built:
    path = ws.root / "results.txt"
    path.write_text("not a folder\n")
    return ws.train(run_dir=path), [str(path), "run.dir names a file"]


def _predict_into_input_folder(ws: Workspace) -> Built:
    scan = ws.scan()
    return ["predict", str(ws.run()), str(scan), "-o", str(scan.parent)], [str(scan), "would overwrite this input"]


def _predict_same_names(ws: Workspace) -> Built:
    first, second = ws.scan(folder="a"), ws.scan(folder="b")
    command = ["predict", str(ws.run()), str(first), str(second), "-o", str(ws.root / "out")]
    return command, [str(first), str(second), "would both be written to", str(ws.root / "out" / "scan.nii.gz")]


def _predict_missing_input(ws: Workspace) -> Built:
    missing = ws.root / "absent.nii.gz"
    return ["predict", str(ws.run()), str(missing), "-o", str(ws.root / "out")], [str(missing), "not found"]


def _predict_into_a_file(ws: Workspace) -> Built:
    target = ws.root / "masks.txt"
    target.write_text("a file, not a folder\n")
    return ["predict", str(ws.run()), str(ws.scan()), "-o", str(target)], [str(target), "-o names a file"]


def _predict_into_labels(ws: Workspace) -> Built:
    labels = ws.dataset() / "labelsTr"
    command = ["predict", str(ws.run()), str(ws.nifti("imagesTs/c0_0000.nii.gz")), "-o", str(labels)]
    return command, [str(labels), "a dataset's label folder", "would replace its annotations"]


def _suggest(option: str, value: str) -> Builder:
    def build(ws: Workspace) -> Built:
        arguments = {"--budget": "1", "--diversity": "1.0", option: value}
        command = ["suggest", str(ws.run()), "-o", str(ws.root / "picks.csv")]
        return [*command, *(item for pair in arguments.items() for item in pair)], [option, value]

    return build


def _evaluate_limit(limit: str) -> Builder:
    def build(ws: Workspace) -> Built:
        return ["evaluate", str(ws.run()), "--limit", limit], ["--limit", "positive number of cases", limit]

    return build


def _evaluate_limited_keeps_the_full_tables(ws: Workspace) -> Built:
    return ["evaluate", str(ws.run()), "--checkpoint", "last", "--limit", "1"], []


def _resume_finished(ws: Workspace) -> Built:
    run = ws.run()
    return ws.train(flag="--resume", run_dir=run), [str(run), "already finished", "nothing to train"]


def _data(problem: str, damage: Callable[[Workspace], Path], **meta: object) -> Builder:
    """Training on an nnU-Net folder that `damage` spoiled (it returns the file the line must name)."""

    def build(ws: Workspace) -> Built:
        ws.dataset(**meta)
        return ws.train_on_data(), [str(damage(ws)), problem]

    return build


def _duplicate_test_image(ws: Workspace) -> Path:
    ws.nifti("labelsTs/held.nii.gz", label=True)
    return ws.nifti("imagesTs/held_0000.nii.gz", seed=1)  # c1's pixels


def _test_of_a_training_patient(ws: Workspace) -> Path:
    ws.nifti("labelsTs/held.nii.gz", label=True)
    return ws.nifti("imagesTs/held_0000.nii.gz", seed=7)


SINGULAR = np.zeros((4, 4))

DATA_ROWS = [
    # bad data, named by file: training on it stops before any work, `data check` lists it
    Row(
        "singular affine",
        _data("affine is singular", lambda ws: ws.nifti("imagesTr/c1_0000.nii.gz", seed=1, affine=SINGULAR)),
    ),
    Row(
        "zero pixdim",
        _data("voxel size (header pixdim)", lambda ws: ws.pixdim("imagesTr/c1_0000.nii.gz", (0.0, 1.0, 2.0))),
    ),
    Row(
        "negative pixdim",
        _data("must be positive", lambda ws: ws.pixdim("imagesTr/c1_0000.nii.gz", (1.0, -1.0, 2.0))),
    ),
    Row(
        "huge finite intensities",
        _data("training would overflow", lambda ws: ws.nifti("imagesTr/c1_0000.nii.gz", scale=1e30)),
    ),
    Row(
        "NaN intensities",
        _data("NaN or infinite", lambda ws: ws.nifti("imagesTr/c1_0000.nii.gz", scale=float("nan"))),
    ),
    Row(
        "case id in imagesTr and imagesUnlabeled",
        _data("case id 'c1' is also a train case", lambda ws: ws.nifti("imagesUnlabeled/c1_0000.nii.gz", seed=9)),
    ),
    Row("test image identical to a training image", _data("identical to train case 'c1'", _duplicate_test_image)),
    Row(
        "test case of a training patient",
        _data("is also a train patient", _test_of_a_training_patient, patients={"c0": "p0", "held": "p0"}),
    ),
    Row(
        "labelsTs file without its image",
        _data("label without an image", lambda ws: ws.nifti("labelsTs/orphan.nii.gz", label=True)),
    ),
    Row(
        "labelsTr file without its image",
        _data("label without an image", lambda ws: ws.nifti("labelsTr/orphan.nii.gz", label=True)),
    ),
    Row("label value outside the classes", _data("outside the declared classes 0..1", lambda ws: _label(ws, 5))),
    Row("missing label file", _data("missing label file", lambda ws: _unlink(ws.root / "data/labelsTr/c2.nii.gz"))),
    Row(
        "patients entry that names no case",
        _data(
            "patients names 1 id(s) that are no case", lambda ws: ws.root / "data/dataset.json", patients={"c*": "p"}
        ),
    ),
    Row(
        "spacing declared for NIfTI",
        _data("spacing is for PNG/TIFF data", lambda ws: ws.root / "data/dataset.json", spacing=[1.0, 1.0]),
    ),
]

ROWS = [
    # ---- no code execution from files: a crafted checkpoint is refused by every verb that reads one
    *(
        Row(f"crafted checkpoint, {verb}", _on_run(verb, _crafted, "refused", "could run code"))
        for verb in ("evaluate", "predict", "export", "suggest", "resume")
    ),
    # ---- damaged or foreign checkpoints
    Row("truncated checkpoint", _on_run("evaluate", _truncated, "cannot read checkpoint")),
    Row("garbage checkpoint", _on_run("evaluate", _garbage, "cannot read checkpoint")),
    Row("truncated checkpoint, resume", _on_run("resume", _truncated, "cannot read checkpoint")),
    Row("incomplete checkpoint", _on_run("evaluate", _incomplete, "incomplete checkpoint", "optimizers")),
    Row("checkpoint of another network", _on_run("evaluate", _other_network, "do not fit this run's network")),
    # ---- a NaN never becomes a checkpoint anyone uses
    *(
        Row(f"non-finite weights, {verb}", _on_run(verb, _nan_weights, "non-finite weights", "diverged"))
        for verb in ("evaluate", "predict", "export", "suggest", "resume")
    ),
    # ---- no command destroys data it did not create
    Row("--overwrite a folder of notes", _foreign_folder("--overwrite", "notes.txt", "scan.nii.gz")),
    Row("--overwrite a dataset folder", _dataset_as_run_dir),
    Row("--resume a folder of notes", _foreign_folder("--resume", "notes.txt")),
    Row("no flag, a folder of notes", _foreign_folder(None, "notes.txt")),
    Row("predict -o the input's folder", _predict_into_input_folder),
    Row("predict two inputs of one name", _predict_same_names),
    Row("predict a missing input", _predict_missing_input),
    Row("predict -o a file", _predict_into_a_file),
    Row("predict -o a dataset's labelsTr/", _predict_into_labels),
    Row("--resume, other optim.lr", _resume_with("optim.lr=1000000.0", says=("optim.lr", "0.03 -> 1000000.0"))),
    Row("--resume, other data.labeled", _resume_with("data.labeled=3", says=("data.labeled 2 -> 3",))),
    Row("--resume, other train.iterations", _resume_with("train.iterations=5", says=("train.iterations 2 -> 5",))),
    Row("--resume, another method", _resume_with("method.name=mean_teacher", says=("method.name",))),
    Row("--resume, a finished run", _resume_finished, status=0, writes=("run/config.yaml",), kind="warning"),
    Row(
        "evaluate --limit beside the full tables",
        _evaluate_limited_keeps_the_full_tables,
        status=0,
        writes=("run/eval/test_last_first1/",),
        kind="none",
    ),
    # ---- every bad setting named before any data is read
    Row("train.iterations=0", _config("train.iterations=0", says="train.iterations must be a positive integer")),
    Row("train.iterations=-5", _config("train.iterations=-5", says="train.iterations must be a positive integer")),
    Row("train.val_every=0", _config("train.val_every=0", says="train.val_every must be a positive integer")),
    Row("train.checkpoint_every=0", _config("train.checkpoint_every=0", says="train.checkpoint_every must be")),
    Row("train.checkpoint_every=-1", _config("train.checkpoint_every=-1", says="train.checkpoint_every must be")),
    Row("train.val_limit=0", _config("train.val_limit=0", says="train.val_limit must be >= 1 or null")),
    Row("train.val_split=train", _config("train.val_split=train", says="train.val_split must be one of")),
    Row("data.patch_size=[0,32]", _config("data.patch_size=[0,32]", says="data.patch_size must be")),
    Row("data.patch_size=[-32,32]", _config("data.patch_size=[-32,32]", says="data.patch_size must be")),
    Row("eval.patch_size=[32,0]", _config("eval.patch_size=[32,0]", says="eval.patch_size must be")),
    Row("eval.batch_size=0", _config("eval.batch_size=0", says="eval.batch_size must be a positive integer")),
    Row("optim.lr=-0.01", _config("optim.lr=-0.01", says="optim.lr must be a positive learning rate")),
    Row("optim.lr=0", _config("optim.lr=0", says="optim.lr must be a positive learning rate")),
    Row(
        "optim.overrides lr < 0",
        _config("optim.overrides={net: {lr: -1}}", says="optim.overrides.net.lr must be a positive learning rate"),
    ),
    Row("optim.name=lbfgs", _config("optim.name=lbfgs", says="optim.name must be one of")),
    Row("optim.schedule=cosine", _config("optim.schedule=cosine", says="optim.schedule must be one of")),
    Row("train.device=cuda:64", _config("train.device=cuda:64", says="train.device='cuda:64' but")),
    *(
        [Row("train.device=cuda, no GPU", _config("train.device=cuda", says="but no CUDA GPU is available"))]
        if not torch.cuda.is_available()
        else []
    ),
    Row("train.device=tpu", _config("train.device=tpu", says="train.device 'tpu' is not a device")),
    Row("data.augment=flip", _config("data.augment=flip", says="data.augment must be one of")),
    Row(
        "data.augment flips an axis it lacks",
        _config("data.augment={flip: [2]}", says="data.augment.flip must be a list of distinct spatial axes in 0..1"),
    ),
    Row("data.augment rotate in 3D", _config("data.patch_size=[16,16,16]", "data.augment={rotate: 10}", says="2D")),
    Row("train.val_sampling=random", _config("train.val_sampling=random", says="train.val_sampling must be one of")),
    Row("net.name=resnet", _config("net.name=resnet", says="net.name must be one of")),
    Row("method.name=magic", _config("method.name=magic", says="method.name must be one of")),
    Row("unknown method option", _config("method.ema=0.9", says="has no option(s) ['ema']")),
    Row("unknown data.options", _config("data.options={n_patients: 3}", says="unknown data.options ['n_patients']")),
    Row("unknown config key", _config("data.labelled=3", says="data.labelled")),
    Row("wrong type", _config("train.iterations=many", says="train.iterations: 'many' is not a valid int")),
    Row(
        "config checked before data is read",
        _config("data.dataset=nnunet", "data.root=/no/such/folder", "train.iterations=0", says="train.iterations"),
    ),
    Row("data.labeled beyond the data", _config("data.labeled=9", says="data.labeled = 9 exceeds the 3")),
    Row("run.dir names a file", _run_dir_is_a_file),
    Row("evaluate --limit 0", _evaluate_limit("0")),
    Row("evaluate --limit -1", _evaluate_limit("-1")),
    Row("suggest --budget 0", _suggest("--budget", "0")),
    Row("suggest --diversity 1.5", _suggest("--diversity", "1.5")),
    Row("suggest --max-cases 0", _suggest("--max-cases", "0")),
    Row("suggest --time-limit 0", _suggest("--time-limit", "0")),
    *DATA_ROWS,
]


def _label(ws: Workspace, value: int) -> Path:
    path = ws.root / "data" / "labelsTr" / "c1.nii.gz"
    nib.save(nib.Nifti1Image(np.full((16, 16, 1), value, np.uint8), np.diag([1.0, 1.0, 2.0, 1.0])), path)
    return path


def _unlink(path: Path) -> Path:
    path.unlink()
    return path


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_refusal(
    row: Row,
    trained: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # where a payload would leave its MARKER
    ws = Workspace(tmp_path, trained)
    arguments, says = row.build(ws)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert main(arguments) == row.status
    err = capsys.readouterr().err
    after = _snapshot(tmp_path)
    assert not (tmp_path / MARKER).exists(), "the checkpoint ran its payload"
    allowed = row.writes or ("\0",)
    assert {k: v for k, v in after.items() if not k.startswith(allowed)} == {
        k: v for k, v in before.items() if not k.startswith(allowed)
    }, "files were created, changed or deleted"
    if row.kind == "none":
        return
    lines = [line for line in err.splitlines() if line.startswith(f"medsemi {arguments[0]}: {row.kind}:")]
    assert len(lines) == 1, err
    for fragment in says:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def test_limited_evaluation_lands_beside_the_full_one(trained: Path, tmp_path: Path) -> None:
    run = shutil.copytree(trained, tmp_path / "run")
    full = (run / "eval" / "test_last" / "cases.csv").read_text()
    summary = evaluate_run(run, split="test", checkpoint="last", limit=1)
    assert summary["folder"] == run / "eval" / "test_last_first1" and summary["num_cases"] == 1
    assert (run / "eval" / "test_last" / "cases.csv").read_text() == full
    assert evaluate_run(run, split="test", checkpoint="last", limit=2)["folder"] == run / "eval" / "test_last"


@pytest.mark.parametrize("row", DATA_ROWS, ids=[row.name for row in DATA_ROWS])
def test_data_check_lists_the_same_problem(
    row: Row, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`medsemi data check` reports each bad-data row's problem too (exit 1), as one PROBLEM line."""
    ws = Workspace(tmp_path, trained)
    _, says = row.build(ws)
    capsys.readouterr()
    assert main(["data", "check", str(tmp_path / "data")]) == 1
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PROBLEM")]
    assert any(all(fragment in line for fragment in says) for line in problems), problems


def test_a_declared_class_that_never_occurs_is_a_warning(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Legitimate in a subset of a dataset, so a warning: `data check` exits 0, loading goes on."""
    root = Workspace(tmp_path, trained).dataset(classes=("background", "disk", "lesion"))
    assert main(["data", "check", str(root)]) == 0
    message = "declared class 2 'lesion' occurs in no label of the 3 labeled cases"
    assert f"WARNING {root}: {message}" in capsys.readouterr().out
    with pytest.warns(UserWarning, match=message):
        assert len(create_dataset("nnunet", root).train) == 3


def test_a_diverging_run_never_leaves_non_finite_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """optim.lr=1e6: training stops with exit 2, and last.pt (if any) holds finite weights and resumes."""
    run = tmp_path / "run"
    arguments = ["train", CONFIG, *RUN, "optim.lr=1e6", "train.iterations=30", f"run.dir={run}"]
    assert main(arguments) == 2
    err = capsys.readouterr().err
    assert "medsemi train: error:" in err and ("non-finite" in err or "became nan" in err), err
    last = run / "checkpoints" / "last.pt"
    if last.exists():
        checkpoint = load_checkpoint(last)
        assert non_finite({"method": checkpoint["method"], "optimizers": checkpoint["optimizers"]}) == []
        assert main(["evaluate", str(run), "--checkpoint", "last", "--limit", "1"]) == 0


def test_export_parity_fails_on_nan(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """max(0.0, nan) is 0.0: a NaN output must fail the check, not pass it."""
    from medsemi import export

    monkeypatch.setattr(export._Probabilities, "forward", lambda self, image: self.net(image) * float("nan"))
    with pytest.raises(export.ExportParityError, match="by nan"):
        export.export_onnx(trained, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_outputs_follow_the_umask(trained: Path, tmp_path: Path) -> None:
    """Files medsemi writes get 0666 less the umask, as any program's would, not mkstemp's 0600."""
    previous = os.umask(0o027)
    try:
        run = tmp_path / "run"
        train(load_config(CONFIG, [*RUN, "train.iterations=1", f"run.dir={run}"]))
        evaluate_run(run, split="test", checkpoint="last", limit=1)
        assert main(["predict", str(run), str(Workspace(tmp_path, trained).scan()), "-o", str(tmp_path / "out")]) == 0
    finally:
        os.umask(previous)
    written = [
        run / "config.yaml",
        run / "log.csv",
        run / "checkpoints" / "last.pt",
        run / "eval" / "test_last_first1" / "cases.csv",
        tmp_path / "out" / "scan.nii.gz",
        tmp_path / "out" / "scan_uncertainty.nii.gz",
    ]
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in written} == {
        path.name: oct(0o640) for path in written
    }
