"""YAML -> typed dataclasses. `key=value` overrides win, unknown keys are errors, the resolved config is saved."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class DataConfig:
    dataset: str = "synthetic2d"
    root: str | None = None
    labeled: int | None = 3
    split_file: str | None = None
    patch_size: list[int] = field(default_factory=lambda: [256, 256])
    batch_labeled: int = 12
    batch_unlabeled: int = 12
    augment: str = "acdc"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class NetConfig:
    name: str = "unet"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "poly"
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
    val_split: str = "val"
    val_limit: int | None = None
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


class ConfigError(ValueError):
    pass


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
            kwargs[name] = _coerce(value, hint, f"{where}{name}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check scalars against their annotation (ints may stand for floats); containers are taken as they are."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{where} may not be null")
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is float and isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                continue
        if origin in (int, str, bool) and type(value) is origin:
            return value
        if origin in (list, dict) and isinstance(value, origin) or origin is Any:
            return value
    raise ConfigError(f"{where}: {value!r} is not a valid {hint}")


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
    return config


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
