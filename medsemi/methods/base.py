"""The Method contract: a method owns its networks and expresses losses; the Trainer does everything else.

A method never calls backward, owns no optimizer, moves nothing to a device and reads its
hyper-parameters from its own `Options` dataclass (the `method:` section of the config).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from medsemi.data.cases import DatasetInfo
from medsemi.engine.ema import ema_update, make_teacher
from medsemi.methods.options import MethodOptions, check_units
from medsemi.nets.registry import create_net
from medsemi.registry import Registry
from medsemi.typed import ConfigError, typed_fields


@dataclass
class Batch:
    """One training batch, already augmented, on the training device.

    image_l: (Bl, C, *spatial) labeled images; label_l: (Bl, *spatial) int64 class maps.
    image_u: (Bu, C, *spatial) unlabeled images (the weak view).
    image_u_strong: the photometric strong view of image_u (same geometry, so a pseudo-label map from the
    weak view applies to it pixel for pixel); present only for methods with `needs_strong_view`.
    """

    image_l: Tensor
    label_l: Tensor
    image_u: Tensor
    image_u_strong: Tensor | None = None


@dataclass
class NetSpec:
    """Which backbone a method builds (config section `net:`); methods may build several from it."""

    name: str = "unet"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass
class MethodContext:
    info: DatasetInfo
    net: NetSpec
    iterations: int

    def build_net(self, name: str | None = None, **options: Any) -> nn.Module:
        """A fresh network (new random init) from the configured spec; overrides win."""
        merged = {**self.net.options, **options} if name is None else options
        return create_net(
            name or self.net.name,
            in_channels=self.info.in_channels,
            num_classes=self.info.num_classes,
            **merged,
        )


@dataclass
class Stage:
    """A training phase with its own iteration count, optimizer and LR schedule (e.g. BCP pre-training).

    inherit_optimizer: start from the optimizer state saved with the previous stage's best checkpoint (BCP's
    ACDC script restores the SGD momentum with the pre-trained weights) instead of a fresh optimizer.
    """

    name: str
    iterations: int
    inherit_optimizer: bool = False


class Method(nn.Module):
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    needs_strong_view: ClassVar[bool] = False
    uses_unlabeled: ClassVar[bool] = True
    supported_dims: ClassVar[tuple[int, ...]] = (2, 3)
    registry_name: ClassVar[str] = ""
    retired_buffers: ClassVar[tuple[str, ...]] = ()
    """Buffers that older checkpoints of this method hold and it no longer has (dropped when loading)."""

    def __init__(self, options: MethodOptions, context: MethodContext) -> None:
        super().__init__()
        check_options(self.registry_name or type(self).__name__, options)
        self.options = options
        self.context = context
        self.diagnostics: dict[str, float | Tensor] = {}

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        """Named, already weighted loss terms; the trainer back-propagates their sum.

        `step` counts iterations within the current stage, from 0.
        """
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called after the optimizer step (EMA teachers update here)."""

    def predictor(self) -> nn.Module:
        """The network used for validation, testing and export."""
        raise NotImplementedError

    def ensemble_members(self) -> list[nn.Module]:
        """Networks whose disagreement measures uncertainty at prediction time (teacher/student, branches)."""
        return [self.predictor()]

    def ema_teachers(self) -> list[nn.Module]:
        """Networks updated only by `after_step` (no loss may send gradient into them)."""
        return []

    def optimised_modules(self) -> dict[str, nn.Module]:
        """Each entry gets its own optimizer (same settings unless the config overrides per name)."""
        raise NotImplementedError

    def stages(self) -> list[Stage]:
        return [Stage("train", self.context.iterations)]

    def start_stage(self, stage: Stage, previous_best: dict[str, Tensor] | None) -> None:
        """Called before each stage; `previous_best` is the best-on-val state_dict of the previous stage.

        A run resumed inside the stage calls `resume_stage` instead (the checkpoint restores the weights).
        """

    def resume_stage(self, stage: Stage) -> None:
        """Called instead of `start_stage` when a run resumes inside `stage`, after its weights are restored:
        set here what `start_stage` sets besides weights, such as which stage this is (BCP, Semi-ViT)."""

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        kept = {key: value for key, value in state_dict.items() if key not in self.retired_buffers}
        return super().load_state_dict(kept, strict, assign)

    def log(self, name: str, value: float | Tensor) -> None:
        """Record a diagnostic (not a loss) for the training log; a tensor stays on its device (the trainer
        reads it in its one host sync per step)."""
        self.diagnostics[name] = value.detach().clone() if isinstance(value, Tensor) else float(value)


