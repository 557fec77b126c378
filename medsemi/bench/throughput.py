"""Training throughput of the fast data path against the reference-style one, side by side in one process.

fast: medsemi's BatchStream: the dataset resized once and held as tensors on the training device, the SSL4MIS
ACDC augmentation applied to whole batches there (medsemi.data.augment), optionally AMP and channels-last.
reference: what SSL4MIS does: a torch DataLoader whose workers run the per-sample scipy RandomGenerator
(`reference_acdc_sample`: rot90/flip or rotate, then zoom to the patch) on the native slices, a
TwoStream-style batch sampler (labeled first), pinned host batches copied to the device every iteration.

Both paths feed the same method code, freshly built with the same seed for every measurement, on the same
cases (ACDC when its folder exists, else the synthetic phantom). Each measurement runs `warmup` iterations
(DataLoader workers start there), then times `iterations` optimisation steps; the speed of a path is
iterations per second and every claim is its ratio to the reference path measured in the same process.
Peak memory (medsemi.bench.memory): torch.cuda.max_memory_allocated of the timed steps on a GPU; on the CPU the
process's peak resident set size, which includes the earlier measurements of the same process (and not the
DataLoader workers, other processes), so CPU figures are indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from medsemi.bench.memory import peak_memory, reset_peak_memory
from medsemi.config import Config, load_config
from medsemi.data.augment import reference_acdc_sample
from medsemi.data.cases import Case
from medsemi.data.registry import create_dataset
from medsemi.data.splits import Split, make_split
from medsemi.data.stream import BatchStream
from medsemi.engine.checkpoint import atomic_write_text
from medsemi.engine.device import resolve_device, torch_threads
from medsemi.engine.optim import build_optimizer
from medsemi.engine.step import OptimisationStep
from medsemi.engine.trainer import seed_everything
from medsemi.methods import Batch, Method, MethodContext, create_method
from medsemi.methods.base import NetSpec
from medsemi.tables import markdown_table

REFERENCE, FAST = "reference", "fast"
DEFAULT_METHODS = ("supervised", "mean_teacher", "bcp")


@dataclass(frozen=True)
class ThroughputSpec:
    """What to measure. batch: labeled + unlabeled images per step, split in halves as the ACDC protocol
    (24 = 12 + 12); methods that ignore unlabeled data get the labeled half only, as in training.
    workers: reference DataLoader workers (SSL4MIS: 16). amp / channels_last: add a fast variant with them.
    repeats: measure every variant this many times, interleaved, and report the median (shared machines).
    threads: torch intra-op threads for the measurement (None: torch's default); on a CPU shared with other
    jobs, more threads than free cores make every step wait on the slowest thread."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    dataset: str | None = None
    root: Path = Path(".cache/data/ACDC")
    data_options: dict[str, Any] = field(default_factory=dict)
    labeled: int = 3
    config_dir: Path = Path("configs/acdc")
    net_options: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    batch: int = 24
    patch: tuple[int, int] = (256, 256)
    iterations: int = 20
    warmup: int = 5
    workers: int = 16
    amp: bool = False
    channels_last: bool = False
    repeats: int = 1
    threads: int | None = None
    seed: int = 1337

    @property
    def fast_variant(self) -> str | None:
        flags = [name for name, on in (("amp", self.amp), ("channels_last", self.channels_last)) if on]
        return "+".join([FAST, *flags]) if flags else None

    def variants(self) -> list[str]:
        return [REFERENCE, FAST, *([self.fast_variant] if self.fast_variant else [])]

    def resolved_dataset(self) -> str:
        return self.dataset or ("acdc" if Path(self.root).is_dir() else "synthetic2d")


class ReferenceSlices(Dataset):
    """Native (H, W) slices augmented one at a time with scipy, as SSL4MIS's BaseDataSets + RandomGenerator.

    Each worker process draws from its own generator (seeded by seed and worker id)."""

    def __init__(self, slices: list[tuple[np.ndarray, np.ndarray]], patch: tuple[int, int], seed: int) -> None:
        self.slices, self.patch, self.seed = slices, patch, seed
        self._rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._rng is None:
            worker = get_worker_info()
            self._rng = np.random.default_rng([self.seed, 0 if worker is None else worker.id + 1])
        image, label = reference_acdc_sample(*self.slices[index], self.patch, self._rng)
        return torch.from_numpy(image), torch.from_numpy(label)


class TwoStreamBatches(Sampler[list[int]]):
    """Endless batches: `labeled` indices from [0, n_labeled), then `unlabeled` from the rest."""

    def __init__(self, n_labeled: int, n_unlabeled: int, labeled: int, unlabeled: int, seed: int) -> None:
        self.sizes = (n_labeled, n_unlabeled)
        self.counts = (labeled, unlabeled)
        self.seed = seed

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(self.seed)
        (n_l, n_u), (b_l, b_u) = self.sizes, self.counts
        while True:
            first = rng.choice(n_l, b_l, replace=n_l < b_l)
            second = n_l + rng.choice(n_u, b_u, replace=n_u < b_u) if b_u else np.empty(0, dtype=np.int64)
            yield [int(i) for i in np.concatenate([first, second])]


def native_slices(cases: list[Case], with_labels: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """(H, W) image and label of every 2D slice (volumes are cut along depth; unlabeled slices get an
    all-background label, which the reference pipeline transforms like any label)."""
    slices = []
    for case in cases:
        image = case.image[0]
        label = case.label if with_labels and case.label is not None else np.zeros(image.shape, np.uint8)
        if image.ndim == 2:
            slices.append((image, label))
        else:
            slices.extend((image[d], label[d]) for d in range(image.shape[0]))
    return slices


def _reference_batches(
    split: Split, spec: ThroughputSpec, labeled: int, unlabeled: int, device: torch.device
) -> Iterator[Batch]:
    first = native_slices(split.labeled, True)
    second = native_slices(split.unlabeled, False) if unlabeled else []
    loader = DataLoader(
        ReferenceSlices(first + second, spec.patch, spec.seed),
        batch_sampler=TwoStreamBatches(len(first), len(second), labeled, unlabeled, spec.seed),
        num_workers=spec.workers,
        pin_memory=device.type == "cuda",
    )
    for images, labels in loader:
        images = images.unsqueeze(1).to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True).long()
        yield Batch(image_l=images[:labeled], label_l=labels[:labeled], image_u=images[labeled:])


def _fast_batches(
    split: Split, spec: ThroughputSpec, method: Method, labeled: int, unlabeled: int, device: torch.device
) -> Iterator[Batch]:
    stream = BatchStream(
        split.labeled,
        split.unlabeled if unlabeled else [],
        spatial_dims=2,
        patch_size=spec.patch,
        batch_labeled=labeled,
        batch_unlabeled=unlabeled,
        augment="acdc",
        strong_view=method.needs_strong_view,
        seed=spec.seed,
        device=device,
    )
    step = 0
    while True:
        yield stream.batch(step)
        step += 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], None], warmup: int, iterations: int, device: torch.device) -> float:
    """Seconds for `iterations` calls of `step` after `warmup` untimed ones (the CUDA peak memory is reset
    after the warm-up, so it is the timed steps')."""
    for _ in range(warmup):
        step()
    _sync(device)
    reset_peak_memory(device)
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    _sync(device)
    return time.perf_counter() - start


