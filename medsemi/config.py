"""YAML -> typed dataclasses. `key=value` overrides win, unknown keys are errors, the resolved config is saved."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from medsemi.typed import ConfigError, coerce, typed_fields


@dataclass
class DataConfig:
    dataset: str = "synthetic2d"
    root: str | None = None
    labeled: int | None = 3
    split_file: str | None = None
    patch_size: list[int] = field(default_factory=lambda: [256, 256])
    batch_labeled: int = 12
    batch_unlabeled: int = 12
    augment: str | dict[str, Any] = "acdc"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class NetConfig:
    name: str = "unet"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: Literal["poly", "step", "constant"] = "poly"
    poly_power: float = 0.9
    step_every: int = 2500
    step_gamma: float = 0.1
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def settings_for(self, module_name: str) -> dict[str, Any]:
        """The shared settings with `overrides[module_name]` on top (e.g. AdamW for a transformer branch)."""
        shared = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "overrides"}
        return {**shared, **self.overrides.get(module_name, {})}


@dataclass
class TrainConfig:
    iterations: int = 30000
    val_every: int = 200
    val_split: Literal["val", "test", "none"] = "val"
    val_limit: int | None = None
    val_sampling: Literal["first", "across_patients"] = "first"
    checkpoint_every: int = 200
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    progress: bool = True


@dataclass
class EvalConfig:
    patch_size: list[int] | None = None
    stride: list[int] | None = None
    lcc: bool = False
    batch_size: int = 16


@dataclass
class RunConfig:
    dir: str = "runs/default"


@dataclass
class Config:
    seed: int = 1337
    data: DataConfig = field(default_factory=DataConfig)
    net: NetConfig = field(default_factory=NetConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "supervised"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def method_name(self) -> str:
        return self.method["name"]

    @property
    def method_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.method.items() if k != "name"}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s) {[f'{where}{k}' for k in unknown]}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}{name}.")
        else:
            kwargs[name] = coerce(value, hint, f"{where}{name}")
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return tree


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_from_dict(tree: dict[str, Any]) -> Config:
    config = _build(Config, tree, "")
    if "name" not in config.method:
        raise ConfigError("method.name is required")
    config.optim.overrides = _optim_overrides(config.optim.overrides)
    config.method = _method_section(config.method)
    validate(config)
    return config


def _method_section(section: dict[str, Any]) -> dict[str, Any]:
    """The `method:` section typed by the method's Options dataclass, like every other section."""
    import medsemi.methods
    from medsemi.methods.base import method_class, method_option_fields

    name, methods = section["name"], medsemi.methods.list_methods()
    _require(name in methods, "method.name", name, f"one of {methods}")
    options = {key: value for key, value in section.items() if key != "name"}
    return {"name": name, **method_option_fields(method_class(name), options)}


