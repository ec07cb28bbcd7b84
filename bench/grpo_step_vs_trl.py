"""GRPO, kuberl vs Hugging Face TRL's ``GRPOTrainer``: step time, and learning speed, on the same task.

Both sides train the same model on the same prompts with the same batch (``--prompts`` x ``--samples``),
max completion length, temperature, optimizer (AdamW, constant lr, clip 0.2/0.28, grad-norm clip 1,
no weight decay, no KL) and token-level loss (TRL's default ``dapo``, kuberl's
``calculatePerTokenLoss``), with the same torch thread count (1; kuberl's Ray actors get 1 each), on
CPU. Micro-batches: kuberl packs at most ``--max-tokens-per-gpu`` tokens per micro-batch; TRL gets the
closest its config allows, ``per_device_train_batch_size`` = the samples of that many tokens (at the
longest prompt + the max completion) and ``gradient_accumulation_steps`` = the rest of the batch, one
optimizer step per generated batch. Each side runs in its own process, one after the other.

Modes:
  step (default)  ``--steps`` measured after ``--warmup`` dropped; kuberl once per ``--kuberl-levers``
                  entry (which speed levers are switched off: ``none``, ``all``, or names, see
                  worker/levers.py), so every lever is measured before/after in the same run.
  learn           rollouts and seconds until the 10-step mean reward reaches ``--target`` (0.9), for
                  two model set-ups: ``trl-init`` (examples/tiny: a plain transformers init and a
                  word-level tokenizer, what a TRL user starts from) and ``kuberl-tiny`` (the project's
                  own tiny model, kuberl.worker.tiny_model: 300-token BPE, lm_head scaled x8 at init).

Stages printed per side (mean seconds per step): generate, grade, logprob (a separate old-logprob
pass, when one runs), update (forward/backward and optimizer) and sync (trainer -> engine weights; TRL
has one model and no sync). kuberl's grade overlaps its generation (groups are graded as they finish).
Start-up: seconds from the side's interpreter start to the first rollout.

    .venv/bin/python bench/grpo_step_vs_trl.py [--steps 5] [--max-completion-length 3]
    .venv/bin/python bench/grpo_step_vs_trl.py --mode learn

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

T0 = time.perf_counter()  # this interpreter's start: start-up is measured from here
ROOT = Path(__file__).resolve().parents[1]
SETUPS = ("trl-init", "kuberl-tiny")
LEVERS_ENV = "KUBERL_DISABLE_LEVERS"


def _load_prepare() -> Any:
    """examples/tiny/prepare.py as a module (the example folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_prepare", ROOT / "examples/tiny/prepare.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _build(build: Path, args: argparse.Namespace, setup: str) -> None:
    """The task's data and the model of ``setup``: examples/tiny's (``trl-init``; or a wider GLM4 with
    ``--hidden-size``) or the project's tiny model (``kuberl-tiny``)."""
    prepare = _load_prepare()
    if setup == "trl-init" and args.hidden_size is None:
        prepare.prepare(build, seed=0)
        return
    from kuberl.worker.tiny_model import build_tiny_model

    build_tiny_model(build / "model", "glm4", seed=0, hidden_size=args.hidden_size or 64,
                     num_layers=args.layers if args.hidden_size else 2)
    prepare.build_data(build, seed=0)


def _job_manifest(build: Path, args: argparse.Namespace, rollouts: int) -> dict[str, Any]:
    """examples/tiny/job.yaml pointed at ``build``, sized and tuned by the benchmark's arguments."""
    import yaml

    job = yaml.safe_load((ROOT / "examples/tiny/job.yaml").read_text())
    spec = job["spec"]
    spec["model"]["hfCheckpoint"] = str(build / "model")
    spec.pop("eval", None)  # eval and checkpoints are not part of a training step
    spec["checkpoint"] = {}
    spec["rollout"].update(
        promptData=str(build / "train.jsonl"), numRollout=rollouts,
        batchSize=args.prompts, nSamplesPerPrompt=args.samples,
        maxResponseLen=args.max_completion_length, temperature=args.temperature,
    )
    spec["perf"]["maxTokensPerGpu"] = args.max_tokens_per_gpu
    spec["algorithm"]["calculatePerTokenLoss"] = True  # TRL's default loss_type "dapo"
    spec["optimizer"].update(lr=args.lr, adamBeta2=0.98, weightDecay=0.0, clipGrad=1.0)
    return job


def _to_target(rewards: list[float], target: float, window: int = 10) -> int | None:
    """Pure: the number of steps after which the mean of the last ``window`` rewards first reaches
    ``target`` (None if it never does)."""
    for n in range(window, len(rewards) + 1):
        if statistics.fmean(rewards[n - window : n]) >= target:
            return n
    return None


def run_ours(build: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The real driver (``kuberl train``'s code path, started in-process) with this side's levers."""
    from kuberl.api import parse_job
    from kuberl.worker.driver import DriverOptions, run_job

    learn = args.mode == "learn"
    rollouts = args.max_steps if learn else args.warmup + args.steps
    job = parse_job(_job_manifest(build, args, rollouts))
    run_dir = Path(tempfile.mkdtemp(prefix="kuberl-bench-grpo-"))
    first_end: list[float] = []

    def stop_when(history: list[dict[str, float]]) -> bool:
        if not first_end:
            first_end.append(time.perf_counter())
        rewards = [h["rollout/reward_mean"] for h in history]
        return learn and _to_target(rewards, args.target) is not None

    history = run_job(job, DriverOptions(run_dir=run_dir, progress_bar=False, stop_when=stop_when))
    measured = history if learn else history[args.warmup:]

    def mean(key: str) -> float:
        return statistics.fmean(h.get(key, 0.0) for h in measured)

    stages = {"generate": mean("time/rollout_s"), "grade": mean("time/reward_s"),
              "logprob": mean("time/logprob_s"), "update": mean("time/train_s"),
              "sync": mean("time/weight_sync_s")}
    return {
        "step_s": [h["time/step_s"] for h in measured],
        "stages": stages,
        "reward": [h["rollout/reward_mean"] for h in history],
        "entropy": [h.get("train/entropy", float("nan")) for h in history],
        "logprob_diff": [h.get("train/logprob_diff", float("nan")) for h in history],
        "zero_std": [h.get("rollout/zero_std_ratio", float("nan")) for h in history],
        "response_len": statistics.fmean(h["rollout/response_len_mean"] for h in measured),
        "startup_s": first_end[0] - T0 - history[0]["time/step_s"] if first_end else float("nan"),
        # the driver's own stages (ray, engines, trainer beyond the engines, router and resume)
        "startup_stages": json.loads((run_dir / "summary.json").read_text()).get("startup_s", {}),
    }


def trl_micro_batch(batch: int, seq_tokens: int, budget: int) -> tuple[int, int]:
    """Pure: (per_device_train_batch_size, gradient_accumulation_steps) for TRL closest to a micro-batch
    budget of ``budget`` tokens: the largest divisor of ``batch`` whose samples (``seq_tokens`` each at
    most) fit the budget, at least 1."""
    fits = max(1, budget // max(1, seq_tokens))
    size = max(d for d in range(1, batch + 1) if batch % d == 0 and d <= fits)
    return size, batch // size


def _longest_prompt(build: Path) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(build / "model")
    rows = [json.loads(line) for line in (build / "train.jsonl").read_text().splitlines()]
    return max(len(tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True))
               for r in rows[:200])


def run_trl(build: Path, args: argparse.Namespace) -> dict[str, Any]:
    """TRL's GRPOTrainer on the same model, data, batch, loss and optimizer, with stage timers."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from kuberl.worker.rewards.f1 import grade

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    learn = args.mode == "learn"
    rows = [json.loads(line) for line in (build / "train.jsonl").read_text().splitlines()]
    batch = args.prompts * args.samples
    per_device, accumulation = trl_micro_batch(
        batch, _longest_prompt(build) + args.max_completion_length, args.max_tokens_per_gpu)
    timers: dict[str, list[float]] = {"generate": [], "grade": [], "generate_and_score": []}

    def f1_reward(prompts: list, completions: list, label: list[str], **_: Any) -> list[float]:
        """The job's rmType f1, applied to TRL's decoded completions (chat format: one message)."""
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [grade(t, lab) for t, lab in zip(texts, label, strict=True)]

    class Steps(TrainerCallback):
        """Step times; in learn mode, stop once the 10-step mean reward reaches the target."""

        def __init__(self) -> None:
            self.t0 = 0.0
            self.first_begin: float | None = None
            self.seconds: list[float] = []
            self.rewards: list[float] = []

        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.t0 = time.perf_counter()
            self.first_begin = self.first_begin or self.t0

        def on_step_end(self, *_: Any, **__: Any) -> None:
            self.seconds.append(time.perf_counter() - self.t0)

        def on_log(self, _args: Any, _state: Any, control: Any, logs: dict | None = None, **__: Any):
            if logs and "reward" in logs:
                self.rewards.append(float(logs["reward"]))
                if learn and _to_target(self.rewards, args.target) is not None:
                    control.should_training_stop = True

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="kuberl-bench-trl-"),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        num_generations=args.samples,
        max_completion_length=args.max_completion_length,
        temperature=args.temperature,
        learning_rate=args.lr, adam_beta2=0.98, weight_decay=0.0, max_grad_norm=1.0,
        lr_scheduler_type="constant", warmup_steps=0, loss_type="dapo",
        epsilon=0.2, epsilon_high=0.28, beta=0.0, num_iterations=1,
        max_steps=args.max_steps if learn else args.warmup + args.steps,
        use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )

    def timed(name: str, fn: Any) -> Any:
        def call(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                timers[name].append(time.perf_counter() - t)
        return call

    steps = Steps()
    model_dir = build / "model"
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        reward_funcs=f1_reward,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        callbacks=[steps],
    )
    trainer._generate = timed("generate", trainer._generate)
    trainer._calculate_rewards = timed("grade", trainer._calculate_rewards)
    trainer._generate_and_score_completions = timed("generate_and_score",
                                                    trainer._generate_and_score_completions)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    skip = 0 if learn else args.warmup
    step_s = steps.seconds[skip:]
    gen, grd, gas = (statistics.fmean(timers[k][skip:]) for k in ("generate", "grade",
                                                                   "generate_and_score"))
    return {
        "step_s": step_s,
        "stages": {"generate": gen, "grade": grd, "logprob": gas - gen - grd,
                   "update": statistics.fmean(step_s) - gas, "sync": 0.0},
        "reward": [h["reward"] for h in logs],
        "entropy": [h.get("entropy", float("nan")) for h in logs],
        "response_len": statistics.fmean(h["completions/mean_length"] for h in logs[skip:]),
        "startup_s": (steps.first_begin or T0) - T0,
        "micro_batch": [per_device, accumulation],
    }


def _run_side(side: str, build: Path, args: argparse.Namespace, levers: str = "none") -> dict[str, Any]:
    """Run one side in a fresh interpreter so neither inherits the other's threads, Ray or memory."""
    out = Path(tempfile.mkstemp(prefix=f"kuberl-bench-{side}-", suffix=".json")[1])
    argv = [sys.executable, __file__, "--side", side, "--build", str(build), "--result", str(out),
            *_forwarded(args)]
    env = {**os.environ, LEVERS_ENV: "" if levers == "none" else levers}
    if levers == "all":
        from kuberl.worker.levers import Levers

        env[LEVERS_ENV] = ",".join(Levers().__dataclass_fields__)
    t0 = time.perf_counter()
    for attempt in range(3):  # Ray waits a hard-coded 30 s for its raylet: a loaded machine misses it
        done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL if not args.verbose else None,
                              stderr=subprocess.DEVNULL if not args.verbose else None)
        if done.returncode == 0:
            break
        print(f"({side} side failed with exit status {done.returncode}, attempt {attempt + 1} of 3)",
              file=sys.stderr)
    else:
        raise RuntimeError(f"the {side} side failed 3 times; rerun with --verbose to see why")
    result = json.loads(out.read_text())
    result["process_s"] = time.perf_counter() - t0
    out.unlink()
    return result


