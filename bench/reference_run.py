"""The reference workload's shape on one host: throughput, memory and step split per rollout (issue 17).

Loads the reference manifest (examples/glm4-9b-dapo-math.yaml: GLM-Z1-9B, 4 trainer GPUs at TP 2 x CP 2
with sequence parallel, 2 SGLang engines at TP 2, 32 prompts x 8 samples, 8k responses, 4608 tokens per
GPU), changes only what a throughput run without weights or data must change (each change is printed with
its reason), and runs it through the same ``worker/driver.py`` the RayJob runs, on a local Ray that holds
this host's GPUs and the pods' custom resources, so ``plan_placement`` gives the cluster's bundles.

Random weights, no download: the model folder has GLM4-9B's config.json, a small BPE tokenizer padded to
the model's vocabulary, and the random-init marker (kuberl.worker.random_init): trainer backends initialise
randomly, SGLang loads with ``--load-format dummy``, and the first weight sync makes both the same. Prompts
are synthetic DAPO-style maths questions. With random weights EOS is almost never sampled, so every
response runs to maxResponseLen: the rollout is the 8k worst case, and the numbers measure the system,
not learning.

Per rollout it prints (and writes to reference_run.json after every rollout, so a timeout keeps what ran):
rollout tokens/s (and per rollout GPU), train tokens/s per trainer GPU and MFU, NeMo-RL's step tokens/s per
GPU, weight-sync seconds, the step split into the driver's stages (time/*), and peak memory per role.

    python bench/reference_run.py --dry-run                       # CPU: overrides, placement plan, commands
    python bench/reference_run.py --engine embedded --cpu         # CPU smoke: 2 rollouts, tiny shape
    python3 bench/reference_run.py --scale 8gpu --out-dir $OUT    # hack/gpu/reference_8gpu.sh
    python3 bench/reference_run.py --scale 2gpu --out-dir $OUT    # hack/gpu/reference_2gpu.sh

MFU (bench/trainer_bench.py's formula, recompute not counted): FLOPs = 6*N*T + 6*L*d_attn*sum(s_i^2) with
N = non-embedding parameters + LM head, T = trained tokens (prompt + response), s_i = sample lengths;
MFU = FLOPs / time/train_s / (trainer GPUs x 989.4e12), the dense bf16 peak of an H100 SXM or H200.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import importlib.util
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = ROOT / "examples" / "glm4-9b-dapo-math.yaml"
PEAK_BF16 = 989.4e12  # dense bf16 FLOP/s of one H100 SXM / H200 (the seed names H100)
SCALES = ("8gpu", "2gpu", "tiny")

# GLM-4-9B-0414 / GLM-Z1-9B-0414 (Glm4ForCausalLM); the ids of the special tokens are our tokenizer's.
GLM4_9B = {
    "architectures": ["Glm4ForCausalLM"], "model_type": "glm4", "vocab_size": 151552,
    "hidden_size": 4096, "intermediate_size": 13696, "num_hidden_layers": 40,
    "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128, "partial_rotary_factor": 0.5,
    "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "attention_bias": True, "hidden_act": "silu",
    "max_position_embeddings": 32768, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "attention_dropout": 0.0, "initializer_range": 0.02,
}
TINY = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 512, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "float32",
}


def load_module(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_config(scale: str) -> dict[str, Any]:
    """The HF config.json of a scale: GLM4-9B (8gpu), Qwen2.5-1.5B (2gpu, hack/gpu/make_model.py's), tiny."""
    if scale == "8gpu":
        return dict(GLM4_9B)
    if scale == "2gpu":
        return dict(load_module("make_model", ROOT / "hack/gpu/make_model.py").QWEN25_1P5B)
    return dict(TINY)


# ---- the manifest a throughput run needs ---------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    """One field the throughput run changes, and why (printed, and kept in the JSON)."""

    field: str
    old: Any
    new: Any
    why: str


@dataclass(frozen=True)
class RunOptions:
    scale: str = "8gpu"
    rollouts: int = 2
    model_dir: str = "/tmp/kuberl-reference/model"
    prompt_data: str = "/tmp/kuberl-reference/prompts.jsonl"
    engine: str = "sglang"  # or embedded (CPU)
    trainer: str = "megatron"  # or torch
    device: str = "cuda"
    cuda_graph: bool = True
    context_parallel: int | None = None  # None: the manifest's
    max_response_len: int | None = None  # None: the manifest's (8192)
    mem_fraction: float | None = None  # None: the manifest's (0.8)


def _set(spec: dict[str, Any], path: str, value: Any, why: str, changes: list[Change]) -> None:
    """Set ``spec.<path>`` (dotted, camelCase) and record the change when the value differs."""
    keys = path.split(".")
    node = spec
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    old = node.get(keys[-1])
    if old != value:
        node[keys[-1]] = value
        changes.append(Change(f"spec.{path}", old, value, why))


def throughput_manifest(base: dict[str, Any], opts: RunOptions) -> tuple[dict[str, Any], list[Change]]:
    """Pure: the reference manifest with only the throughput run's changes, and the list of them."""
    manifest = copy.deepcopy(base)
    spec = manifest["spec"]
    changes: list[Change] = []
    _set(spec, "model.hfCheckpoint", opts.model_dir,
         "no weights can be downloaded: config.json of the shape + tokenizer + random-init marker", changes)
    if opts.scale != "8gpu":
        _set(spec, "model.architecture", "auto", f"{opts.scale}: not GLM4-9B, the shape comes from config.json",
             changes)
        if spec["model"].get("overrides"):
            _set(spec, "model.overrides", {}, f"{opts.scale}: GLM4-9B's overrides do not apply", changes)
    if spec.get("checkpoint"):
        changes.append(Change("spec.checkpoint", spec["checkpoint"], {},
                              "random weights: nothing to load, and saving 9B + optimizer is not a step"))
        spec["checkpoint"] = {}
    _set(spec, "rollout.promptData", opts.prompt_data,
         "synthetic DAPO-style prompts (the dataset is not downloadable here)", changes)
    _set(spec, "rollout.numRollout", opts.rollouts, "a short throughput run", changes)
    if spec.get("eval"):
        changes.append(Change("spec.eval", spec["eval"], None,
                              "eval (16 x 16k-token samples per AIME prompt, at rollout 0 and every 5) is not "
                              "part of the training step being measured"))
        del spec["eval"]
    if opts.max_response_len is not None:
        _set(spec, "rollout.maxResponseLen", opts.max_response_len, "asked for (--max-response-len)", changes)
    _set(spec, "sglang.serverArgs.loadFormat", "dummy", "random engine weights (SGLang's dummy loader)",
         changes)
    if opts.mem_fraction is not None:
        _set(spec, "sglang.serverArgs.memFractionStatic", opts.mem_fraction, "asked for (--mem-fraction)",
             changes)
    if opts.engine == "sglang":
        why = "the device machine's SGLang site (hack/gpu, .gpu-sglang/start-servers.sh: known-good flags)"
        for key, value in (("dtype", "bfloat16"), ("attentionBackend", "triton"),
                           ("samplingBackend", "pytorch"), ("grammarBackend", "none")):
            _set(spec, f"sglang.serverArgs.{key}", value, why, changes)
        if not opts.cuda_graph:
            _set(spec, "sglang.serverArgs.disableCudaGraph", True, "asked for (--no-cuda-graph)", changes)
    local = "a local run picks torch/embedded for auto: name the production backends"
    _set(spec, "backends.trainer", opts.trainer, local, changes)
    _set(spec, "backends.rollout", opts.engine, local, changes)
    _set(spec, "backends.device", opts.device, local, changes)
    if opts.scale in ("2gpu", "tiny"):
        why = f"{opts.scale}: trainer on 1 GPU, one engine on 1 GPU"
        _set(spec, "placement.actorNumNodes", 1, why, changes)
        _set(spec, "placement.actorNumGpusPerNode", 1, why, changes)
        _set(spec, "placement.rolloutNumGpus", 1, why, changes)
        _set(spec, "placement.colocate", False, why, changes)
        _set(spec, "sglang.gpusPerEngine", 1, why, changes)
        for key in ("tensorModelParallelSize", "contextParallelSize", "pipelineModelParallelSize"):
            _set(spec, f"perf.{key}", 1, why, changes)
        _set(spec, "perf.sequenceParallel", False, why, changes)
    if opts.scale == "tiny":
        why = "tiny CPU smoke shape"
        _set(spec, "rollout.batchSize", 4, why, changes)
        _set(spec, "rollout.nSamplesPerPrompt", 4, why, changes)
        _set(spec, "rollout.maxResponseLen", opts.max_response_len or 16, why, changes)
    if opts.context_parallel is not None:
        _set(spec, "perf.contextParallelSize", opts.context_parallel,
             "the Megatron backend refuses contextParallelSize > 1 today (--context-parallel)", changes)
    return manifest, changes


# ---- what will run where -----------------------------------------------------------------------------
def placement_summary(config: Any) -> dict[str, Any]:
    """Pure: plan_placement's bundles for GPUs, and the trainer's Megatron layout, of a resolved config."""
    from kuberl.worker.placement import plan_placement

    plan = plan_placement(config, use_gpus=True)
    tp, cp, pp = (config.tensor_model_parallel_size, config.context_parallel_size,
                  config.pipeline_model_parallel_size)
    trainer_gpus = int(sum(b.get("GPU", 0) for b in plan.trainer_bundles))
    rollout_gpus = 0 if plan.colocate else int(sum(b.get("GPU", 0) for b in plan.rollout_bundles))
    return {
        "trainer_bundles": plan.trainer_bundles, "rollout_bundles": plan.rollout_bundles,
        "trainer_ranks": plan.num_trainer_ranks, "trainer_gpus": trainer_gpus,
        "tp": tp, "cp": cp, "pp": pp, "dp": max(1, trainer_gpus // (tp * cp * pp)),
        "sequence_parallel": bool(config.sequence_parallel and tp > 1),
        "engines": plan.num_engines, "engine_tp": config.gpus_per_engine, "rollout_gpus": rollout_gpus,
        "total_gpus": trainer_gpus + rollout_gpus, "colocate": plan.colocate,
        "trainer_backend": config.trainer_backend, "rollout_engine": config.rollout_engine,
    }


def preflight(config: Any) -> list[str]:
    """What the trainer backend would refuse, found before anything starts (empty: fine)."""
    from kuberl.errors import SpecError

    try:
        if config.trainer_backend == "megatron":
            from kuberl.worker.train.megatron_model import Parallelism

            Parallelism(tp=config.tensor_model_parallel_size, pp=config.pipeline_model_parallel_size,
                        cp=config.context_parallel_size,
                        sequence_parallel=config.sequence_parallel).check(config.actor_num_gpus)
        else:
            from kuberl.worker.train.torch_backend import check_data_parallel_only

            check_data_parallel_only(config)
    except SpecError as exc:
        return list(exc.problems)
    return []


def resolve_manifest(manifest: dict[str, Any]) -> Any:
    from kuberl.api.job import parse_job
    from kuberl.api.resolve import resolve

    return resolve(parse_job(manifest, "reference_run"), in_cluster=False)


def plan_lines(opts: RunOptions, changes: list[Change], summary: dict[str, Any], config: Any,
               problems: list[str], manifest_path: Path) -> list[str]:
    """The dry-run's report: changes, what is kept, the placement, the preflight verdict."""
    s = summary
    lines = [f"manifest {manifest_path} at scale {opts.scale}; changes for a throughput run:"]
    lines += [f"  {c.field}: {json.dumps(c.old, default=str)} -> {json.dumps(c.new, default=str)}  ({c.why})"
              for c in changes]
    lines.append(
        f"kept: {config.rollout_batch_size} prompts x {config.n_samples_per_prompt} samples, maxResponseLen "
        f"{config.max_response_len}, temperature {config.sampling['temperature']}, dynamic batch "
        f"{config.use_dynamic_batch_size} at {config.max_tokens_per_gpu} tokens/GPU, recompute "
        f"{config.recompute}, {config.algorithm['advantage_estimator']} eps {config.algorithm['eps_clip']}/"
        f"{config.algorithm['eps_clip_high']}, adam lr {config.optimizer['lr']}, rm {config.rm_type}, "
        f"dynamic sampling {'on' if config.dynamic_sampling_filter_path else 'off (as the manifest)'}")
    where = " (this CPU run gets one CPU bundle per rank and engine)" if opts.device == "cpu" else ""
    lines.append(f"placement (plan_placement, GPU bundles){where}:")
    lines.append(f"  trainer: {s['trainer_ranks']} ranks on {s['trainer_gpus']} GPUs, {s['trainer_backend']}: "
                 f"TP {s['tp']} x CP {s['cp']} x PP {s['pp']} -> DP {s['dp']}, sequence parallel "
                 f"{'on' if s['sequence_parallel'] else 'off'}; bundle {s['trainer_bundles'][0]}")
    lines.append(f"  rollout: {s['engines']} {s['rollout_engine']} engine(s) x TP {s['engine_tp']} on "
                 f"{s['rollout_gpus']} GPUs; bundle {s['rollout_bundles'][0]}")
    lines.append(f"  total: {s['total_gpus']} GPUs{' (colocated)' if s['colocate'] else ''}")
    if problems:
        lines.append("preflight: the trainer backend would refuse this layout:")
        lines += [f"  {p}" for p in problems]
        lines.append("  (--context-parallel 1 runs TP 2 x DP 2 on the same 4 GPUs, labelled as a deviation)")
    else:
        lines.append("preflight: ok")
    return lines


def commands(scale: str) -> list[str]:
    script = {"8gpu": "hack/gpu/reference_8gpu.sh", "2gpu": "hack/gpu/reference_2gpu.sh"}.get(scale)
    out = []
    if script:
        out.append(f"device: bash {script}   (see its header for the carry lists and the two calls)")
    out.append(f"python3 bench/reference_run.py --scale {scale} --rollouts 2 --out-dir $OUT")
    return out


# ---- model folder and prompts ------------------------------------------------------------------------
def build_model_dir(model_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Write config.json, a BPE tokenizer padded to the config's vocabulary, and the random-init marker.

    The tokenizer is kuberl.worker.tiny_model's (words, digits, LaTeX) with filler tokens ``<f123>`` up to
    ``vocab_size``, so every id the model can sample decodes (SGLang's detokenizer, the grader).
    """
    from kuberl.worker.random_init import write_random_init_marker
    from kuberl.worker.tiny_model import build_tokenizer

    model_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(model_dir)
    path = model_dir / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    for i in range(len(vocab), int(config["vocab_size"])):
        vocab[f"<f{i}>"] = i
    path.write_text(json.dumps(data))
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    config = {**config, "bos_token_id": None, "eos_token_id": eos, "pad_token_id": pad}
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": eos, "pad_token_id": pad}))
    for stale in ("model.safetensors", "model.safetensors.index.json"):
        (model_dir / stale).unlink(missing_ok=True)
    write_random_init_marker(model_dir, "bench/reference_run.py: throughput run with random weights")
    return config


def write_prompts(path: Path, model_dir: Path, n: int, seed: int = 0,
                  length: tuple[int, int] = (100, 300)) -> list[int]:
    """DAPO-style maths prompts (chat messages + integer label) of ``length`` tokens; returns the lengths."""
    from transformers import AutoTokenizer

    from kuberl.worker.tiny_model import _WORDS

    tok = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(seed)
    lengths = []
    with path.open("w") as f:
        for _ in range(n):
            target = rng.randint(*length)
            a, b = rng.randint(2, 999), rng.randint(2, 99)
            head = "Solve the problem below and give the final answer on the last line as Answer: <number>.\n\n"
            body = f"Let {a} and {b} be integers."
            while len(tok.encode(head + body, add_special_tokens=False)) < target:
                body += " " + " ".join(rng.choice(_WORDS) for _ in range(6)) + f" {rng.randint(0, 999)}"
            lengths.append(len(tok.encode(head + body, add_special_tokens=False)))
            row = {"prompt": [{"role": "user", "content": head + body}], "label": str(a + b)}
            f.write(json.dumps(row) + "\n")
    return lengths


# ---- measurements ------------------------------------------------------------------------------------
def step_flops(config: dict[str, Any], lengths: list[int]) -> float:
    """bench/trainer_bench.py's FLOPs of one train step over samples of ``lengths`` tokens."""
    bench = load_module("trainer_bench", ROOT / "bench/trainer_bench.py")
    cfg = SimpleNamespace(**{k: config[k] for k in (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "intermediate_size", "vocab_size")})
    return float(bench.step_flops(cfg, lengths))


def engine_memory_gb(server_info: dict[str, Any]) -> tuple[float | None, dict[str, Any]]:
    """Pure: GB an SGLang engine holds per GPU (weights + KV cache + CUDA graphs) from ``/server_info``.

    SGLang reports ``internal_states[i].memory_usage`` = {weight, kvcache, graph|cuda_graph (GB),
    token_capacity}; the embedded engine reports none (None).
    """
    states = server_info.get("internal_states") or []
    usage = states[0].get("memory_usage") if states and isinstance(states[0], dict) else None
    if not isinstance(usage, dict):
        return None, {}
    gb = sum(float(usage[k]) for k in ("weight", "kvcache", "graph", "cuda_graph")
             if isinstance(usage.get(k), int | float))
    return gb, usage


async def engines_memory(urls: list[str]) -> list[dict[str, Any]]:
    from kuberl.worker.rollout.engine_client import EngineClient

    async def one(url: str) -> dict[str, Any]:
        async with EngineClient(url) as client:
            gb, usage = engine_memory_gb(await client.server_info())
        return {"url": url, "gb_per_gpu": gb, "memory_usage": usage}

    return list(await asyncio.gather(*(one(u) for u in urls)))


def measure_row(rollout_id: int, metrics: dict[str, float], lengths: list[int], flops: float | None,
                layout: dict[str, Any], trainer_mem: list[dict[str, Any]],
                engine_mem: list[dict[str, Any]]) -> dict[str, Any]:
    """Pure: one rollout's table row from the driver's metrics and what the hooks saw."""
    m = metrics
    train_s = m.get("time/train_s", 0.0)
    step_s = m.get("time/step_s", 0.0)
    stages = {k: m.get(f"time/{k}_s", 0.0)
              for k in ("rollout", "logprob", "train", "weight_sync", "checkpoint", "eval")}
    tokens = sum(lengths)
    trainer_gpus, rollout_gpus = layout["trainer_gpus"], layout["rollout_gpus"]
    tps = m.get("perf/rollout_tokens_per_s", 0.0)
    engine_gb = [e["gb_per_gpu"] for e in engine_mem if e.get("gb_per_gpu") is not None]
    return {
        "rollout_id": rollout_id,
        "samples": int(m.get("rollout/samples", len(lengths))),
        "response_len_mean": m.get("rollout/response_len_mean", 0.0),
        "truncated_ratio": m.get("rollout/truncated_ratio", 0.0),
        "generated_tokens": int(m.get("rollout/generated_tokens", 0)),
        "rollout_tokens_per_s": tps,
        "rollout_tokens_per_s_per_gpu": tps / max(1, rollout_gpus),
        "train_tokens": tokens,
        "train_tokens_per_s_per_gpu": tokens / train_s / trainer_gpus if train_s > 0 else 0.0,
        "mfu": flops / train_s / (trainer_gpus * PEAK_BF16) if flops and train_s > 0 else None,
        "step_tokens_per_s_per_gpu": tokens / step_s / layout["total_gpus"] if step_s > 0 else 0.0,
        "weight_sync_s": stages["weight_sync"],
        "stages_s": stages,
        "other_s": max(0.0, step_s - sum(stages.values())),
        "step_s": step_s,
        "trainer_peak_gb": max((r["max_allocated_gb"] for r in trainer_mem), default=None),
        "trainer_reserved_gb": max((r["max_reserved_gb"] for r in trainer_mem), default=None),
        "trainer_memory_kind": trainer_mem[0]["kind"] if trainer_mem else None,
        "engine_gb_per_gpu": max(engine_gb) if engine_gb else None,
        "trainer_memory": trainer_mem, "engine_memory": engine_mem,
        "metrics": dict(metrics),
    }


COLUMNS = ("rollout", "samples", "resp len", "gen tokens", "rollout tok/s", "rollout tok/s/GPU",
           "train tok/s/GPU", "MFU", "step tok/s/GPU", "sync s", "rollout s", "logprob s", "train s",
           "other s", "step s", "trainer peak GB", "engine GB/GPU")


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    """The per-rollout table (markdown); '-' where a figure does not exist (MFU on CPU, embedded memory)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        st = r["stages_s"]
        cells = [str(r["rollout_id"]), str(r["samples"]), f"{r['response_len_mean']:.0f}",
                 str(r["generated_tokens"]), f"{r['rollout_tokens_per_s']:.0f}",
                 f"{r['rollout_tokens_per_s_per_gpu']:.0f}", f"{r['train_tokens_per_s_per_gpu']:.0f}",
                 "-" if r["mfu"] is None else f"{r['mfu']:.1%}", f"{r['step_tokens_per_s_per_gpu']:.0f}",
                 f"{r['weight_sync_s']:.2f}", f"{st['rollout']:.1f}", f"{st['logprob']:.1f}",
                 f"{st['train']:.1f}", f"{r['other_s']:.1f}", f"{r['step_s']:.1f}",
                 _fmt(r["trainer_peak_gb"], ".1f"), _fmt(r["engine_gb_per_gpu"], ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Pure: means over the rollouts after the first (warm-up: kernel compilation, first allocations)."""
    steady = rows[1:] or rows

    def mean(key: str) -> float | None:
        values = [r[key] for r in steady if r.get(key) is not None]
        return statistics.fmean(values) if values else None

    return {"rollouts": len(rows), "steady_rollouts": len(steady),
            **{k: mean(k) for k in ("step_s", "rollout_tokens_per_s", "rollout_tokens_per_s_per_gpu",
                                    "train_tokens_per_s_per_gpu", "mfu", "step_tokens_per_s_per_gpu",
                                    "weight_sync_s")},
            "trainer_peak_gb": max((r["trainer_peak_gb"] for r in rows if r["trainer_peak_gb"] is not None),
                                   default=None),
            "engine_gb_per_gpu": max((r["engine_gb_per_gpu"] for r in rows
                                      if r["engine_gb_per_gpu"] is not None), default=None)}


# ---- the run -----------------------------------------------------------------------------------------
def make_driver(job: Any, options: Any, on_row: Any, layout: dict[str, Any],
                shape: dict[str, Any], count_flops: bool) -> Any:
    """The real Driver, plus hooks that keep each rollout's sample lengths and read memory per role."""
    from kuberl.worker.driver import Driver

    class MeasuredDriver(Driver):
        rows: list[dict[str, Any]]
        _lengths: list[int]

        def _train(self, groups: list[list[Any]]) -> dict[str, float]:
            self._lengths = [len(s.tokens) for g in groups for s in g]
            return super()._train(groups)

        def _report(self, rollout_id: int, end: int, metrics: dict[str, float],
                    saved: str | None) -> None:
            if not hasattr(self, "rows"):
                self.rows = []
            if "progress/weight_version" in metrics:  # a training step
                lengths = getattr(self, "_lengths", [])
                flops = step_flops(shape, lengths) if count_flops and lengths else None
                trainer_mem = self.trainer.memory_stats(True)
                engine_mem = asyncio.run(engines_memory(self.engine_urls))
                row = measure_row(rollout_id, metrics, lengths, flops, layout, trainer_mem, engine_mem)
                self.rows.append(row)
                on_row(row, self.rows)
            super()._report(rollout_id, end, metrics, saved)

    return MeasuredDriver(job, options)


def start_local_ray(layout: dict[str, Any]) -> None:
    """A loopback Ray holding this host's GPUs and the pods' custom resources, so the driver's GPU bundles
    (plan_placement) fit as they would on the RayJob's pods."""
    import torch

    from kuberl.errors import KuberlError
    from kuberl.ray_resources import ROLLOUT_RESOURCE, TRAINER_RESOURCE
    from kuberl.worker.local_ray import init_local_ray, prepare_local_ray

    have = torch.cuda.device_count()
    if have < layout["total_gpus"]:
        raise KuberlError(f"this layout needs {layout['total_gpus']} GPUs, the host has {have}; "
                          "use --scale 2gpu, or a machine with more GPUs")
    prepare_local_ray()
    init_local_ray(num_cpus=max(8, os.cpu_count() or 8), num_gpus=layout["total_gpus"],
             resources={TRAINER_RESOURCE: float(layout["trainer_gpus"]),
                        ROLLOUT_RESOURCE: float(max(layout["rollout_gpus"], 0.01))},
             include_dashboard=False, log_to_driver=True, configure_logging=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    p.add_argument("--scale", choices=SCALES, default="8gpu")
    p.add_argument("--cpu", action="store_true", help="tiny shape on CPU (torch trainer, embedded engine)")
    p.add_argument("--engine", choices=["sglang", "embedded"], default=None)
    p.add_argument("--trainer", choices=["megatron", "torch"], default=None)
    p.add_argument("--rollouts", type=int, default=2)
    p.add_argument("--dry-run", action="store_true", help="print the plan and the commands; start nothing")
    p.add_argument("--context-parallel", type=int, default=None,
                   help="override spec.perf.contextParallelSize (a labelled deviation)")
    p.add_argument("--cp-fallback", action="store_true",
                   help="if the trainer backend refuses the manifest's CP, run with CP 1 (labelled)")
    p.add_argument("--max-response-len", type=int, default=None, help="override (a labelled deviation)")
    p.add_argument("--mem-fraction", type=float, default=None, help="SGLang memFractionStatic override")
    p.add_argument("--no-cuda-graph", action="store_true")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--out-dir", type=Path, default=None, help="writes reference_run.json there")
    args = p.parse_args(argv)
    if args.cpu:
        args.scale = "tiny"
    if args.scale == "tiny":
        args.cpu = True
    args.engine = args.engine or ("embedded" if args.cpu else "sglang")
    args.trainer = args.trainer or ("torch" if args.cpu else "megatron")
    return args


def run_options(args: argparse.Namespace, workdir: Path) -> RunOptions:
    return RunOptions(
        scale=args.scale, rollouts=args.rollouts, model_dir=str(workdir / "model"),
        prompt_data=str(workdir / "prompts.jsonl"), engine=args.engine, trainer=args.trainer,
        device="cpu" if args.cpu else "cuda", cuda_graph=not args.no_cuda_graph,
        context_parallel=args.context_parallel, max_response_len=args.max_response_len,
        mem_fraction=args.mem_fraction,
    )


def prepare(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], list[Change], Any, list[str]]:
    """Manifest, changes, resolved config and preflight problems (with ``--cp-fallback`` applied)."""
    import yaml

    base = yaml.safe_load(args.manifest.read_text())
    opts = run_options(args, workdir)
    manifest, changes = throughput_manifest(base, opts)
    config = resolve_manifest(manifest)
    problems = preflight(config)
    if problems and args.cp_fallback and config.context_parallel_size > 1 and args.context_parallel is None:
        opts = RunOptions(**{**asdict(opts), "context_parallel": 1})
        manifest, changes = throughput_manifest(base, opts)
        config = resolve_manifest(manifest)
        problems = preflight(config)
    return manifest, changes, config, problems


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    tmp = None
    if args.workdir is None:
        if args.dry_run:
            args.workdir = Path("/tmp/kuberl-reference")
        else:
            tmp = tempfile.TemporaryDirectory(prefix="kuberl-reference-")
            args.workdir = Path(tmp.name)
    workdir: Path = args.workdir
    manifest, changes, config, problems = prepare(args, workdir)
    layout = placement_summary(config)
    header = plan_lines(run_options(args, workdir), changes, layout, config, problems, args.manifest)
    print("\n".join(header), flush=True)
    out: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "layout": layout,
                           "changes": [asdict(c) for c in changes], "preflight": problems,
                           "manifest": manifest, "rows": []}
    if args.dry_run:
        print("commands:\n" + "\n".join(f"  {c}" for c in commands(args.scale)), flush=True)
        out["commands"] = commands(args.scale)
        return out
    if problems:
        from kuberl.errors import SpecError

        raise SpecError(problems, f"{args.manifest} (add --cp-fallback or --context-parallel 1)")
    t0 = time.perf_counter()
    shape = build_model_dir(workdir / "model", model_config(args.scale))
    prompt_lengths = write_prompts(workdir / "prompts.jsonl", workdir / "model",
                                   config.rollout_batch_size * (args.rollouts + 2))
    out["prompt_tokens"] = {"mean": statistics.fmean(prompt_lengths), "min": min(prompt_lengths),
                            "max": max(prompt_lengths)}
    out["model"] = {k: shape[k] for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")}
    if not args.cpu:
        from kuberl.worker.train.megatron_model import transformer_engine_available

        out["transformer_engine"] = transformer_engine_available()
        print(f"Transformer Engine: {'yes' if out['transformer_engine'] else 'no'} (without it the Megatron "
              "backend runs sequence parallel off)", flush=True)
    (workdir / "job.json").write_text(json.dumps(manifest, indent=2))

    from kuberl.api.job import parse_job
    from kuberl.worker.driver import DriverOptions

    def on_row(row: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        print(f"rollout {row['rollout_id']}: step {row['step_s']:.1f} s, rollout "
              f"{row['rollout_tokens_per_s']:.0f} tok/s, train {row['train_tokens_per_s_per_gpu']:.0f} "
              f"tok/s/GPU, sync {row['weight_sync_s']:.2f} s", flush=True)
        out["rows"] = rows
        out["summary"] = summarize(rows)
        if args.out_dir:
            args.out_dir.mkdir(parents=True, exist_ok=True)
            (args.out_dir / "reference_run.json").write_text(json.dumps(out, indent=2, default=str))

    if not args.cpu:
        start_local_ray(layout)
    job = parse_job(manifest, str(workdir / "job.json"))
    options = DriverOptions(in_cluster=False, run_dir=workdir / "run", progress_bar=False,
                            use_gpus=not args.cpu)
    driver = make_driver(job, options, on_row, layout, shape, count_flops=not args.cpu)
    try:
        driver.start()
        print(f"engines {driver.engine_urls} and {driver.trainer.world_size} trainer rank(s) ready after "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        driver.run()
    finally:
        driver.stop()
        import ray

        ray.shutdown()
    rows = getattr(driver, "rows", [])
    out["rows"] = rows
    out["summary"] = summarize(rows)
    out["wall_s"] = time.perf_counter() - t0
    print(f"{args.scale}: {shape['model_type']} hidden {shape['hidden_size']} x {shape['num_hidden_layers']} "
          f"layers (random weights); prompts {out['prompt_tokens']['mean']:.0f} tokens on average; "
          f"machine {os.uname().nodename}")
    print(table(rows), flush=True)
    print("summary (rollouts after the first): " + json.dumps(out["summary"], default=str), flush=True)
    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "reference_run.json").write_text(json.dumps(out, indent=2, default=str))
    if tmp is not None:
        tmp.cleanup()
    return out


if __name__ == "__main__":
    result = main()
    sys.exit(0 if result.get("commands") or result["rows"] else 1)
