"""Where a prediction should not be trusted: entropy of the mean softmax over test-time flips and members.

For every network of `Method.ensemble_members()` (student and EMA teacher, the branches of a multi-branch
method, or the predictor alone) and every combination of flips over the axes the training recipe mirrored
(`flip_axes`; nnU-Net-style mirroring, `tta_flips`), the case is predicted as the protocol prescribes
(`predict_probabilities`) and the softmax outputs are averaged. The map is the entropy of that mean divided by
log K, in [0, 1]: 0 where every member and flip is certain of the same class, 1 where the mean is uniform.
Disagreement between members or flips raises it even when each of them alone is confident (the entropy of a
mean is at least the mean of the entropies).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from medsemi.config import Config
from medsemi.data.augment import recipe
from medsemi.data.cases import DatasetInfo
from medsemi.data.io import NIFTI_ENDINGS, has_ending
from medsemi.eval.evaluate import predict_probabilities
from medsemi.eval.inference import tta_flips
from medsemi.losses import entropy_map


def flip_axes(info: DatasetInfo, image: np.ndarray, config: Config) -> tuple[int, ...]:
    """Spatial axes of a (C, *spatial) image to mirror: those the training recipe mirrored (a flipped image
    the network never saw tells nothing about the upright one: an OCT scan upside down), in the network's
    axes (never across the slices of a volume a 2D network reads slice by slice)."""
    offset = image.ndim - 1 - info.spatial_dims
    return tuple(offset + axis for axis in recipe(config.data.augment, info.spatial_dims).mirrored_axes())


@torch.no_grad()
def mean_probabilities(
    members: Sequence[nn.Module],
    image: np.ndarray,
    info: DatasetInfo,
    config: Config,
    device: torch.device,
    *,
    flips: bool = True,
) -> Tensor:
    """(K, *spatial) mean softmax over `members` x flips of one (C, *spatial) image, on `device`."""
    tensor = torch.from_numpy(np.ascontiguousarray(image))
    axes = flip_axes(info, image, config) if flips else ()
    total: Tensor | None = None
    count = 0
    for net in members:

        def predict(x: Tensor, net: nn.Module = net) -> Tensor:
            return predict_probabilities(net, x.numpy(), info, config, device)

        for probs in tta_flips(predict, tensor, axes):
            total = probs if total is None else total + probs
            count += 1
    if total is None:
        raise ValueError("no ensemble members to predict with")
    return total / count


def normalised_entropy(probs: Tensor) -> Tensor:
    """(K, *spatial) probabilities -> (*spatial) entropy / log K in [0, 1]."""
    return (entropy_map(probs.unsqueeze(0))[0] / math.log(probs.shape[0])).clamp(0.0, 1.0)


def uncertainty_map(
    members: Sequence[nn.Module],
    image: np.ndarray,
    info: DatasetInfo,
    config: Config,
    device: torch.device,
    *,
    flips: bool = True,
) -> np.ndarray:
    """(*spatial) float32 normalised entropy of the mean softmax over members and flips (see module doc)."""
    probs = mean_probabilities(members, image, info, config, device, flips=flips)
    return normalised_entropy(probs).float().cpu().numpy()


def write_uncertainty(values: np.ndarray, path: Path, like: Path) -> Path:
    """Write a map in the grid of the mask `like`: NIfTI float32 with its affine and header (qform/sform
    codes, units), or an 8-bit PNG (0..255 for 0..1) when the mask is a raster image."""
    path = Path(path)
    if not has_ending(path, NIFTI_ENDINGS):
        Image.fromarray(np.round(np.clip(values, 0, 1) * 255).astype(np.uint8)).save(path, format="PNG")
        return path
    reference = nib.load(like)
    header = reference.header.copy()
    header.set_data_dtype(np.float32)
    data = np.asarray(values, dtype=np.float32).reshape(reference.shape)
    image = nib.Nifti1Image(data, reference.affine, header=header)
    image.header.set_slope_inter(1.0, 0.0)
    nib.save(image, path)
    return path