def _forwarded(args: argparse.Namespace) -> list[str]:
    return ["--mode", args.mode, "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--prompts", str(args.prompts), "--samples", str(args.samples),
            "--max-completion-length", str(args.max_completion_length),
            "--temperature", str(args.temperature), "--threads", str(args.threads),
            "--lr", str(args.lr), "--max-tokens-per-gpu", str(args.max_tokens_per_gpu),
            "--max-steps", str(args.max_steps), "--target", str(args.target)] + (
            ["--hidden-size", str(args.hidden_size), "--layers", str(args.layers)]
            if args.hidden_size else [])


def _summary(step_s: list[float]) -> str:
    return (f"{statistics.fmean(step_s):7.3f} {statistics.median(step_s):7.3f} "
            f"{min(step_s):7.3f} {max(step_s):7.3f}")


def _header(args: argparse.Namespace, load: float) -> None:
    import torch
    import transformers
    import trl as trl_pkg

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} at start; "
          f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl_pkg.__version__}; "
          f"torch threads {args.threads} per process on both sides")
    print(f"task: last letter, {args.prompts} prompts x {args.samples} samples, max completion "
          f"{args.max_completion_length} tokens, temperature {args.temperature}, AdamW lr {args.lr} "
          f"(constant, beta2 0.98, no weight decay, grad clip 1), clip 0.2/0.28, token-level loss, "
          f"no KL; micro-batch budget {args.max_tokens_per_gpu} tokens")