def _optim_overrides(overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-module optimizer settings, typed like the shared ones (YAML reads `1e-4` as a string)."""
    hints = typing.get_type_hints(OptimConfig)
    known = sorted(set(hints) - {"overrides"})
    typed = {}
    for module, settings in overrides.items():
        if not isinstance(settings, dict):
            raise ConfigError(f"optim.overrides.{module}: expected a mapping of optim keys, got {settings!r}")
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ConfigError(f"unknown optim.overrides.{module} key(s) {unknown}; known: {known}")
        typed[module] = typed_fields(OptimConfig, settings, f"optim.overrides.{module}.")
    return typed


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")


def _is_size(value: Any, dims: tuple[int, ...] = (2, 3)) -> bool:
    """A patch size or stride: 2 or 3 (or exactly `dims`) positive integers."""
    return (
        isinstance(value, list)
        and len(value) in dims
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in value)
    )


def validate(config: Config) -> None:
    """Check every setting before any data is read or any folder written; the first bad one is named.

    Values the types already pin down (choices too: `Literal`, method options included) are checked by
    `_build`; this checks ranges, sizes, the device, and that the dataset, network and augmentation exist.
    """
    data, train, evaluation = config.data, config.train, config.eval
    for key, value in {
        "train.iterations": train.iterations,
        "train.val_every": train.val_every,
        "train.checkpoint_every": train.checkpoint_every,
        "data.batch_labeled": data.batch_labeled,
        "eval.batch_size": evaluation.batch_size,
    }.items():
        _require(value >= 1, key, value, "a positive integer")
    _require(data.batch_unlabeled >= 0, "data.batch_unlabeled", data.batch_unlabeled, "an integer >= 0")
    _require(data.labeled is None or data.labeled >= 1, "data.labeled", data.labeled, "a positive number or null")
    _require(train.val_limit is None or train.val_limit >= 1, "train.val_limit", train.val_limit, ">= 1 or null")
    _require(_is_size(data.patch_size), "data.patch_size", data.patch_size, "2 or 3 positive integers")
    dims = (len(data.patch_size),)
    for key, value in {"eval.patch_size": evaluation.patch_size, "eval.stride": evaluation.stride}.items():
        _require(value is None or _is_size(value, dims), key, value, f"null or {dims[0]} positive integers")
    _require(bool(config.run.dir), "run.dir", config.run.dir, "a folder")
    _validate_optim(config.optim.settings_for(""), "optim")  # a module without overrides: the shared settings
    for module in config.optim.overrides:
        _validate_optim(config.optim.settings_for(module), f"optim.overrides.{module}")
    _validate_device(train.device)
    _validate_components(config)


def _validate_optim(settings: dict[str, Any], where: str) -> None:
    lr = settings["lr"]
    _require(math.isfinite(lr) and lr > 0, f"{where}.lr", lr, "a positive learning rate")
    _require(0 <= settings["momentum"] <= 1, f"{where}.momentum", settings["momentum"], "in [0, 1]")
    _require(settings["weight_decay"] >= 0, f"{where}.weight_decay", settings["weight_decay"], ">= 0")
    _require(settings["poly_power"] >= 0, f"{where}.poly_power", settings["poly_power"], ">= 0")
    _require(settings["step_every"] >= 1, f"{where}.step_every", settings["step_every"], "a positive integer")
    _require(settings["step_gamma"] > 0, f"{where}.step_gamma", settings["step_gamma"], "> 0")


def _validate_device(name: str) -> None:
    """auto, cpu, cuda[:N] (a GPU that exists) or mps (when available)."""
    import torch

    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"train.device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            found = f"only {count} CUDA GPU(s) are visible" if count else "no CUDA GPU is available"
            raise ConfigError(f"train.device={name!r} but {found}; use auto or cpu")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"train.device={name!r} but MPS is not available; use auto or cpu")
    elif device.type != "cpu":
        raise ConfigError(f"train.device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")


def _validate_components(config: Config) -> None:
    """The dataset (and its options), network and augmentation exist (the method is typed at load)."""
    from medsemi.data.augment import recipe
    from medsemi.data.registry import dataset_factory
    from medsemi.nets import list_nets

    try:
        recipe(config.data.augment, len(config.data.patch_size))
    except ValueError as error:
        raise ConfigError(str(error)) from error
    _require(config.net.name in list_nets(), "net.name", config.net.name, f"one of {list_nets()}")
    try:
        dataset_factory(config.data.dataset, config.data.options)
    except (KeyError, ValueError, TypeError) as error:
        raise ConfigError(error.args[0] if isinstance(error, KeyError) and error.args else str(error)) from error


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"{path}: cannot read config: {error}") from error
    tree = _merge(tree, parse_overrides(overrides or []))
    try:
        return config_from_dict(tree)
    except ConfigError as error:
        raise ConfigError(f"{path or 'config'}: {error}") from error


def config_to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Config, path: Path) -> None:
    from medsemi.engine.checkpoint import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


RESUME_MAY_CHANGE = ("run.dir", "train.progress", "train.device", "eval.batch_size")
"""Settings a resumed run may change: where it is, how it is shown, which device computes it."""


def flat_settings(config: Config) -> dict[str, Any]:
    """Every setting under its dotted key (`optim.lr`, `data.options.limit`)."""

    def flatten(tree: dict[str, Any], prefix: str) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            if isinstance(value, dict) and value:
                flat.update(flatten(value, f"{prefix}{key}."))
            else:
                flat[f"{prefix}{key}"] = value
        return flat

    return flatten(config_to_dict(config), "")


def resolved_settings(config: Config) -> dict[str, Any]:
    """flat_settings with every method option the config leaves out at its default, so that a run saved before
    an option existed resumes under a config that names it at that default."""
    from medsemi.methods.base import method_class
    from medsemi.methods.options import option_default

    flat = flat_settings(config)
    for option in dataclasses.fields(method_class(config.method_name).Options):
        default = option_default(option)
        if default is dataclasses.MISSING:
            continue
        flat.setdefault(f"method.{option.name}", list(default) if isinstance(default, tuple) else default)
    return flat


def check_resume(config: Config, saved: Path) -> None:
    """`--resume` continues a run with the settings it was started with: other ones are refused, naming the
    keys, because training on would mix two configurations under one config.yaml."""
    if not saved.is_file():
        raise ConfigError(f"{saved}: not found, so --resume cannot check that the settings are the run's")
    before, now = resolved_settings(load_config(saved)), resolved_settings(config)
    differing = sorted(
        key for key in before.keys() | now.keys() if key not in RESUME_MAY_CHANGE and before.get(key) != now.get(key)
    )
    if differing:
        changes = ", ".join(f"{key} {before.get(key)!r} -> {now.get(key)!r}" for key in differing)
        raise ConfigError(
            f"{saved}: --resume with settings that differ from the run's ({changes}); resume with the run's "
            "settings, or train into another run.dir"
        )
