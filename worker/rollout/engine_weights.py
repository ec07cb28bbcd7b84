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

from kuberl.worker.rollout.http_shapes import error_response, json_body
from kuberl.worker.rollout.scheduler import Scheduler
from kuberl.worker.rollout.tensor_payload import decode_named_tensors
from kuberl.worker.rollout.weight_group import join_group, receive_bucket


class WeightRoutes:
    """Mixed into EmbeddedEngine; uses its ``model``, ``scheduler`` and ``groups``."""

    model: torch.nn.Module
    scheduler: Scheduler
    groups: dict[str, Any]

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
        try:
            group = await asyncio.to_thread(
                join_group, str(body["master_address"]), int(body["master_port"]),
                int(body.get("rank_offset", 1)), int(body["world_size"]), name)
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
        if self.groups.pop(name, None) is None:
            return web.json_response({"success": False, "message": f"no group {name!r}"},
                                     status=400)
        return web.json_response({"success": True, "message": "Succeeded to destroy the group."})

    async def update_weight_version(self, request: web.Request) -> web.Response:
        body = await json_body(request, required=True)
        version = str(body.get("new_version"))
        await asyncio.wrap_future(self.scheduler.update_weights(
            lambda: None, version, bool(body.get("abort_all_requests", True))))
        return web.json_response({"success": True, "message": "ok", "new_version": version})

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