def _stages(side: dict[str, Any]) -> str:
    return " / ".join(f"{side['stages'][k]:.3f}" for k in ("generate", "grade", "logprob", "update",
                                                             "sync"))


def _report_steps(args: argparse.Namespace, ours: dict[str, dict[str, Any]], trl: dict[str, Any],
                  loads: list[float]) -> None:
    model = ("tiny GLM4 of examples/tiny (hidden 64, 2 layers)" if args.hidden_size is None else
             f"GLM4 from tiny_model (hidden {args.hidden_size}, {args.layers} layers)")
    print(f"model: {model}; {args.warmup} warm-up step(s) dropped, {args.steps} measured per side; "
          f"TRL micro-batch {trl['micro_batch'][0]} samples x {trl['micro_batch'][1]} accumulation "
          f"steps; load average after each side: {', '.join(f'{x:.1f}' for x in loads)}")
    print()
    print(f"{'side (levers off)':<34} {'mean s':>7} {'median':>7} {'min':>7} {'max':>7} {'resp len':>8} "
          f"{'start s':>7}  generate / grade / logprob / update / sync")
    for name, side in [*((f"kuberl ({k})", v) for k, v in ours.items()), ("TRL", trl)]:
        print(f"{name:<34} {_summary(side['step_s'])} {side['response_len']:8.2f} "
              f"{side['startup_s']:7.1f}  {_stages(side)}")
    print()
    t = statistics.fmean(trl["step_s"])
    for name, side in ours.items():
        ratio = statistics.fmean(side["step_s"]) / t
        start = side["startup_s"] / trl["startup_s"]
        print(f"kuberl ({name}) / TRL: step time {ratio:.2f} (target <= 0.50: "
              f"{'met' if ratio <= 0.5 else 'not met'}), start-up {start:.2f} (target <= 1: "
              f"{'met' if start <= 1 else 'not met'})")
        if side.get("startup_stages"):
            print(f"  kuberl ({name}) start-up inside the driver: "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in side["startup_stages"].items()))


