"""The embedded engine's weight endpoints: disk, tensor and distributed updates, version, inspection.

Every update is applied by the step thread under the writer-lock rule (Scheduler.update_weights),
after the new tensors have been read or received here, off the event loop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import torch
from aiohttp import web

from kuberl.worker.engine.http_shapes import error_response, json_body
from kuberl.worker.engine.scheduler import Scheduler
from kuberl.worker.tensor_payload import decode_named_tensors
from kuberl.worker.weight_group import destroy_group, join_group, receive_bucket

MEMORY_TAGS = ("weights", "kv_cache", "cuda_graph")


class WeightRoutes:
    """Mixed into EmbeddedEngine; uses its ``model``, ``scheduler``, ``groups`` and ``released``."""

    model: torch.nn.Module
    scheduler: Scheduler
    groups: dict[str, Any]
    released: dict[str, Any]  # memory tag -> what resume needs (parameter shapes for "weights")

    async def _update(self, named: list[tuple[str, torch.Tensor]], body: dict[str, Any]):
        version = body.get("weight_version")
        fut = self.scheduler.update_weights(
            lambda: assign_weights(self.model, named),
            None if version is None else str(version),
            bool(body.get("abort_all_requests", False)),
        )
        try:
            await asyncio.wrap_future(fut)
        except (ValueError, KeyError, RuntimeError) as e:
            return web.json_response({"success": False, "message": str(e)}, status=400)
        return web.json_response(
            {"success": True, "message": "Succeeded to update model weights.", "num_paused_requests": 0}
        )

    async def update_weights_from_disk(self, request: web.Request) -> web.Response:
        body = await json_body(request, required=True)
        try:
            named = await asyncio.to_thread(load_checkpoint_tensors, str(body.get("model_path") or ""))
        except (OSError, ValueError) as e:
            return web.json_response({"success": False, "message": str(e)}, status=400)
        return await self._update(named, body)

    async def update_weights_from_tensor(self, request: web.Request) -> web.Response:
        body = await json_body(request, required=True)
        if body.get("load_format") not in (None, "direct"):
            return web.json_response({"success": False, "message": (
                f"load_format {body.get('load_format')!r} is not supported by the embedded engine; "
                "send load_format null with torch.save payloads")}, status=400)
        try:
            payloads = list(body.get("serialized_named_tensors") or [])
            if len(payloads) != 1:
                raise ValueError(f"expected 1 serialized_named_tensors entry (tp_size 1), got {len(payloads)}")
            named = decode_named_tensors(payloads[0])
        except ValueError as e:
            return web.json_response({"success": False, "message": str(e)}, status=400)
        return await self._update(named, body)

    async def init_weights_update_group(self, request: web.Request) -> web.Response:
        """Join the trainer's group (gloo here, whatever ``backend`` says); blocks until all join."""
        body = await json_body(request, required=True)
        name = body.get("group_name") or "weight_update_group"
        if name in self.groups:
            return web.json_response({"success": False, "message": (
                f"group {name!r} exists; destroy it first")}, status=400)
        try:
            group = await asyncio.to_thread(
                join_group, str(body["master_address"]), int(body["master_port"]),
                int(body.get("rank_offset", 1)), int(body["world_size"]), name, "gloo")
        except (KeyError, ValueError, RuntimeError) as e:
            return web.json_response({"success": False, "message": f"{type(e).__name__}: {e}"},
                                     status=400)
        self.groups[name] = group
        return web.json_response({"success": True, "message": "Succeeded to initialize custom "
                                  "process group (gloo)."})

    async def update_weights_from_distributed(self, request: web.Request) -> web.Response:
        body = await json_body(request, required=True)
        name = body.get("group_name") or "weight_update_group"
        if name not in self.groups:
            return web.json_response({"success": False, "message": (
                f"no weight update group {name!r}; call /init_weights_update_group first")},
                status=400)
        if body.get("load_format") not in (None, "direct"):
            return web.json_response({"success": False, "message": (
                f"load_format {body.get('load_format')!r} is not supported by the embedded engine")},
                status=400)
        try:
            named = await asyncio.to_thread(receive_bucket, self.groups[name], body["names"],
                                            body["dtypes"], body["shapes"])
        except (KeyError, ValueError, RuntimeError) as e:
            return web.json_response({"success": False, "message": f"{type(e).__name__}: {e}"},
                                     status=400)
        return await self._update(named, body)

    async def destroy_weights_update_group(self, request: web.Request) -> web.Response:
        body = await json_body(request, required=True)
        name = body.get("group_name") or "weight_update_group"
        group = self.groups.pop(name, None)
        if group is None:
            return web.json_response({"success": False, "message": f"no group {name!r}"},
                                     status=400)
        await asyncio.to_thread(destroy_group, group)
        return web.json_response({"success": True, "message": "Succeeded to destroy the group."})

    async def update_weight_version(self, request: web.Request) -> web.Response:
        body = await json_body(request, required=True)
        version = str(body.get("new_version"))
        await asyncio.wrap_future(self.scheduler.update_weights(
            lambda: None, version, bool(body.get("abort_all_requests", True))))
        return web.json_response({"success": True, "message": "ok", "new_version": version})

    async def release_memory_occupation(self, request: web.Request) -> web.Response:
        """Free the tagged memory (``weights``: every parameter's storage); the engine must be idle."""
        tags, problem = await self._memory_tags(request)
        if problem is not None:
            return problem

        def release() -> None:
            if "weights" in tags and "weights" not in self.released:
                self.released["weights"] = free_parameters(self.model)
            self.released.update({t: True for t in tags if t != "weights"})

        await asyncio.wrap_future(self.scheduler.call(release))
        return web.json_response(None)

    async def resume_memory_occupation(self, request: web.Request) -> web.Response:
        """Allocate released memory again; resumed weights are zeros until the next update fills them."""
        tags, problem = await self._memory_tags(request)
        if problem is not None:
            return problem

        def resume() -> None:
            if "weights" in tags and "weights" in self.released:
                restore_parameters(self.model, self.released.pop("weights"))
            for t in tags:
                self.released.pop(t, None)

        await asyncio.wrap_future(self.scheduler.call(resume))
        return web.json_response(None)

    async def _memory_tags(self, request: web.Request) -> tuple[list[str], web.Response | None]:
        body = await json_body(request, required=False) if request.can_read_body else {}
        tags = list((body or {}).get("tags") or MEMORY_TAGS)
        unknown = [t for t in tags if t not in MEMORY_TAGS]
        if unknown:
            return tags, error_response(f"unknown memory tags {unknown}; use {list(MEMORY_TAGS)}")
        if await asyncio.wrap_future(self.scheduler.is_busy()):
            return tags, error_response(
                "the engine must be idle (pause first) to release or resume memory")
        return tags, None

    async def get_weights_by_name(self, request: web.Request) -> web.Response:
        body = await json_body(request, required=True) if request.method == "POST" and request.can_read_body else {}
        name = body.get("name") or request.query.get("name")
        size = int(body.get("truncate_size") or request.query.get("truncate_size") or 100)
        params = dict(self.model.named_parameters())
        if name not in params:
            return error_response(f"no parameter named {name!r}")
        return web.json_response(params[name].detach().float().cpu()[:size].tolist())


