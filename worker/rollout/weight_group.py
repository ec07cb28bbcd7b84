"""The engine side of the distributed weight-update path, over gloo on CPU (sglang-api.md §4).

The trainer is rank 0 of a process group it forms with every engine (engine ranks start at
``rank_offset``); for each bucket it POSTs names, dtypes and shapes and broadcasts the tensors from
rank 0 in the same order. Like SGLang's custom group helper, the rendezvous store is prefixed with
the group name, so a trainer must build its group the same way (see ``join_group``).
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist


def join_group(master_address: str, master_port: int, rank: int, world_size: int,
               group_name: str, timeout_s: float = 300.0) -> dist.ProcessGroup:
    """Join (rank 0: host) a gloo group without touching torch.distributed's global default group."""
    store = dist.TCPStore(master_address, int(master_port), world_size, is_master=(rank == 0),
                          timeout=timedelta(seconds=timeout_s))
    return dist.ProcessGroupGloo(dist.PrefixStore(group_name, store), rank, world_size,
                                 timedelta(seconds=timeout_s))


def receive_bucket(group: dist.ProcessGroup, names: list[str], dtypes: list[str],
                   shapes: list[list[int]]) -> list[tuple[str, torch.Tensor]]:
    """Receive one bucket broadcast from rank 0, tensor by tensor in the announced order."""
    if not len(names) == len(dtypes) == len(shapes):
        raise ValueError(f"names, dtypes and shapes differ in length: "
                         f"{len(names)}, {len(dtypes)}, {len(shapes)}")
    out = []
    for name, dtype, shape in zip(names, dtypes, shapes, strict=True):
        torch_dtype = getattr(torch, str(dtype).removeprefix("torch."), None)
        if not isinstance(torch_dtype, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r} for {name}")
        t = torch.empty(shape, dtype=torch_dtype)
        group.broadcast(t, 0).wait()
        out.append((name, t))
    return out


def send_bucket(group: dist.ProcessGroup, named: list[tuple[str, torch.Tensor]]) -> None:
    """Trainer side (rank 0): broadcast each tensor in order."""
    for _, t in named:
        group.broadcast(t.detach().cpu().contiguous(), 0).wait()
