"""Named benchmark protocols: the settings every method of a leaderboard shares, on top of its own config.

A run of a bench = the method's paper config (configs/<dataset>/<method>.yaml) + the protocol's overrides +
the grid point (labeled budget, seed, run folder). When a protocol shortens the schedule, every method option
whose field carries a schedule unit (medsemi.methods.options) is scaled by the same factor (`scaled_options`),
so a method with a pre-training stage or a ramp-up keeps the same *fraction* of the run as in the paper; a
per-method table covers what a rule cannot express.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medsemi.config import Config


@dataclass(frozen=True)
class Protocol:
    """What every run of a bench shares.

    datasets: the config folders (configs/<dataset>/) the protocol is defined for.
    overrides: dotted `key=value` overrides applied to every method's config.
    iterations: the schedule length; None keeps each config's own `train.iterations`.
    method_overrides: extra overrides for one method, applied after the generic scaling.
    """

    name: str
    description: str
    datasets: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    iterations: int | None = None
    method_overrides: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


QUICK = Protocol(
    name="quick",
    description=(
        "ACDC sized for 2 CPU cores: slices resized to 128x128, batch 4 labeled + 4 unlabeled, 1000 "
        "iterations (method schedules scaled by 1000 / 30000), validation every 100 iterations on the first "
        "10 val volumes, test on all 40 test volumes at 128x128; the transformers at their smallest width "
        "(SwinUNETR feature size 12 instead of 48 in cross_teaching and semivit, DeiT-Ti instead of DeiT-S in "
        "semiformer), bfloat16 autocast and channels-last for every method but semiformer (float32: under "
        "bfloat16 its CNN-led pseudo-labels collapse to background), caml's correlation queries at the "
        "same share of a batch's unlabeled pixels as in its ACDC config (1067 of 4x128x128 per class, 12800 of "
        "12x256x256), so that one run takes about 10 minutes"
    ),
    datasets=("acdc",),
    overrides=(
        "data.patch_size=[128, 128]",
        "data.batch_labeled=4",
        "data.batch_unlabeled=4",
        "train.val_every=100",
        "train.val_limit=10",
        "train.checkpoint_every=100",
        "train.amp=true",
        "train.channels_last=true",
    ),
    iterations=1000,
    method_overrides={
        "cross_teaching": ("method.transformer_options={feature_size: 12}",),
        "semivit": ("net.options={feature_size: 12}",),
        "semiformer": ("net.options={embed_dim: 192, num_heads: 3}", "train.amp=false", "train.channels_last=false"),
        "caml": ("method.queries_per_class=1067",),
    },
)
"""Sized by timing every method alone on 2 cores (`medsemi bench --cost`, then full runs; docs/benchmarks.md): the
networks that would take 12-17 minutes shrink to their smallest standard width; bfloat16 autocast and
channels-last (faster convolutions on this CPU, issue 16) apply to every method alike except Semiformer, which
collapses under bfloat16 (seed 1, 3 patients: 16.2 Dice bfloat16, 52.3 float32; docs/methods/semiformer.md).
CAML's `queries_per_class` counts pixels of the unlabeled batch, which `quick` makes 12x smaller."""

PAPER = Protocol(
    name="paper",
    description=(
        "the configs as they are (ACDC: 256x256, batch 12+12, 30k iterations, validation every 200 on the "
        "20 val volumes; LA: 112x112x80, 15k iterations, sliding window 18/18/4): the papers' protocol, for "
        "a GPU"
    ),
    datasets=("acdc", "la"),
)

QUICK_LA = Protocol(
    name="quick_la",
    description=(
        "LA sized for 2 CPU cores: random 80x80x48 crops instead of 112x112x80, batch 2 labeled + 2 unlabeled, "
        "1000 iterations (method schedules and BCP's LR steps scaled by 1000 / 15000), bfloat16 autocast, "
        "validation every 200 iterations on the first 4 of the 8 val scans, test on all 20 test scans by the "
        "configs' sliding window at the crop size with stride 40x40x24 (half the crop); CAML's correlation "
        "queries at the same share of a batch's unlabeled voxels as in its LA config (3918 of 2x80x80x48 per "
        "class, 12800 of 2x112x112x80)"
    ),
    datasets=("la",),
    overrides=(
        "data.patch_size=[80, 80, 48]",
        "data.batch_labeled=2",
        "data.batch_unlabeled=2",
        "train.val_every=200",
        "train.val_limit=4",
        "train.checkpoint_every=200",
        "train.amp=true",
        "eval.stride=[40, 40, 24]",
    ),
    iterations=1000,
    method_overrides={"caml": ("method.queries_per_class=3918",)},
)
"""Sized with `medsemi bench --cost` on 2 busy cores (docs/benchmarks.md): a V-Net step costs about its crop's
voxels (`supervised`, 1 thread: 0.91 s at 80x80x48, 2.07 s at 96x96x64; 80x80x48 is 38 % of the paper's crop and
still 5x5x3 at the bottleneck), and bfloat16 autocast halves a V-Net step again; channels-last is left out, the
code applies it to 2D networks only. The paper's stride (18x18x4) at this crop would be 440 windows per LA scan,
8x the paper's 54 at 112x112x80; half the crop overlaps every voxel about twice per axis in 36 windows (one scan
22 s). The test is the scans' full extent as in the paper, only the window grid differs."""

PROTOCOLS: dict[str, Protocol] = {protocol.name: protocol for protocol in (QUICK, QUICK_LA, PAPER)}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise KeyError(f"unknown protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name]


def schedule_lengths(options: type) -> set[str]:
    """The options of an Options dataclass that measure a length of the schedule (their field's unit says so).

    Iterations and an epoch's length in iterations scale with the run; epochs scale only where no epoch length
    does it for them (SSL4MIS ramps step once per epoch, so a shorter epoch keeps the ramp's 200 steps instead
    of coarsening it).
    """
    from medsemi.methods.options import option_unit

    units = {option.name: option_unit(option) for option in dataclasses.fields(options)}
    has_epoch_length = "iterations/epoch" in units.values()
    return {
        name
        for name, unit in units.items()
        if unit in ("iterations", "iterations/epoch") or (unit == "epochs" and not has_epoch_length)
    }


def method_option_values(config: Config) -> dict[str, Any]:
    """The method's Options as the config resolves them: dataclass defaults, then the `method:` section."""
    from medsemi.methods.base import method_class

    options = method_class(config.method_name).Options
    defaults = {f.name: f.default for f in dataclasses.fields(options) if f.default is not dataclasses.MISSING}
    return {**defaults, **config.method_options}


def _scaled(value: int | float, factor: float) -> int | float:
    """Integers are rounded, and an enabled length keeps at least 1 iteration."""
    if isinstance(value, int):
        return max(round(value * factor), 1) if value > 0 else value
    return value * factor


def scaled_options(config: Config, iterations: int) -> list[str]:
    """Overrides that shrink (or stretch) by iterations / config.train.iterations every schedule-length
    method option (`method.<name>=<value>`) and the LR step of a step schedule (`optim.step_every`)."""
    factor = iterations / config.train.iterations
    if factor == 1:
        return []
    from medsemi.methods.base import method_class

    lengths = schedule_lengths(method_class(config.method_name).Options)
    overrides = []
    for name, value in sorted(method_option_values(config).items()):
        if name not in lengths:
            continue
        scaled = _scaled(value, factor)
        if scaled != value:
            overrides.append(f"method.{name}={scaled!r}")
    if config.optim.schedule == "step":
        overrides.append(f"optim.step_every={_scaled(config.optim.step_every, factor)!r}")
    return overrides