def load_checkpoint_tensors(model_path: str) -> list[tuple[str, torch.Tensor]]:
    """All tensors of the ``*.safetensors`` files in a Hugging Face model directory."""
    from safetensors.torch import load_file

    files = sorted(Path(model_path).glob("*.safetensors")) if model_path else []
    if not files:
        raise ValueError(f"model_path {model_path!r} has no *.safetensors files; "
                         "save the model with save_pretrained(safe_serialization=True)")
    named: list[tuple[str, torch.Tensor]] = []
    for f in files:
        named += list(load_file(str(f)).items())
    return named


def free_parameters(model: torch.nn.Module) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Drop every parameter's storage (tied ones once); return the shapes and dtypes to restore."""
    kept = {}
    for name, p in model.named_parameters():
        kept[name] = (p.shape, p.dtype)
        p.data = torch.empty(0, dtype=p.dtype, device=p.device)
    return kept


def restore_parameters(model: torch.nn.Module, kept: dict[str, tuple[torch.Size, torch.dtype]]) -> None:
    """Give released parameters zero-filled storage of their old shapes again."""
    for name, p in model.named_parameters():
        shape, dtype = kept[name]
        p.data = torch.zeros(shape, dtype=dtype, device=p.device)


def assign_weights(model: torch.nn.Module, named: list[tuple[str, torch.Tensor]]) -> None:
    """Copy HF-named tensors into the model; checks every name and shape before changing anything."""
    params = dict(model.named_parameters())
    unknown = [n for n, _ in named if n not in params]
    if unknown:
        raise ValueError(f"unknown parameter names {unknown[:5]} (model has e.g. {list(params)[:3]})")
    bad = [(n, tuple(t.shape), tuple(params[n].shape)) for n, t in named if t.shape != params[n].shape]
    if bad:
        raise ValueError(f"shape mismatch (name, got, expected): {bad[:5]}")
    with torch.no_grad():
        for n, t in named:
            params[n].copy_(t.to(device=params[n].device, dtype=params[n].dtype))