def _report_learn(args: argparse.Namespace, runs: dict[str, dict[str, Any]], loads: list[float]) -> None:
    print(f"learn: stop when the 10-step mean reward reaches {args.target} (at most {args.max_steps} "
          f"steps); load average after each run: {', '.join(f'{x:.1f}' for x in loads)}")
    print()
    print(f"{'run':<26} {'steps':>6} {'rollouts':>9} {'train s':>8} {'start s':>8} {'s/step':>7} "
          f"{'entropy@10/50/last':>20} {'last-10 reward':>15}")
    per_step = args.prompts * args.samples
    for name, r in runs.items():
        n = _to_target(r["reward"], args.target)
        secs = sum(r["step_s"][: n or len(r["step_s"])])
        ent = r["entropy"]
        pick = [ent[i] for i in (9, 49) if i < len(ent)] + [ent[-1]]
        print(f"{name:<26} {n if n else '>' + str(len(r['reward'])):>6} "
              f"{(n or len(r['reward'])) * per_step:>9} {secs:8.1f} {r['startup_s']:8.1f} "
              f"{statistics.fmean(r['step_s']):7.3f} {' / '.join(f'{e:.2f}' for e in pick):>20} "
              f"{statistics.fmean(r['reward'][-10:]):15.3f}")
    print()
    for setup in SETUPS:
        ours, trl = runs.get(f"kuberl {setup}"), runs.get(f"TRL {setup}")
        if not ours or not trl:
            continue
        a, b = _to_target(ours["reward"], args.target), _to_target(trl["reward"], args.target)
        if a and b:
            ta, tb = sum(ours["step_s"][:a]), sum(trl["step_s"][:b])
            print(f"{setup}: kuberl/TRL rollouts to {args.target}: {a / b:.2f} (target <= 1), "
                  f"seconds: {ta / tb:.2f} (target <= 0.50)")
        else:
            print(f"{setup}: kuberl {'reached' if a else 'did not reach'}, TRL "
                  f"{'reached' if b else 'did not reach'} {args.target} within {args.max_steps} steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["step", "learn"], default="step")
    parser.add_argument("--steps", type=int, default=5, help="measured steps per side (step mode)")
    parser.add_argument("--warmup", type=int, default=1, help="steps dropped before measuring")
    # Both modes default to examples/tiny's 32 prompts and lr 2e-3, where both sides reach 0.9 (at 8 prompts
    # and lr 5e-3 neither learned in 300 steps: no comparison).
    parser.add_argument("--prompts", type=int, default=32, help="prompts per step (examples/tiny's 32)")
    parser.add_argument("--samples", type=int, default=8, help="samples per prompt (GRPO group)")
    parser.add_argument("--max-completion-length", type=int, default=3,
                        help="max new tokens per completion (examples/tiny uses 3; its model's "
                             "context is 64 tokens, so at most about 56)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=None,
                        help="AdamW lr (default: examples/tiny's 2e-3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in the TRL process (kuberl's Ray actors get 1 each)")
    parser.add_argument("--max-tokens-per-gpu", type=int, default=4096,
                        help="micro-batch token budget: kuberl packs to it, TRL gets the closest "
                             "per_device_train_batch_size x gradient_accumulation_steps")
    parser.add_argument("--kuberl-levers", nargs="+", default=["all", "none"],
                        help="one kuberl run per entry, naming the speed levers switched OFF: all, "
                             "none, or comma-separated names from worker/levers.py")
    parser.add_argument("--setups", nargs="+", choices=SETUPS, default=list(SETUPS),
                        help="learn mode: model set-ups to race on")
    parser.add_argument("--max-steps", type=int, default=300, help="learn mode: give up after this")
    parser.add_argument("--target", type=float, default=0.9, help="learn mode: 10-step mean reward")
    parser.add_argument("--hidden-size", type=int, default=None,
                        help="step mode: instead of examples/tiny's model (hidden 64, 2 layers, "
                             "context 64), a wider GLM4 from kuberl.worker.tiny_model (BPE tokenizer, "
                             "context 512) on the same task")
    parser.add_argument("--layers", type=int, default=4, help="layers of the --hidden-size model")
    parser.add_argument("--build", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--verbose", action="store_true", help="show both sides' own output")
    parser.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    learn = args.mode == "learn"
    args.lr = args.lr or 2e-3

    if args.side:  # child process: run one side, write its figures
        result = run_ours(args.build, args) if args.side == "ours" else run_trl(args.build, args)
        args.result.write_text(json.dumps(result))
        return
    load = os.getloadavg()[0]
    _header(args, load)
    loads: list[float] = []
    if not learn:
        build = Path(tempfile.mkdtemp(prefix="kuberl-bench-tiny-"))
        _build(build, args, "trl-init")
        ours = {}
        for levers in args.kuberl_levers:
            ours[levers] = _run_side("ours", build, args, levers)
            loads.append(os.getloadavg()[0])
        trl = _run_side("trl", build, args)
        loads.append(os.getloadavg()[0])
        _report_steps(args, ours, trl, loads)
        return
    runs: dict[str, dict[str, Any]] = {}
    for setup in args.setups:
        build = Path(tempfile.mkdtemp(prefix=f"kuberl-bench-{setup}-"))
        _build(build, args, setup)
        runs[f"kuberl {setup}"] = _run_side("ours", build, args)
        loads.append(os.getloadavg()[0])
        runs[f"TRL {setup}"] = _run_side("trl", build, args)
        loads.append(os.getloadavg()[0])
    _report_learn(args, runs, loads)
    out = Path(tempfile.mkstemp(prefix="kuberl-bench-learn-", suffix=".json")[1])
    out.write_text(json.dumps(runs))
    print(f"\nper-step curves (reward, entropy, ...): {out}")


if __name__ == "__main__":
    main()
