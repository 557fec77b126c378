"""Named benchmark protocols: the settings every method of a leaderboard shares, on top of its own config.

A run of a bench = the method's paper config (configs/<dataset>/<method>.yaml) + the protocol's overrides +
the grid point (labeled budget, seed, run folder). When a protocol shortens the schedule, every method option
measured in iterations is scaled by the same factor (`scaled_options`), so a method with a pre-training stage
or a ramp-up keeps the same *fraction* of the run as in the paper; a per-method table covers what a rule
cannot express.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from medsemi.config import Config

ITERATION_NAMES = ("consistency_start",)
"""Options counted in iterations besides those named *_iterations (SSL4MIS mean teacher's switch-on)."""

EPOCH_LENGTH = "iterations_per_epoch"
"""Where a method has it, its *_epochs options count epochs of this many iterations: the epoch is scaled
(SSL4MIS ramps step per epoch, so a shorter epoch keeps the ramp's 200 steps instead of coarsening it)."""


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
        "semiformer), cross_teaching and caml channels-last, caml's correlation queries at the same share of "
        "a batch's unlabeled pixels as in its ACDC config (1067 of 4x128x128 per class, 12800 of 12x256x256), "
        "so that one run takes about 10 minutes"
    ),
    datasets=("acdc",),
    overrides=(
        "data.patch_size=[128, 128]",
        "data.batch_labeled=4",
        "data.batch_unlabeled=4",
        "train.val_every=100",
        "train.val_limit=10",
        "train.checkpoint_every=100",
    ),
    iterations=1000,
    method_overrides={
        "cross_teaching": ("method.transformer_options={feature_size: 12}", "train.channels_last=true"),
        "semivit": ("net.options={feature_size: 12}",),
        "semiformer": ("net.options={embed_dim: 192, num_heads: 3}",),
        "caml": ("train.channels_last=true", "method.queries_per_class=1067"),
    },
)
"""Sized by timing every method alone on 2 cores (`medsemi bench --cost`, then full runs; docs/benchmarks.md): the
networks that would take 12-17 minutes shrink to their smallest standard width; channels-last (same maths,
faster convolutions on CPU) only where it is needed to stay near 10 minutes, so finished runs stay valid.
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

PROTOCOLS: dict[str, Protocol] = {protocol.name: protocol for protocol in (QUICK, PAPER)}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise KeyError(f"unknown protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name]


def is_iteration_option(name: str, options: Collection[str]) -> bool:
    """Whether an option measures a length of the schedule (see ITERATION_NAMES and EPOCH_LENGTH)."""
    if name.endswith("_epochs"):
        return EPOCH_LENGTH not in options
    return name == EPOCH_LENGTH or name.endswith("_iterations") or name in ITERATION_NAMES


def method_option_values(config: Config) -> dict[str, Any]:
    """The method's Options as the config resolves them: dataclass defaults, then the `method:` section."""
    from medsemi.methods.base import method_class

    options = method_class(config.method_name).Options
    defaults = {f.name: f.default for f in dataclasses.fields(options) if f.default is not dataclasses.MISSING}
    return {**defaults, **config.method_options}


def scaled_options(config: Config, iterations: int) -> list[str]:
    """`method.<name>=<value>` overrides that shrink (or stretch) iteration-measured options by
    iterations / config.train.iterations; integers are rounded (an enabled stage keeps >= 1 iteration)."""
    factor = iterations / config.train.iterations
    if factor == 1:
        return []
    values = method_option_values(config)
    overrides = []
    for name, value in sorted(values.items()):
        if not is_iteration_option(name, values) or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if isinstance(value, int):
            scaled: int | float = max(round(value * factor), 1) if value > 0 else value
        else:
            scaled = value * factor
        if scaled != value:
            overrides.append(f"method.{name}={scaled!r}")
    return overrides
