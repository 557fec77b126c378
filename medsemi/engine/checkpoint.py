"""Atomic, resumable checkpoints: a file is either the old complete version or the new complete version.

Checkpoints hold tensors and plain values only (dicts, lists, tuples, numbers, strings), so they load with
`torch.load(weights_only=True)`: a file that would need any other object, such as a crafted pickle that runs
a command, is refused instead of executed.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medsemi.data.cases import DataFileError

RUN_KEYS = ("method", "optimizers", "state", "rng", "info")
"""What every checkpoint the trainer writes holds."""

# Checkpoints written before the numpy RNG state was stored as a tensor hold that state as a numpy array:
# reading one needs numpy's array constructor and its uint32 dtype, which build numbers and call no other code.
LEGACY_GLOBALS = [np.empty(0).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]


class CheckpointError(DataFileError):
    """A checkpoint medsemi cannot or will not load: unreadable, incomplete, foreign or non-finite."""


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path, suffix: str | None = None) -> Iterator[Path]:
    """A temporary path beside `path`, renamed over it once the block completes and removed if it fails.

    The temporary keeps the target's ending unless `suffix` is given (writers pick the format from it). The
    finished file gets the mode `open()` would give it (0666 less the umask), not mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ending = "".join(Path(path.name).suffixes) if suffix is None else suffix
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=ending)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a hidden `.tmp` file in the same folder, fsync, then rename over the target."""
    with atomic_path(path, suffix=".tmp") as temporary, open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def non_finite(values: Any, prefix: str = "") -> list[str]:
    """Names (dotted paths) of the floating-point tensors in a nested state that hold NaN or infinity."""
    if isinstance(values, Tensor):
        return [prefix] if values.is_floating_point() and not bool(torch.isfinite(values).all()) else []
    if isinstance(values, Mapping):
        items: Iterable[tuple[Any, Any]] = values.items()
    elif isinstance(values, list | tuple):
        items = enumerate(values)
    else:
        return []
    return [name for key, value in items for name in non_finite(value, f"{prefix}{'.' if prefix else ''}{key}")]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(
    path: Path, map_location: torch.device | str = "cpu", require: tuple[str, ...] = RUN_KEYS
) -> dict[str, Any]:
    """The checkpoint's dict, loaded without running code; refused, naming the file, when it cannot be
    read, holds anything but tensors and plain values, or lacks one of `require`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint not found")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut-off one has lost its directory
        raise CheckpointError(path, "cannot read checkpoint: truncated, or not a file torch.save wrote")
    try:
        with torch.serialization.safe_globals(LEGACY_GLOBALS):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            path,
            "refused: it holds objects other than tensors and plain values, and loading them could run code "
            f"(not a checkpoint medsemi wrote: {_unpickler_reason(error)})",
        ) from error
    except Exception as error:  # torch.load reports a damaged file with many exception types
        raise CheckpointError(path, f"cannot read checkpoint, truncated or not a checkpoint ({error})") from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(path, f"holds a {type(checkpoint).__name__}, not a checkpoint's dict")
    missing = [key for key in require if key not in checkpoint]
    if missing:
        raise CheckpointError(path, f"incomplete checkpoint: no {missing} (a medsemi checkpoint holds {RUN_KEYS})")
    return checkpoint


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """The sentence of torch's page-long message that says what its restricted unpickler objected to."""
    paragraphs = [" ".join(part.split()) for part in str(error).split("\n\n") if part.strip()]
    details = [part for part in paragraphs[1:] if not part.startswith(("Check the documentation", "Please file"))]
    return (details[0] if details else paragraphs[0]).split(". ", 1)[0].rstrip(".")


def load_weights(module: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """`module.load_state_dict(state)`, refused with the file named when the weights are not finite (a run
    that diverged) or are not this module's (another method or network)."""
    bad = non_finite(state)
    if bad:
        raise CheckpointError(path, f"holds non-finite weights ({', '.join(bad[:3])}): the run diverged")
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        raise CheckpointError(path, f"its weights do not fit this run's network ({detail[:300]})") from error
