"""What medsemi writes into a run folder, so that a command can tell its own run from anyone else's files.

A run folder holds nothing but
- files: config.yaml, log.jsonl, log.csv, learning_curves.png, bench.json, bench.log (the bench's), and hidden
  `.<name>.<random>.tmp` leftovers of a write that was killed;
- checkpoints/: `*.pt` files and such leftovers;
- eval/: one folder per evaluation, `<split>_<checkpoint>` or `<split>_<checkpoint>_first<N>`;
- tensorboard/: TensorBoard's `events.out.tfevents.*` files.
Anything else (another name, a symbolic link, a folder where a file belongs) is foreign: `train --overwrite`
deletes a folder only when nothing in it is foreign, and `train --resume` continues only such a folder.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

LEFTOVER = r"\..+\.tmp"
FILES = ("config.yaml", "log.jsonl", "log.csv", "learning_curves.png", "bench.json", "bench.log")
FOLDERS = {
    "checkpoints": rf"[^.].*\.pt|{LEFTOVER}",
    "eval": r"(val|test)_(best|last)(_first\d+)?(_bn\d+)?",
    "tensorboard": r"events\.out\.tfevents\..+",
}


def evaluation_dir(
    run_dir: Path, split: str, checkpoint: str, limit: int | None = None, recalibrate_bn: int = 0
) -> Path:
    """Where `evaluate` writes: eval/<split>_<checkpoint>, plus _first<N> for an evaluation of only the first N
    cases and _bn<B> after BatchNorm recalibration on B batches, so that none replaces the tables of another."""
    suffix = ("" if limit is None else f"_first{limit}") + (f"_bn{recalibrate_bn}" if recalibrate_bn else "")
    return Path(run_dir) / "eval" / f"{split}_{checkpoint}{suffix}"


def foreign_entries(run_dir: Path) -> list[Path]:
    """Everything in `run_dir` that medsemi does not write into a run folder (nothing, for a run or an empty
    folder)."""
    foreign = []
    for entry in sorted(Path(run_dir).iterdir()):
        if entry.is_symlink():
            foreign.append(entry)
        elif entry.name in FOLDERS and entry.is_dir():
            foreign += [child for child in sorted(entry.iterdir()) if not re.fullmatch(FOLDERS[entry.name], child.name)]
        elif not (entry.is_file() and (entry.name in FILES or re.fullmatch(LEFTOVER, entry.name))):
            foreign.append(entry)
    return foreign


class RunExistsError(FileExistsError):
    pass


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to write into another run's folder unless asked to resume it or to replace it, and refuse both
    for a folder that holds anything medsemi does not write (medsemi.engine.run_folder): never delete or
    continue someone else's files."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunExistsError(f"{run_dir}: run.dir names a file, not a folder")
    if run_dir.exists() and any(run_dir.iterdir()):
        foreign = foreign_entries(run_dir)
        if foreign:
            names = ", ".join(str(path.relative_to(run_dir)) for path in foreign[:5])
            raise RunExistsError(
                f"{run_dir} is not a medsemi run folder (it holds {names}{', ...' if len(foreign) > 5 else ''}); "
                "medsemi neither resumes nor replaces it: choose another run.dir"
            )
        if resume:
            for stale in run_dir.glob("**/.*.tmp"):  # a write killed before its rename
                stale.unlink()
            return
        if not overwrite:
            raise RunExistsError(
                f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to replace it"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
