"""Seconds per GB of each weight-sync transport that can run here, through kuberl's real sender.

CPU (default): builds a random Qwen2 of about ``--size-mb`` in float32, starts the embedded engine on it in
its own process, and times ``distributed`` over gloo and ``disk`` (a local folder standing in for the
shared volume), each followed by the version check. GPU (``--engine-url`` of running SGLang servers):
``distributed`` over NCCL (the engine on another GPU) and ``ipc`` (CUDA IPC handles; the engine on this
process's GPU), with the weights of ``--model-path`` random-initialised in bf16 on ``cuda``.

    .venv/bin/python bench/weight_sync_bench.py --size-mb 400              # CPU: gloo and disk
    python3 bench/weight_sync_bench.py --model-path /tmp/m-1p5b --nccl-url http://127.0.0.1:30010 \\
        --ipc-url http://127.0.0.1:30011 --json $OUT/weight_sync.json      # GPU: nccl and ipc
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kuberl.worker.weight_sync import SyncSettings, WeightClient, WeightSender, check_versions


def qwen2_for_size(size_mb: int) -> dict:
    """A Qwen2 config whose float32 weights take roughly ``size_mb`` MB."""
    hidden = 1024
    per_layer = 4 * hidden * hidden + 3 * hidden * 2816  # attention + MLP, float32 params
    layers = max(1, int(size_mb * 1e6 / 4 / per_layer))
    return dict(vocab_size=32000, hidden_size=hidden, intermediate_size=2816, num_hidden_layers=layers,
                num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=512,
                tie_word_embeddings=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_weights(model_path: str, dtype: torch.dtype, device: str) -> list[tuple[str, torch.Tensor]]:
    """Fresh random weights with the served model's names and shapes (what a trainer would send)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    torch.manual_seed(1)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return [(n, p.detach()) for n, p in model.named_parameters()]


def run(transport: str, url: str, named, settings: SyncSettings, repeats: int, first: int) -> dict:
    """Time ``repeats`` syncs (after one untimed warm-up that also forms the group) and check each."""
    sender = WeightSender()
    gb = sum(t.numel() * t.element_size() for _, t in named) / 1e9
    times = []
    try:
        for i in range(repeats + 1):
            version = f"{transport}-{first + i}"
            t0 = time.perf_counter()
            sender.sync(iter(named), [url], version, settings)
            asyncio.run(check_versions([url], version))
            if i:
                times.append(time.perf_counter() - t0)
        name, tensor = named[-1]
        got = asyncio.run(_first_values(url, name))
        want = tensor.flatten()[:4].float().cpu().tolist()
        ok = all(abs(a - b) <= 1e-2 * max(1.0, abs(b)) for a, b in zip(got, want, strict=False))
    finally:
        sender.close()
    s = statistics.median(times)
    return {"transport": transport, "gb": round(gb, 3), "median_s": round(s, 3),
            "s_per_gb": round(s / gb, 3), "runs": [round(t, 3) for t in times], "values_match": ok}


async def _first_values(url: str, name: str) -> list[float]:
    async with WeightClient(url) as client:
        values = await client.get_weights_by_name(name, 4)
    while values and isinstance(values[0], list):
        values = values[0]
    return [float(v) for v in values][:4]


def cpu(args: argparse.Namespace) -> list[dict]:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from kuberl.worker.engine.launcher import EngineSpec, launch_engine

    work = Path(tempfile.mkdtemp(prefix="kuberl-wsbench-"))
    Qwen2ForCausalLM(Qwen2Config(**qwen2_for_size(args.size_mb))).save_pretrained(work / "model")
    spec = EngineSpec(model_path=str(work / "model"), port=free_port())
    proc = launch_engine(spec, log_path=str(work / "engine.log"))
    try:
        asyncio.run(proc.wait_ready(600))
        named = model_weights(str(work / "model"), torch.float32, "cpu")
        rows = [run("distributed (gloo)", spec.url, named, SyncSettings("distributed"), args.repeats, 0)]
        disk = SyncSettings("disk", disk_dir=str(work / "shared"), model_path=str(work / "model"))
        rows.append(run("disk", spec.url, named, disk, args.repeats, 100))
        return rows
    finally:
        proc.stop()


def gpu(args: argparse.Namespace) -> list[dict]:
    named = model_weights(args.model_path, torch.bfloat16, "cuda")
    rows = []
    if args.nccl_url:
        nccl = SyncSettings("distributed", engine_kind="sglang", backend="nccl", device="cuda",
                            master_address="127.0.0.1")
        rows.append(run("distributed (nccl)", args.nccl_url, named, nccl, args.repeats, 0))
    if args.ipc_url:
        rows.append(run("ipc (cuda ipc)", args.ipc_url, named,
                        SyncSettings("ipc", engine_kind="sglang"), args.repeats, 100))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=int, default=400, help="CPU: model size in float32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model-path", help="GPU: model folder the SGLang servers serve (config is enough)")
    p.add_argument("--nccl-url", help="GPU: SGLang server on another GPU than this process")
    p.add_argument("--ipc-url", help="GPU: SGLang server on this process's GPU")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    on_gpu = bool(args.nccl_url or args.ipc_url)
    rows = gpu(args) if on_gpu else cpu(args)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    where = torch.cuda.get_device_name(0) if on_gpu else f"{platform.machine()} CPU, load {load:.1f}"
    print(f"weight sync, {where}, torch {torch.__version__}, median of {args.repeats} after a warm-up")
    print(f"{'transport':22} {'GB':>7} {'s/sync':>8} {'s/GB':>8}  values match")
    for r in rows:
        print(f"{r['transport']:22} {r['gb']:7.3f} {r['median_s']:8.3f} {r['s_per_gb']:8.3f}  "
              f"{r['values_match']}")
    if args.json:
        args.json.write_text(json.dumps({"where": where, "rows": rows}, indent=2))
    if not all(r["values_match"] for r in rows):
        raise SystemExit("an engine does not serve the pushed values")


if __name__ == "__main__":
    main()
