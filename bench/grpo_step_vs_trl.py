"""GRPO step time: kuberl's local pipeline vs Hugging Face TRL's ``GRPOTrainer``, same model and batch.

Both sides train the tiny GLM4 of ``examples/tiny`` (random init, word-level tokenizer, last-letter task,
``f1`` reward) on the same prompts with the same batch (``--prompts`` x ``--samples`` completions), the
same max completion length, temperature, optimizer and clip settings, on CPU. Each side runs in its own
process, one after the other; the first ``--warmup`` steps are dropped and the rest are averaged.

What one step includes:
  kuberl  ``time/step_s`` of the real driver (``kuberl train``'s code path, started in-process): generation
          through the embedded engine over HTTP (one request per sample, continuous batching), rewards in
          the grading process pool, the old-logprob pass, advantages, the train step (dynamic batch size,
          packed micro-batches) and the weight sync to the engine. Ray, engine and model start-up are not
          in it; evaluation and checkpoints are off.
  TRL     one ``GRPOTrainer`` optimizer step, timed by a callback from ``on_step_begin`` to
          ``on_step_end``: ``model.generate`` on the whole batch, the reward function (in-process), the
          loss forward/backward and the optimizer step (split as generate+score and the update). With
          ``num_iterations=1`` TRL skips the separate old-logprob pass (it uses the detached current
          logprobs); there is no weight sync (one model).

    .venv/bin/python bench/grpo_step_vs_trl.py [--steps 5] [--warmup 1] [--max-completion-length 3]

Top-level imports stay light on purpose: the grading pool spawns children that import this module.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _load_prepare() -> Any:
    """examples/tiny/prepare.py as a module (the example folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_prepare", ROOT / "examples/tiny/prepare.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _build(build: Path, args: argparse.Namespace) -> None:
    """The example's data, and its model or (``--hidden-size``) a wider GLM4 with a BPE tokenizer."""
    prepare = _load_prepare()
    if args.hidden_size is None:
        prepare.prepare(build, seed=0)
        return
    from kuberl.worker.tiny_model import build_tiny_model

    build_tiny_model(build / "model", "glm4", seed=0, hidden_size=args.hidden_size,
                     num_layers=args.layers)
    prepare.build_data(build, seed=0)


def _job_manifest(build: Path, args: argparse.Namespace) -> dict[str, Any]:
    """examples/tiny/job.yaml pointed at ``build``, sized by the benchmark's arguments."""
    import yaml

    job = yaml.safe_load((ROOT / "examples/tiny/job.yaml").read_text())
    spec = job["spec"]
    spec["model"]["hfCheckpoint"] = str(build / "model")
    spec.pop("eval", None)  # eval and checkpoints are not part of a training step
    spec["checkpoint"] = {}
    spec["rollout"].update(
        promptData=str(build / "train.jsonl"), numRollout=args.warmup + args.steps,
        batchSize=args.prompts, nSamplesPerPrompt=args.samples,
        maxResponseLen=args.max_completion_length, temperature=args.temperature,
    )
    if args.max_tokens_per_gpu:
        spec["perf"]["maxTokensPerGpu"] = args.max_tokens_per_gpu
    return job


def run_ours(build: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Per-step seconds of the real driver and the stage breakdown of the measured steps."""
    from kuberl.api import parse_job
    from kuberl.worker.driver import DriverOptions, run_job

    job = parse_job(_job_manifest(build, args))
    run_dir = Path(tempfile.mkdtemp(prefix="kuberl-bench-grpo-"))
    history = run_job(job, DriverOptions(run_dir=run_dir, progress_bar=False))
    measured = history[args.warmup:]
    stages = {k: statistics.fmean(h.get(k, 0.0) for h in measured)
              for k in ("time/rollout_s", "time/logprob_s", "time/train_s", "time/weight_sync_s")}
    return {
        "step_s": [h["time/step_s"] for h in measured],
        "stages": stages,
        "reward": [h["rollout/reward_mean"] for h in history],
        "response_len": statistics.fmean(h["rollout/response_len_mean"] for h in measured),
    }


def run_trl(build: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Per-step seconds of TRL's GRPOTrainer on the same model, data and batch."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from kuberl.worker.rewards.f1 import grade

    torch.set_num_threads(args.trl_threads)
    torch.manual_seed(0)
    rows = [json.loads(line) for line in (build / "train.jsonl").read_text().splitlines()]

    def f1_reward(prompts: list, completions: list, label: list[str], **_: Any) -> list[float]:
        """The job's rmType f1, applied to TRL's decoded completions (chat format: one message)."""
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [grade(t, lab) for t, lab in zip(texts, label, strict=True)]

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = 0.0
            self.seconds: list[float] = []

        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            self.seconds.append(time.perf_counter() - self.t0)

    # Same knobs as examples/tiny/job.yaml: AdamW lr 2e-3, beta2 0.98, no weight decay, clip 0.2/0.28,
    # no KL (beta 0, so no reference model), one optimizer step per generated batch.
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="kuberl-bench-trl-"),
        per_device_train_batch_size=args.prompts * args.samples,
        gradient_accumulation_steps=1,
        num_generations=args.samples,
        max_completion_length=args.max_completion_length,
        temperature=args.temperature,
        learning_rate=2e-3, adam_beta2=0.98, weight_decay=0.0,
        lr_scheduler_type="constant", warmup_steps=0,
        epsilon=0.2, epsilon_high=0.28, beta=0.0, num_iterations=1,
        max_steps=args.warmup + args.steps,
        use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )
    generate_s: list[float] = []

    class TimedGRPOTrainer(GRPOTrainer):
        """Notes the seconds spent generating and scoring (the rest of a step is the update)."""

        def _generate_and_score_completions(self, *a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(*a, **kw)
            generate_s.append(time.perf_counter() - t0)
            return out

    timer = StepTimer()
    model_dir = build / "model"
    trainer = TimedGRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        reward_funcs=f1_reward,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        callbacks=[timer],
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    generate = statistics.fmean(generate_s[args.warmup:])
    return {
        "step_s": timer.seconds[args.warmup:],
        "stages": {"time/generate+score_s": generate,
                   "time/update_s": statistics.fmean(timer.seconds[args.warmup:]) - generate},
        "reward": [h["reward"] for h in logs],
        "response_len": statistics.fmean(h["completions/mean_length"] for h in logs[args.warmup:]),
    }


def _run_side(side: str, build: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run one side in a fresh interpreter so neither inherits the other's threads, Ray or memory."""
    out = Path(tempfile.mkstemp(prefix=f"kuberl-bench-{side}-", suffix=".json")[1])
    argv = [sys.executable, __file__, "--side", side, "--build", str(build), "--result", str(out),
            *_forwarded(args)]
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL if not args.verbose else None,
                   stderr=subprocess.DEVNULL if not args.verbose else None)
    result = json.loads(out.read_text())
    result["process_s"] = time.perf_counter() - t0
    out.unlink()
    return result


def _forwarded(args: argparse.Namespace) -> list[str]:
    return ["--steps", str(args.steps), "--warmup", str(args.warmup), "--prompts", str(args.prompts),
            "--samples", str(args.samples), "--max-completion-length", str(args.max_completion_length),
            "--temperature", str(args.temperature), "--trl-threads", str(args.trl_threads)] + (
            ["--hidden-size", str(args.hidden_size), "--layers", str(args.layers)]
            if args.hidden_size else []) + (
            ["--max-tokens-per-gpu", str(args.max_tokens_per_gpu)] if args.max_tokens_per_gpu else [])


def _summary(step_s: list[float]) -> str:
    return (f"{statistics.fmean(step_s):7.3f} {statistics.median(step_s):7.3f} "
            f"{min(step_s):7.3f} {max(step_s):7.3f}")


def _report(args: argparse.Namespace, ours: dict[str, Any], trl: dict[str, Any],
            load: tuple[float, float]) -> None:
    import torch
    import transformers
    import trl as trl_pkg

    model = ("tiny GLM4 of examples/tiny (hidden 64, 2 layers)" if args.hidden_size is None else
             f"GLM4 from tiny_model (hidden {args.hidden_size}, {args.layers} layers)")
    print(f"workload: {model}, last-letter task, {args.prompts} prompts x {args.samples} samples, "
          f"max completion {args.max_completion_length} tokens, temperature {args.temperature}, CPU")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.1f} before / "
          f"{load[1]:.1f} after; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"trl {trl_pkg.__version__}; TRL torch threads {args.trl_threads}")
    budget = args.max_tokens_per_gpu or 4096
    print(f"steps: {args.warmup} warm-up dropped, {args.steps} measured per side; kuberl packs "
          f"micro-batches of <= {budget} tokens, TRL trains the batch as one micro-batch")
    print()
    print(f"{'side':<8} {'mean s':>7} {'median':>7} {'min':>7} {'max':>7} {'resp len':>9}")
    print(f"{'kuberl':<8} {_summary(ours['step_s'])} {ours['response_len']:9.2f}")
    print(f"{'TRL':<8} {_summary(trl['step_s'])} {trl['response_len']:9.2f}")
    print()
    for name, side in (("kuberl", ours), ("TRL", trl)):
        stages = ", ".join(f"{k.split('/')[1][:-2]} {v:.3f}" for k, v in side["stages"].items())
        print(f"{name} stages (mean s): {stages}")
    ratio = statistics.fmean(ours["step_s"]) / statistics.fmean(trl["step_s"])
    print(f"ratio kuberl/TRL (mean step time): {ratio:.2f}  (target <= 0.50: "
          f"{'met' if ratio <= 0.5 else 'not met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="measured steps per side")
    parser.add_argument("--warmup", type=int, default=1, help="steps dropped before measuring")
    parser.add_argument("--prompts", type=int, default=32, help="prompts per step (rollout batch)")
    parser.add_argument("--samples", type=int, default=8, help="samples per prompt (GRPO group)")
    parser.add_argument("--max-completion-length", type=int, default=3,
                        help="max new tokens per completion (examples/tiny uses 3; the model's "
                             "context is 64 tokens, so at most about 56)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--trl-threads", type=int, default=1,
                        help="torch threads in the TRL process (kuberl's Ray actors get 1 each)")
    parser.add_argument("--max-tokens-per-gpu", type=int, default=None,
                        help="kuberl's micro-batch token budget (default: examples/tiny's 4096); TRL "
                             "always trains the whole batch as one micro-batch")
    parser.add_argument("--hidden-size", type=int, default=None,
                        help="instead of examples/tiny's model (hidden 64, 2 layers, context 64), a "
                             "wider GLM4 from kuberl.worker.tiny_model (BPE tokenizer, context 512) on "
                             "the same task")
    parser.add_argument("--layers", type=int, default=4, help="layers of the --hidden-size model")
    parser.add_argument("--build", type=Path, default=None,
                        help="examples/tiny build folder (default: built in a temporary folder)")
    parser.add_argument("--verbose", action="store_true", help="show both sides' own output")
    parser.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    build = args.build or Path(tempfile.mkdtemp(prefix="kuberl-bench-tiny-"))
    if args.side:  # child process: run one side, write its figures
        result = run_ours(build, args) if args.side == "ours" else run_trl(build, args)
        args.result.write_text(json.dumps(result))
        return
    _build(build, args)
    load_before = os.getloadavg()[0]
    ours = _run_side("ours", build, args)
    trl = _run_side("trl", build, args)
    _report(args, ours, trl, (load_before, os.getloadavg()[0]))


if __name__ == "__main__":
    main()
