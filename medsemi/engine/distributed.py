"""Data-parallel training under `torchrun`: one process per GPU (or per CPU with gloo), one global batch.

What DDP does, done explicitly on the method's optimised modules instead of through `DistributedDataParallel`
wrappers: parameters start equal (broadcast from rank 0), each rank back-propagates its shard of the global
batch, and the gradients are averaged over ranks before the optimizer step (one flat all-reduce per dtype).
Methods call their networks' sub-modules directly (`net.branch_outputs`, `net.forward_streams`, encoders)
and optimise sub-module groups, which a DDP wrapper would not see; averaging after `backward` covers every
such call. EMA teachers are never optimised, so no gradient of theirs is reduced; they stay equal on every
rank because they average equal students. Buffers (BatchNorm statistics, memory banks) are made rank 0's
before every validation and checkpoint, as DDP's `broadcast_buffers` would.

Outside torchrun (`WORLD_SIZE` unset or 1) every function here is a no-op, so single-process runs are
unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment() -> DistContext:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them (a plain process is rank 0 of 1)."""
    return DistContext(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def setup(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the torchrun job (NCCL on CUDA, gloo on CPU) and return this rank's device (cuda:LOCAL_RANK)."""
    context = from_environment()
    if not context.enabled:
        return context, device
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_world_size() != context.world_size:
        raise RuntimeError(f"process group has {dist.get_world_size()} ranks, WORLD_SIZE says {context.world_size}")
    return context, device


@contextmanager
def process_group_scope() -> Iterator[None]:
    """Destroy on exit a process group created inside (by `setup`); leave a caller's own group alone."""
    existed = dist.is_available() and dist.is_initialized()  # some builds have no torch.distributed
    try:
        yield
    finally:
        if not existed and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """Distinct seeds per rank (dropout, noise), rank 0 keeps the configured seed."""
    return seed + 1_000_003 * rank


def per_rank_batch(global_batch: int, context: DistContext, name: str) -> int:
    """The configured batch is the global one (the papers' protocol at any GPU count); ranks share it."""
    if global_batch % context.world_size:
        raise ValueError(
            f"{name}={global_batch} is the global batch: it must be divisible by the {context.world_size} processes"
        )
    return global_batch // context.world_size


def on_main(context: DistContext, function: Callable[[], T]) -> T:
    """`function()` on rank 0 only; every rank returns its result, or raises the exception it raised."""
    if not context.enabled:
        return function()
    box: list[Any] = [None]
    if context.is_main:
        try:
            box[0] = (True, function())
        except Exception as error:  # handed to every rank, so all stop together
            box[0] = (False, error)
    dist.broadcast_object_list(box, src=0)
    succeeded, value = box[0]
    if not succeeded:
        raise value
    return value


def gather(value: T, context: DistContext) -> list[T]:
    """Every rank's `value`, in rank order, on every rank (a picklable object)."""
    if not context.enabled:
        return [value]
    values: list[Any] = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values


def mean_over_ranks(values: Tensor, context: DistContext) -> Tensor:
    """The mean of `values` over ranks: per-rank loss means of equal shards -> the global batch's loss."""
    if not context.enabled:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / context.world_size


def _flat_all_reduce(tensors: list[Tensor], op: Callable[[Tensor], None]) -> None:
    """Apply a collective to `tensors` through one flat buffer per (dtype, device), written back in place."""
    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    for (dtype, _), members in groups.items():
        flat = torch.cat([tensor.reshape(-1) for tensor in members])
        if dtype == torch.bool:  # collectives carry bytes, not booleans
            carrier = flat.to(torch.uint8)
            op(carrier)
            flat = carrier.bool()
        else:
            op(flat)
        for tensor, chunk in zip(members, flat.split([t.numel() for t in members]), strict=True):
            tensor.copy_(chunk.view_as(tensor))


def average_gradients(modules: Iterable[nn.Module], context: DistContext) -> None:
    """Average the gradients of `modules` over ranks (DDP's all-reduce), after `backward`.

    A parameter that received a gradient on some rank but not on this one gets zeros here, so every rank
    steps the same parameters; parameters no rank touched keep `grad=None` (the optimizer skips them).
    """
    if not context.enabled:
        return
    parameters = list(dict.fromkeys(p for module in modules for p in module.parameters() if p.requires_grad))
    if not parameters:
        return
    reached = torch.tensor([p.grad is not None for p in parameters], dtype=torch.uint8, device=parameters[0].device)
    dist.all_reduce(reached, op=dist.ReduceOp.MAX)
    touched = [p for p, flag in zip(parameters, reached.tolist(), strict=True) if flag]
    for parameter in touched:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)

    def mean(flat: Tensor) -> None:
        dist.all_reduce(flat)
        flat.div_(context.world_size)

    _flat_all_reduce([p.grad for p in touched], mean)


@torch.no_grad()
def broadcast_state(module: nn.Module, context: DistContext, *, parameters: bool = True) -> None:
    """Make rank 0's buffers (and parameters, unless told otherwise) this rank's: equal start, equal saves."""
    if not context.enabled:
        return
    tensors = [*(module.parameters() if parameters else ()), *module.buffers()]
    _flat_all_reduce([t.data for t in tensors], lambda flat: dist.broadcast(flat, src=0))


@torch.no_grad()
def assert_in_sync(module: nn.Module, context: DistContext) -> None:
    """Fail loudly if any rank's parameters or buffers differ from rank 0's (a replication bug, not noise)."""
    if not context.enabled:
        return
    tensors = [*module.parameters(), *module.buffers()]
    if not tensors:
        return
    fingerprint = torch.stack([t.detach().double().sum() for t in tensors])
    high, low = fingerprint.clone(), fingerprint.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    if not torch.equal(high, low):
        names = [name for name, _ in [*module.named_parameters(), *module.named_buffers()]]
        differing = [name for name, h, lo in zip(names, high.tolist(), low.tolist(), strict=True) if h != lo]
        raise RuntimeError(f"ranks diverged: {differing[:5]} differ between processes")
