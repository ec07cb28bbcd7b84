"""The CPU-friendly payload of ``/update_weights_from_tensor`` for the embedded engine.

SGLang expects each entry of ``serialized_named_tensors`` to be base64 of its multiprocessing
serializer, which ships CUDA IPC handles rather than bytes; that cannot work between CPU processes.
The embedded engine accepts instead base64 of ``torch.save([(name, tensor), ...])`` (real bytes, loaded
with ``weights_only=True``). Same field names, one entry per TP rank (always one here).
"""

from __future__ import annotations

import base64
import io

import torch

NamedTensors = list[tuple[str, torch.Tensor]]


def encode_named_tensors(named: NamedTensors) -> str:
    """[(HF parameter name, tensor)] -> base64 text for one TP rank."""
    buf = io.BytesIO()
    torch.save([(n, t.detach().cpu().contiguous()) for n, t in named], buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_named_tensors(payload: str) -> NamedTensors:
    """Inverse of encode_named_tensors; raises ValueError on anything else (e.g. SGLang's IPC form)."""
    try:
        obj = torch.load(io.BytesIO(base64.b64decode(payload)), weights_only=True)
    except Exception as e:
        raise ValueError(
            "serialized_named_tensors entries must be base64 of torch.save([(name, tensor), ...]) "
            f"for the embedded engine (SGLang's CUDA-IPC serializer is not supported on CPU): {e}"
        ) from e
    if not isinstance(obj, list) or not all(
        isinstance(x, tuple | list) and len(x) == 2 and isinstance(x[1], torch.Tensor) for x in obj
    ):
        raise ValueError("serialized_named_tensors must decode to a list of (name, tensor) pairs")
    return [(str(n), t) for n, t in obj]