class StudentMethod(Method):
    """One trained network, `student`, built from the configured backbone: the predictor and the only
    optimised module."""

    def __init__(self, options: MethodOptions, context: MethodContext) -> None:
        super().__init__(options, context)
        self.student = context.build_net()

    def predictor(self) -> nn.Module:
        return self.student

    def optimised_modules(self) -> dict[str, nn.Module]:
        return {"student": self.student}


@dataclass(frozen=True)
class TeacherUpdate:
    """How one `after_step` moves the EMA teacher: `ema_update`'s decay, buffer averaging and warm-up."""

    decay: float
    buffers: bool = False
    warmup: bool = True


class StudentTeacherMethod(StudentMethod):
    """A student plus its EMA `teacher` (a frozen copy that only `after_step` moves, as `teacher_update` says)."""

    def __init__(self, options: MethodOptions, context: MethodContext) -> None:
        super().__init__(options, context)
        self.teacher = make_teacher(self.student)

    def ensemble_members(self) -> list[nn.Module]:
        return [self.student, self.teacher]

    def ema_teachers(self) -> list[nn.Module]:
        return [self.teacher]

    def teacher_update(self, step: int) -> TeacherUpdate | None:
        """The EMA update after optimizer step `step`; None leaves the teacher as it is."""
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        update = self.teacher_update(step)
        if update is not None:
            ema_update(self.teacher, self.student, update.decay, step, buffers=update.buffers, warmup=update.warmup)


def check_options(method: str, options: MethodOptions) -> None:
    """Options built by hand (not from a config) get the config's type checks at construction: a value outside
    its `Literal`, or of another type, fails naming the method and the option."""
    values = {option.name: getattr(options, option.name) for option in dataclasses.fields(options)}
    try:
        typed_fields(type(options), values, "method.")
    except ConfigError as error:
        raise ConfigError(f"{method}: {error}") from error


METHODS: Registry[Method] = Registry("method")


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def decorator(cls: type[Method]) -> type[Method]:
        check_units(cls.Options)
        cls.registry_name = name
        METHODS.register(name)(cls)
        return cls

    return decorator


def method_class(name: str) -> type[Method]:
    return METHODS.get(name)  # type: ignore[return-value]


def method_option_fields(cls: type[Method], values: dict[str, Any]) -> dict[str, Any]:
    """A method's config section typed by its Options, as the config types every section; unknown keys are
    errors naming the known ones, not silent typos."""
    known = {f.name for f in dataclasses.fields(cls.Options)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"method {cls.registry_name!r} has no option(s) {unknown}; known: {sorted(known)}")
    try:
        return typed_fields(cls.Options, values, "method.")
    except ConfigError as error:
        raise ConfigError(f"{cls.registry_name}: {error}") from error


def build_options(cls: type[Method], values: dict[str, Any]) -> MethodOptions:
    """A method's Options from its config section (typed and checked by `method_option_fields`)."""
    return cls.Options(**method_option_fields(cls, values))


def create_method(name: str, options: dict[str, Any], context: MethodContext) -> Method:
    cls = method_class(name)
    return cls(build_options(cls, options), context)


def list_methods() -> list[str]:
    return METHODS.names()
