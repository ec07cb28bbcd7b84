"""The process group of the distributed weight-update path (sglang-api.md §4), on either side.

The trainer is rank 0 of a group it forms with every engine (engine ranks start at ``rank_offset``);
for each bucket it POSTs names, dtypes and shapes and broadcasts the tensors from rank 0 in the same
order. The group is built the way SGLang builds its side (a TCP rendezvous, the store prefixed with the
group name, then torch's own group constructor), so the trainer's rank 0, real SGLang and the embedded
engine (gloo on CPU) all meet on the same store keys. The group is registered under its name in the
process, so one process holds one side of a given group name.
"""

from __future__ import annotations

import ipaddress
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d as c10d


def join_group(master_address: str, master_port: int, rank: int, world_size: int,
               group_name: str, backend: str = "gloo", timeout_s: float = 300.0) -> dist.ProcessGroup:
    """Join (rank 0: host the store) a group without touching torch.distributed's default group.

    Blocks until all ``world_size`` ranks have joined.
    """
    timeout = timedelta(seconds=timeout_s)
    store = rendezvous_store(master_address, master_port, rank, world_size, timeout)
    made = c10d._new_process_group_helper(
        world_size, rank, [], backend, c10d.PrefixStore(group_name, store),
        group_name=group_name, timeout=timeout,
    )
    group = made[0] if isinstance(made, tuple) else made
    # Group ranks are global ranks here, so dist.broadcast(src=0, group=...) works on the engine side.
    c10d._world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return group


def rendezvous_store(master_address: str, master_port: int, rank: int, world_size: int,
                     timeout: timedelta) -> dist.Store:
    """The TCP store a group meets on; rank 0 hosts it.

    torch's store server binds every interface whatever address it is given, so on a loopback address
    (local runs) rank 0 binds the socket to that address itself and hands it over: nothing of a local run
    listens beyond the machine (tests/e2e/test_interrupt.py checks every listener).
    """
    if rank == 0 and _is_loopback(master_address):
        family = socket.AF_INET6 if ":" in master_address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((master_address, int(master_port)))
        sock.listen(128)
        store = dist.TCPStore(master_address, int(master_port), world_size, True, timeout,
                              master_listen_fd=sock.detach(), use_libuv=True)  # the store owns the socket
    else:
        url = f"tcp://{master_address}:{int(master_port)}"
        store, _, _ = next(c10d.rendezvous(url, rank, world_size, timeout=timeout))
    store.set_timeout(timeout)
    return store


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def destroy_group(group: dist.ProcessGroup) -> None:
    """Tear one group down (frees its communicators and its name)."""
    dist.destroy_process_group(group)


def torch_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` (SGLang's wire form) or ``"torch.bfloat16"`` -> ``torch.bfloat16``."""
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``, the form ``/update_weights_from_distributed`` takes."""
    return str(dtype).removeprefix("torch.")


def receive_bucket(group: dist.ProcessGroup, names: list[str], dtypes: list[str],
                   shapes: list[list[int]], device: str = "cpu") -> list[tuple[str, torch.Tensor]]:
    """Receive one bucket broadcast from rank 0, tensor by tensor in the announced order."""
    if not len(names) == len(dtypes) == len(shapes):
        raise ValueError(f"names, dtypes and shapes differ in length: "
                         f"{len(names)}, {len(dtypes)}, {len(shapes)}")
    out = []
    for name, dtype, shape in zip(names, dtypes, shapes, strict=True):
        t = torch.empty(shape, dtype=torch_dtype(dtype), device=device)
        group.broadcast(t, 0).wait()
        out.append((name, t))
    return out


def send_bucket(group: dist.ProcessGroup, named: list[tuple[str, torch.Tensor]],
                device: str = "cpu") -> None:
    """Trainer side (rank 0): broadcast each tensor in order, from ``device`` (cuda for NCCL)."""
    for _, t in named:
        group.broadcast(t.detach().to(device).contiguous(), 0).wait()