def method_config(spec: ThroughputSpec, name: str) -> Config:
    """The method's paper config when there is one (options, network, optimizer), else its defaults."""
    path = Path(spec.config_dir) / f"{name}.yaml"
    return load_config(path) if path.exists() else load_config(None, [f"method.name={name}"])


def measure(
    name: str, variant: str, split: Split, spec: ThroughputSpec, info: Any, device: torch.device
) -> dict[str, Any]:
    """Iterations per second and peak memory of `variant` training steps of method `name`."""
    config = method_config(spec, name)
    seed_everything(spec.seed)
    net = NetSpec(config.net.name, {**config.net.options, **spec.net_options})
    method = create_method(name, config.method_options, MethodContext(info, net, config.train.iterations))
    method.to(device).train()
    stage = method.stages()[-1]
    method.start_stage(stage, None)
    if method.needs_strong_view and variant == REFERENCE:
        raise ValueError(f"{name}: the reference path has no strong view; measure methods without one")
    amp = variant != REFERENCE and spec.amp
    channels_last = variant != REFERENCE and spec.channels_last
    if channels_last:
        method.to(memory_format=torch.channels_last)
    labeled = spec.batch // 2
    unlabeled = spec.batch - labeled if method.uses_unlabeled else 0
    optimizers = [
        build_optimizer(module, config.optim.settings_for(key)) for key, module in method.optimised_modules().items()
    ]
    batches = (
        _reference_batches(split, spec, labeled, unlabeled, device)
        if variant == REFERENCE
        else _fast_batches(split, spec, method, labeled, unlabeled, device)
    )
    optimisation = OptimisationStep(method, optimizers, device, amp=amp, channels_last=channels_last)
    middle = stage.iterations // 2  # ramps and warm-ups are over: every loss term is active

    def step() -> None:
        optimisation.update(sum(optimisation.losses(next(batches), middle).values()), middle)

    try:
        elapsed = time_steps(step, spec.warmup, spec.iterations, device)
    finally:
        batches.close()  # stops the DataLoader's workers
    memory = peak_memory(device)
    return {
        "method": name,
        "variant": variant,
        "iterations_per_s": spec.iterations / elapsed,
        "peak_mb": memory.host_rss_mb if memory.cuda_mb is None else memory.cuda_mb,
        "memory": "host_peak_rss" if memory.cuda_mb is None else "cuda_max_allocated",
    }


def _load_split(spec: ThroughputSpec) -> tuple[Split, Any]:
    name = spec.resolved_dataset()
    options = dict(spec.data_options)
    if name == "acdc":
        options.setdefault("splits", ("train",))  # val/test volumes are not needed here
    dataset = create_dataset(name, spec.root if name == "acdc" else None, **options)
    return make_split(dataset, spec.labeled), dataset.info


