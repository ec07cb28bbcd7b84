"""Running megatron-core on CPU (gloo, fp32): the one place that redirects its hard-coded CUDA calls.

megatron-core 0.19.2 is CUDA-first. Its math runs on CPU unchanged, but a handful of calls name CUDA
outright: optimizer/scaler/clip-grad bookkeeping tensors are created with ``device='cuda'``, the rotary
table and a few buffers go to ``torch.cuda.current_device()``, the optimizers accept parameters only when
``param.type()`` says ``torch.cuda.*Tensor``, dist_checkpointing synchronizes the CUDA stream before it
writes, DDP waits on the current CUDA stream before reducing gradients, and attention forks the CUDA RNG tracker (for dropout, which kuberl sets to 0). None of these
changes a number on CPU. ``megatron_on_cpu()`` redirects exactly these while megatron code runs:

- a ``TorchFunctionMode`` turns ``device='cuda'`` (and ``Tensor.cuda()``) into CPU, and makes
  ``Tensor.type()`` report the ``torch.cuda.`` name of a CPU tensor's type;
- ``torch.cuda.current_device`` answers ``"cpu"``, ``torch.cuda.current_stream`` is a stream whose
  waits do nothing, ``torch.cuda.synchronize`` does nothing, and the RNG tracker's ``fork`` is a null
  context.

The Megatron backend enters it around its work when ``device`` is ``cpu`` (tests, ``kuberl convert``,
a CPU trainer); on CUDA nothing is patched. Everything else -- tensor-parallel layers and collectives,
DDP buffers, the (distributed) optimizer, sharded checkpoints -- is megatron's own code on gloo.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch.overrides import TorchFunctionMode

_F = TypeVar("_F", bound=Callable[..., Any])
_state = threading.local()


def _is_cuda(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.split(":")[0] == "cuda"
    return isinstance(device, int) and not isinstance(device, bool)  # a bare index means a CUDA device


class _NoStream:
    """What megatron's DDP asks of the current CUDA stream before a gradient reduction: waits only."""

    def wait_event(self, event: Any) -> None:
        return None

    def wait_stream(self, stream: Any) -> None:
        return None


_NO_STREAM = _NoStream()


class _CudaOnCpu(TorchFunctionMode):
    """Rewrites CUDA placements of torch calls to CPU (see the module docstring)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name if ".cuda." in name else name.replace("torch.", "torch.cuda.", 1)
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


@contextlib.contextmanager
def megatron_on_cpu() -> Iterator[None]:
    """Run megatron-core's CUDA-only calls on CPU inside this block (re-entrant, per thread)."""
    depth = getattr(_state, "depth", 0)
    if depth:
        _state.depth = depth + 1
        try:
            yield
        finally:
            _state.depth -= 1
        return
    from megatron.core.tensor_parallel import random as mrandom

    cuda = torch.cuda
    saved = (cuda.current_device, cuda.current_stream, cuda.synchronize, mrandom.CudaRNGStatesTracker.fork)
    cuda.current_device = lambda: "cpu"  # type: ignore[assignment,return-value]
    cuda.current_stream = lambda *a, **k: _NO_STREAM  # type: ignore[assignment,return-value]
    cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    mrandom.CudaRNGStatesTracker.fork = (  # type: ignore[method-assign]
        lambda self, name="model-parallel-rng": contextlib.nullcontext()
    )
    _state.depth = 1
    try:
        with _CudaOnCpu():
            yield
    finally:
        _state.depth = 0
        (cuda.current_device, cuda.current_stream, cuda.synchronize,  # type: ignore[method-assign]
         mrandom.CudaRNGStatesTracker.fork) = saved


def megatron_on(device: torch.device | str) -> contextlib.AbstractContextManager[None]:
    """``megatron_on_cpu()`` for a CPU device, nothing on CUDA (production on GPU patches nothing)."""
    return megatron_on_cpu() if torch.device(device).type == "cpu" else contextlib.nullcontext()


def on_device(method: _F) -> _F:
    """Decorate a method of an object with a ``device`` attribute: run it under ``megatron_on``."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with megatron_on(self.device):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