def run_throughput(spec: ThroughputSpec) -> dict[str, Any]:
    """Measure every method x variant (interleaved per repeat); returns settings, results and ratios."""
    from medsemi.methods import list_methods

    device = resolve_device(spec.device)
    split, info = _load_split(spec)
    methods = [m for m in spec.methods if m in list_methods()]
    skipped = [m for m in spec.methods if m not in methods]
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with torch_threads(spec.threads or None):
        for _ in range(spec.repeats):
            for name in methods:
                for variant in spec.variants():
                    samples.setdefault((name, variant), []).append(measure(name, variant, split, spec, info, device))
        threads = torch.get_num_threads()
    results = [
        {
            **runs[0],
            "iterations_per_s": statistics.median(r["iterations_per_s"] for r in runs),
            "iterations_per_s_all": [r["iterations_per_s"] for r in runs],
            "peak_mb": max(r["peak_mb"] for r in runs),
        }
        for runs in samples.values()
    ]
    speed = {(r["method"], r["variant"]): r["iterations_per_s"] for r in results}
    ratios = [
        {"method": name, "variant": variant, "speedup": speed[(name, variant)] / speed[(name, REFERENCE)]}
        for name in methods
        for variant in spec.variants()
        if variant != REFERENCE
    ]
    settings = {**asdict(spec), "root": str(spec.root), "config_dir": str(spec.config_dir)}
    return {
        "settings": {**settings, "dataset": spec.resolved_dataset(), "labeled_slices": len(split.labeled)},
        "device": describe_device(device),
        "torch_threads": threads,
        "skipped_methods": skipped,
        "results": results,
        "ratios": ratios,
    }


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {os.cpu_count()} logical cores"


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    variants = list(dict.fromkeys(r["variant"] for r in report["results"]))
    speed = {(r["method"], r["variant"]): r for r in report["results"]}
    ratio = {(r["method"], r["variant"]): r["speedup"] for r in report["ratios"]}
    memory = report["results"][0]["memory"] if report["results"] else ""
    unlabeled = settings["batch"] - settings["batch"] // 2
    lines = [
        "# Training throughput: fast data path vs reference-style path",
        "",
        f"- device: {report['device']}; torch threads: {report['torch_threads']}",
        f"- data: {settings['dataset']} ({settings['labeled']} labeled patients = "
        f"{settings['labeled_slices']} labeled slices), patch {settings['patch'][0]}x{settings['patch'][1]}, "
        f"batch {settings['batch']} = {settings['batch'] // 2} labeled + {unlabeled} unlabeled (labeled only "
        "for methods without unlabeled data)",
        f"- {settings['warmup']} warm-up + {settings['iterations']} timed iterations per measurement, median "
        f"of {settings['repeats']} interleaved repeat(s); reference: DataLoader with {settings['workers']} "
        "workers (per-sample scipy rotate/zoom), host -> device copy",
        f"- peak memory: {memory} (MiB)",
        "",
    ]
    header = [
        "method",
        *(f"{v} it/s" for v in variants),
        *(f"{v} / reference" for v in variants[1:]),
        *(f"{v} peak MiB" for v in variants),
    ]
    body = [
        [
            name,
            *(f"{speed[(name, v)]['iterations_per_s']:.2f}" for v in variants),
            *(f"{ratio[(name, v)]:.2f}x" for v in variants[1:]),
            *(f"{speed[(name, v)]['peak_mb']:.0f}" for v in variants),
        ]
        for name in dict.fromkeys(r["method"] for r in report["results"])
    ]
    lines += markdown_table(header, body)
    if report["skipped_methods"]:
        lines += ["", f"Not registered, skipped: {', '.join(report['skipped_methods'])}"]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    out = Path(out)
    paths = [out / "throughput.json", out / "throughput.md"]
    atomic_write_text(paths[0], json.dumps(report, indent=1) + "\n")
    atomic_write_text(paths[1], markdown(report))
    return paths


def spec_from_args(args: argparse.Namespace) -> ThroughputSpec:
    import yaml

    methods = tuple(args.methods.split(",")) if args.methods else DEFAULT_METHODS
    return ThroughputSpec(
        methods=methods,
        dataset=args.dataset,
        root=Path(args.root),
        data_options=yaml.safe_load(args.data_options) or {},
        labeled=args.labeled,
        net_options=yaml.safe_load(args.net_options) or {},
        device=args.device,
        batch=args.batch,
        patch=(args.patch, args.patch),
        iterations=args.iterations or 20,
        warmup=args.warmup,
        workers=args.workers,
        amp=args.amp,
        channels_last=args.channels_last,
        repeats=args.repeats,
        threads=args.threads,
    )


def run_from_args(args: argparse.Namespace) -> int:
    report = run_throughput(spec_from_args(args))
    paths = write_report(report, Path(args.out or "runs/bench/throughput"))
    print(paths[1].read_text())
    print(f"written: {', '.join(map(str, paths))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from medsemi.bench.arguments import add_shared_arguments, add_throughput_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shared_arguments(parser)
    add_throughput_arguments(parser)
    return run_from_args(parser.parse_args(argv))
