"""The GRPO driver: one readable loop of named stages, the same locally and in a KubeRay job.

    for rollout_id in range(start, num_rollout):
        evaluate (every eval.interval)  -> eval/score
        collect rollout                 -> kept prompt groups (dynamic sampling, partial-rollout buffer)
        advantages                      -> per-token signals
        logprob passes                  -> old (and reference) logprobs from the trainer
        train numStepsPerRollout steps  -> train/* metrics
        sync weights                    -> engines serve version rollout_id + 1
        checkpoint (every saveInterval) -> weights, optimizer, data cursor, buffer, RNG
        report                          -> status.progress, Prometheus, JSONL log, console
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kuberl.api.job import RLTrainingJob
from kuberl.api.resolve import WorkerConfig, resolve
from kuberl.errors import TrainingInterrupted
from kuberl.worker import checkpoint as ckpt
from kuberl.worker.algo.advantages import compute_advantages
from kuberl.worker.console import (
    already_complete,
    drop_rollouts_from,
    resume_point,
    startup_header,
    summary_record,
    summary_table,
)
from kuberl.worker.engine.host import EngineHost, launch_local_engine, prelaunch_engines
from kuberl.worker.engine.launcher import ManagedProcess, seeded_sampling
from kuberl.worker.import_path import load_callable
from kuberl.worker.levers import Levers
from kuberl.worker.local_ray import init_local_ray, prepare_local_ray
from kuberl.worker.metrics import MetricsExporter
from kuberl.worker.placement import create_placement_groups, plan_placement
from kuberl.worker.progress import ProgressReport, StatusReporter, in_cluster_target
from kuberl.worker.prompt_source import PromptSource
from kuberl.worker.rewards.pool import GradingPool, default_workers
from kuberl.worker.rewards.scorer import RewardConfig, Scorer
from kuberl.worker.rollout.balancer import EngineBalancer
from kuberl.worker.rollout.dynamic_sampling import CollectorSettings, RolloutResult, collect_rollout
from kuberl.worker.rollout.engine_client import EngineClient
from kuberl.worker.rollout.partial_rollout_buffer import PartialRolloutBuffer
from kuberl.worker.rollout.router import Router, RouterClient
from kuberl.worker.rollout.sample import Sample
from kuberl.worker.rollout.supervisor import EngineSupervisor
from kuberl.worker.train.batch import TrainSample
from kuberl.worker.train.trainer_actor import check_backend_available
from kuberl.worker.train.trainer_group import TrainerGroup
from kuberl.worker.weight_sync import (
    SyncSettings,
    check_versions,
    choose_transport,
    disk_sync_dir,
    set_memory,
    sync_settings,
)

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the driver's log


@dataclass
class DriverOptions:
    """How this process runs the job (not part of the job spec)."""

    in_cluster: bool = False
    run_dir: Path = Path("runs")
    metrics_port: int | None = None  # None: no endpoint; 0: any free port
    progress_bar: bool = True
    max_rollouts: int | None = None  # stop early (tests, smoke runs)
    # Called with the history after every rollout; True ends the run there (benchmarks: a reward target).
    stop_when: Callable[[list[dict[str, float]]], bool] | None = None
    ray_address: str | None = None  # None: start a local Ray; "auto": join the cluster
    # GPU bundles (plan_placement's use_gpus): None = in a cluster only; True = a local Ray that holds this
    # host's GPUs and the pods' custom resources (bench/reference_run.py: one host, the cluster's layout).
    use_gpus: bool | None = None


def rollout_metrics(result: RolloutResult, max_response_len: int, num_engines: int) -> dict[str, float]:
    """Pure: summarize one rollout's kept groups and what dynamic sampling did."""
    samples = [s for g in result.groups for s in g]
    rewards = [float(s.reward or 0.0) for s in samples]
    lengths = [s.response_length for s in samples]
    zero_std = sum(1 for g in result.groups if len({s.reward for s in g}) <= 1)
    tokens_per_s = result.generated_tokens / result.wall_s if result.wall_s > 0 else 0.0
    return {
        "rollout/reward_mean": statistics.fmean(rewards) if rewards else 0.0,
        "rollout/response_len_mean": statistics.fmean(lengths) if lengths else 0.0,
        "rollout/truncated_ratio": (
            sum(1 for n in lengths if n >= max_response_len) / len(lengths) if lengths else 0.0
        ),
        "rollout/zero_std_ratio": zero_std / len(result.groups) if result.groups else 0.0,
        "rollout/generated_tokens": float(result.generated_tokens),
        "rollout/samples": float(len(samples)),
        "perf/rollout_tokens_per_s": tokens_per_s,
        "perf/rollout_tokens_per_s_per_gpu": tokens_per_s / max(1, num_engines),
        "time/rollout_s": result.wall_s,
        "time/reward_s": result.grading_s,
        "dynamic_sampling/groups_dropped": float(sum(result.dropped.values())),
        "dynamic_sampling/waves": float(result.waves),
        "buffer/partial_resumed": float(result.resumed_samples),
        "buffer/tokens_reused": float(result.tokens_reused),
        "buffer/tokens_wasted": float(result.tokens_wasted),
        **result.extra_metrics(),
    }


def to_train_samples(groups: Sequence[Sequence[Sample]]) -> list[TrainSample]:
    """Pure: graded groups -> trainer inputs (P*G samples, advantages filled later)."""
    return [
        TrainSample(
            tokens=s.tokens,
            prompt_len=len(s.prompt_ids),
            advantages=[],
            loss_mask=list(s.loss_mask),
            rollout_logprobs=list(s.response_logprobs),
        )
        for g in groups
        for s in g
    ]


def fill_advantages(
    samples: list[TrainSample], rewards: Sequence[float], config: WorkerConfig
) -> None:
    """Set per-token advantages (R,) on every sample as ``spec.algorithm`` says."""
    kl = None
    if config.algorithm["kl_coef"] > 0 and all(s.ref_logprobs is not None for s in samples):
        # KL penalty of the rollout policy to the reference, folded into REINFORCE++ rewards.
        kl = [torch.tensor(s.old_logprobs) - torch.tensor(s.ref_logprobs) for s in samples]
    advantages = compute_advantages(
        rewards=torch.tensor([float(r) for r in rewards]),  # (P*G,)
        response_lengths=[s.response_len for s in samples],
        group_size=config.n_samples_per_prompt,
        algorithm=config.algorithm,
        kl=kl,
        loss_masks=[torch.tensor(s.loss_mask, dtype=torch.float32) for s in samples],
    )
    for s, adv in zip(samples, advantages, strict=True):
        s.advantages = adv.tolist()


def build_grader(config: WorkerConfig, pool: GradingPool, rm_type: str | None = None,
                 levers: Levers | None = None) -> Scorer:
    """A scorer that grades samples in place through the process pool shared by training and eval
    (cheap built-in graders inline, unless ``levers`` switch that off)."""
    reward = RewardConfig(
        rm_type=rm_type or config.rm_type, custom_rm_path=config.custom_rm_path,
        rm_url=config.rm_url, group_rm=config.group_rm,
    )
    return Scorer(reward, pool, args=config, inline=(levers or Levers()).inline_grading)


def load_hook(path: str | None, field: str) -> Any:
    """Load a user hook named in the spec (None when unset); errors name the spec field."""
    return load_callable(path, f"spec.rollout.{field}") if path else None


class Driver:
    """Owns Ray, the engines, the trainer, data, rewards and reporting for one job."""

    def __init__(self, job: RLTrainingJob, options: DriverOptions) -> None:
        self.job = job
        self.options = options
        self.config = resolve(job, in_cluster=options.in_cluster)
        check_backend_available(self.config.trainer_backend)
        self.run_dir = options.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = MetricsExporter(job.metadata.name)
        self.reporter = StatusReporter(
            in_cluster_target(job.metadata.name, job.metadata.namespace) if options.in_cluster else None
        )
        self.buffer = PartialRolloutBuffer(load_hook(self.config.buffer_filter_path, "bufferFilterPath"))
        self.group_filter = load_hook(
            self.config.dynamic_sampling_filter_path, "dynamicSamplingFilterPath"
        )
        self.prompts = PromptSource.for_training(self.config)
        self.levers = Levers.from_env()
        self.pool = GradingPool(workers=default_workers())
        self.grader = build_grader(self.config, self.pool, levers=self.levers)
        self.weight_version = 0
        self.start_rollout = 0
        self.current_rollout: int | None = None  # the rollout in progress (for "interrupted at")
        self.last_saved: tuple[int, str] | None = None  # (rollout, path) of the newest checkpoint
        self._engines: list[Any] = []
        self._prelaunched: list[ManagedProcess] = []  # local CPU engines started before Ray
        self.startup_s: dict[str, float] = {}  # seconds per start-up stage (ray, engines, trainer, ...)
        self.engine_urls: list[str] = []
        self.trainer: Any = None
        # Weight sync: the transport is a pure function of the config (KUBERL_WEIGHT_SYNC=disk asks for
        # the shared-storage path instead); engines released for training when colocated.
        self.transport = choose_transport(self.config, os.environ.get("KUBERL_WEIGHT_SYNC"))
        self._disk_dir = (disk_sync_dir(self.config, in_cluster=options.in_cluster, run_dir=self.run_dir)
                          if self.transport == "disk" else None)
        gpus = options.in_cluster if options.use_gpus is None else options.use_gpus
        self._use_gpus = gpus and self.config.device != "cpu"
        self._released = False
        self._engine_epoch = 0  # bumped when an engine is replaced: the weight group is formed anew
        self._engine_strategies: list[Any] = []
        self._router: Router | None = None
        self._supervisor: EngineSupervisor | None = None
        self._log_file = (self.run_dir / "metrics.jsonl").open("a")
        # Which prompts (dataset rows) and samples each rollout trained on: audits resume invariants.
        self._samples_file = (self.run_dir / "samples.jsonl").open("a")

    # ---- set-up ------------------------------------------------------------------------------------
    def start(self) -> None:
        began = last = time.monotonic()

        def mark(stage: str) -> None:  # start-up seconds per stage, logged once the driver is ready
            nonlocal last
            now = time.monotonic()
            self.startup_s[stage] = now - last
            last = now

        if self.options.ray_address is None and not _ray_initialized():
            prepare_local_ray()  # before Ray is imported: loopback listeners, a per-run auth token
        import ray

        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        plan = plan_placement(self.config, use_gpus=self._use_gpus, in_cluster=self.options.in_cluster)
        self._engine_spec = {
            "model_path": self.config.hf_checkpoint,
            "kind": self.config.rollout_engine,
            "tp_size": self.config.gpus_per_engine,
            "server_args": self.config.sglang_server_args,
            "weight_version": str(self.weight_version),
            "random_seed": self.config.seed,
        }
        if prelaunch_engines(self.options.ray_address, self.options.in_cluster, self._use_gpus):
            # CPU engines on this host boot while Ray starts (each is ~10 s of imports and loading on
            # 2 cores); their host actors adopt them.
            for i, bundle in enumerate(plan.rollout_bundles):  # one at a time: stop() sees each one
                self._prelaunched.append(
                    launch_local_engine(self._engine_spec, self._engine_log(i), bundle))
        # A local Ray gets at least the plan's CPU bundles (logical CPUs: several CPU trainer ranks and
        # the engines may share fewer cores).
        needed = sum(b.get("CPU", 0) for b in plan.trainer_bundles + plan.rollout_bundles)
        if not ray.is_initialized():
            local = self.options.ray_address is None
            # A local Ray listens on loopback only (prepare_local_ray), and its processes inherit an ignored
            # SIGINT: a Ctrl-C (sent to the whole process group) reaches this driver alone, which stops them.
            with _sigint_ignored(local):
                kwargs = dict(include_dashboard=False, log_to_driver=True, configure_logging=False)
                if local:
                    init_local_ray(num_cpus=max(2, os.cpu_count() or 2, int(needed)), **kwargs)
                else:
                    ray.init(address=self.options.ray_address, **kwargs)
        groups = create_placement_groups(plan)
        mark("ray")
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        def on(group: Any, index: int) -> Any:
            return PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)

        # One trainer rank per trainer bundle; they build their backends while the engines start.
        self.trainer = TrainerGroup.create(
            self.config.trainer_backend, self.config, groups["trainer"], plan.trainer_bundles
        )
        self._engine_strategies = [
            dict(scheduling_strategy=on(groups["rollout"], i), num_cpus=bundle.get("CPU", 1),
                 num_gpus=bundle.get("GPU", 0))
            for i, bundle in enumerate(plan.rollout_bundles)
        ]
        self._engines = [
            self._engine_actor(i, adopt=(self._prelaunched[i].adoptable() if self._prelaunched else None))
            for i in range(len(self._engine_strategies))
        ]
        self.engine_urls = ray.get([e.start.remote() for e in self._engines])
        mark("engines")
        self.trainer.ping()
        mark("trainer")  # built while the engines started: only what it took beyond them
        log.info("%d trainer rank(s) ready", self.trainer.world_size)
        log.info("engines ready at %s", self.engine_urls)
        asyncio.run(self._start_router())
        self._resume()
        mark("router_and_resume")
        log.info("start-up %.1f s: %s", time.monotonic() - began,
                 ", ".join(f"{k} {v:.1f} s" for k, v in self.startup_s.items()))
        if self.options.metrics_port is not None:
            port = self.metrics.serve(self.options.metrics_port)
            log.info("metrics on :%d/metrics", port)

    def _resume(self) -> None:
        """Restore the newest complete checkpoint (weights, optimizer, cursor, buffer, RNG), if any."""
        import ray

        root = Path(self.config.save) if self.config.save else None
        found = ckpt.latest_checkpoint(root) or (
            ckpt.latest_checkpoint(Path(self.config.load)) if self.config.load else None
        )
        if found is None:
            return
        state = found.driver_state()
        ray.get(self.trainer.load.remote(str(found.trainer_dir)))
        self.prompts.load_state_dict(state["data"])
        self.buffer.load_state_dict(state["buffer"])
        ckpt.restore_rng_state(state["rng"])
        self.weight_version = state["weight_version"]
        self.start_rollout = state["rollout_id"] + 1
        self.last_saved = (state["rollout_id"], str(found.path))
        self._sync_weights()
        log.info("resumed from %s at rollout %d", found.path, self.start_rollout)

    def _engine_actor(self, index: int, adopt: dict[str, Any] | None = None) -> Any:
        import ray

        return ray.remote(EngineHost).options(**self._engine_strategies[index]).remote(
            self._engine_spec, self._engine_log(index), self.options.in_cluster, adopt)

    def _engine_log(self, index: int) -> str:
        """One log per engine slot, whether the driver or its host actor starts the process."""
        return str(self.run_dir / f"engine-{index}.log")

    async def _start_router(self) -> None:
        """In a cluster (or when spec.sglang.routerArgs is set) generation goes through smg."""
        if self.options.in_cluster or self.config.router_args:
            self._router = await Router.start(
                self.config.router_args, self.engine_urls,
                request_timeout_secs=self.config.router_request_timeout_secs,
                log_path=str(self.run_dir / "router.log"))
            log.info("router at %s", self._router.url)
        self._supervisor = EngineSupervisor(self.engine_urls, self._restart_engine, self._router,
                                            on_replaced=self._engine_replaced)

    async def _restart_engine(self, index: int) -> str:
        """A fresh engine process for slot ``index`` (a new host actor if the old one is gone)."""
        import ray

        try:
            # Not the current version: the version check then proves the weights really arrived.
            url = await self._engines[index].restart.remote(f"replaced-{self._engine_epoch}")
        except ray.exceptions.RayActorError:
            if index < len(self._prelaunched):  # the dead host's adopted engine is ours to stop
                self._prelaunched[index].stop()
            self._engines[index] = self._engine_actor(index)
            url = await self._engines[index].start.remote()
        self.engine_urls[index] = url
        return url

    async def _engine_replaced(self, index: int, url: str) -> None:
        """A replacement engine serves the initial checkpoint: give it the current weights."""
        self._engine_epoch += 1
        version = str(self.weight_version)
        await self.trainer.sync_weights.remote([url], version, self._sync_settings())
        await check_versions([url], version)

    # ---- stages ------------------------------------------------------------------------------------
    def _endpoint(self) -> EngineBalancer:
        if self._router is not None:
            supervisor = self._supervisor
            assert supervisor is not None
            return RouterClient(self._router.url, [EngineClient(u) for u in self.engine_urls],
                                on_engine_failure=supervisor.check)
        return EngineBalancer([EngineClient(u) for u in self.engine_urls])

    async def _supervised(self, work: Any) -> Any:
        """Run a rollout while the supervisor watches the engines; a failed watch ends the rollout."""
        if self._supervisor is None:
            return await work
        task = asyncio.ensure_future(work)
        watch = asyncio.ensure_future(self._supervisor.watch(interval_s=5.0))
        try:
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
            if watch.done():
                task.cancel()
                watch.result()  # raises the supervisor's error
            return task.result()
        finally:
            watch.cancel()
            if not task.done():
                task.cancel()

    async def _collect(self, rollout_id: int) -> RolloutResult:
        c = self.config
        custom = load_hook(c.custom_generate_function_path, "customGenerateFunctionPath")
        settings = CollectorSettings(
            target_groups=c.rollout_batch_size,
            over_sampling_groups=c.over_sampling_batch_size,
            max_new_tokens=c.max_response_len,
            sampling_params=self._sampling_params(c.sampling),
            partial_rollout=c.partial_rollout,
            mask_offpolicy=c.mask_offpolicy_in_partial_rollout,
            use_tis=bool(c.algorithm["use_tis"]),
            policy_version=str(self.weight_version),
            max_context_len=c.max_context_len,
            server_concurrency=c.server_concurrency,
            custom_generate=custom,
            batch_groups=self.levers.batch_generate,
            # Nothing else runs on this job's engines during a training rollout; a custom generate function
            # may send requests the collector does not track, so it keeps exact-rid aborts.
            exclusive_engines=custom is None,
        )
        endpoint = self._endpoint()
        try:
            return await self._supervised(collect_rollout(
                endpoint, rollout_id, settings, self.prompts.next_groups, self.grader.score,
                self.buffer, self.group_filter, self.config, decode=self.prompts.decode,
            ))
        finally:
            await endpoint.aclose()  # the engines' sessions and, behind a router, the router's

    def _sampling_params(self, sampling: dict[str, Any]) -> dict[str, Any]:
        params = {
            "temperature": sampling["temperature"],
            "top_p": sampling["top_p"],
            "top_k": sampling["top_k"],
            "skip_special_tokens": sampling["skip_special_tokens"],
        }
        if sampling["stop"]:
            params["stop"] = sampling["stop"]
        if sampling["stop_token_ids"]:
            params["stop_token_ids"] = sampling["stop_token_ids"]
        if seeded_sampling(self.config.sglang_server_args):  # per-sample seeds: seed + sample index
            params["sampling_seed"] = self.config.seed
        return params

    async def _evaluate(self, rollout_id: int) -> dict[str, float]:
        """Score every eval set: mean reward over nSamplesPerEvalPrompt samples per prompt."""
        c = self.config
        out: dict[str, float] = {}
        scores = []
        for eval_set in c.eval_sets:
            source = PromptSource.for_eval(c, eval_set)
            grader = build_grader(c, self.pool, eval_set.rm_type, self.levers)
            settings = CollectorSettings(
                target_groups=len(source),
                over_sampling_groups=len(source),
                max_new_tokens=c.eval_max_response_len,
                sampling_params=self._sampling_params(c.eval_sampling),
                max_context_len=c.max_context_len,
                server_concurrency=c.server_concurrency,
                custom_generate=load_hook(c.custom_generate_function_path,
                                          "customGenerateFunctionPath"),
                evaluation=True,
                batch_groups=self.levers.batch_generate,
            )
            endpoint = self._endpoint()
            try:
                result = await collect_rollout(
                    endpoint, rollout_id, settings, source.next_groups, grader.score,
                    PartialRolloutBuffer(), decode=source.decode,
                )
            finally:
                await endpoint.aclose()
            rewards = [float(s.reward or 0.0) for g in result.groups for s in g]
            score = statistics.fmean(rewards) if rewards else 0.0
            out[f"eval/{eval_set.name}"] = score
            scores.append(score)
        if scores:
            out["eval/score"] = statistics.fmean(scores)
        return out

    def _train(self, groups: list[list[Sample]]) -> dict[str, float]:
        c = self.config
        t0 = time.perf_counter()
        samples = to_train_samples(groups)
        # With one optimizer step per rollout the old policy is the current weights, which the train
        # step computes anyway: the separate pass is only needed for several steps or a KL penalty.
        needs_old = c.num_steps_per_rollout > 1 or c.algorithm["kl_coef"] > 0
        old = self.trainer.compute_logprobs(samples) if needs_old else None
        needs_ref = (c.algorithm["use_kl_loss"] and c.algorithm["kl_loss_coef"] > 0) or (
            c.algorithm["kl_coef"] > 0
        )
        ref = self.trainer.compute_logprobs(samples, True) if needs_ref else None
        for i, s in enumerate(samples):
            s.old_logprobs = old[i] if old is not None else None
            s.ref_logprobs = ref[i] if ref is not None else None
        fill_advantages(samples, [float(s.reward or 0.0) for g in groups for s in g], c)
        t1 = time.perf_counter()
        merged: dict[str, list[float]] = {}
        step_size = max(1, len(samples) // c.num_steps_per_rollout)
        for start in range(0, len(samples), step_size):
            metrics = self.trainer.train_step(samples[start : start + step_size])
            for key, value in metrics.items():
                merged.setdefault(key, []).append(value)
        out = {k: statistics.fmean(v) for k, v in merged.items()}
        out["time/logprob_s"] = t1 - t0
        out["time/train_s"] = time.perf_counter() - t1
        return out

    def _sync_settings(self) -> SyncSettings:
        return sync_settings(self.config, self.transport, use_gpus=self._use_gpus,
                             disk_dir=self._disk_dir, epoch=self._engine_epoch)

    def _release_engines(self) -> None:
        """Colocated: engines free their GPU memory (weights, KV cache) while the trainer trains."""
        if self.config.offload_rollout and not self._released:  # defaults to placement.colocate
            asyncio.run(set_memory(self.engine_urls, "release"))
            self._released = True

    def _sync_weights(self) -> float:
        """Push the trainer's weights to every engine and check each serves the new version.

        Returns the seconds taken (``time/weight_sync_s``), version check included.
        """
        import ray

        t0 = time.perf_counter()
        version = str(self.weight_version)
        if self._supervisor is not None:
            asyncio.run(self._supervisor.check())  # a dead engine is replaced before, not during
        urls = list(self.engine_urls)
        if self._released:  # colocated: weights back first, the KV cache after the update
            asyncio.run(set_memory(urls, "resume", ["weights"]))
        ray.get(self.trainer.sync_weights.remote(urls, version, self._sync_settings()))
        if self._released:
            asyncio.run(set_memory(urls, "resume", ["kv_cache", "cuda_graph"]))
            self._released = False
        asyncio.run(check_versions(urls, version))
        return time.perf_counter() - t0

    def _checkpoint(self, rollout_id: int, end: int) -> str | None:
        import ray

        c = self.config
        if not c.save or not c.save_interval:
            return None
        last = rollout_id + 1 >= end
        if (rollout_id + 1) % c.save_interval != 0 and not last:
            return None
        state = {
            "rollout_id": rollout_id,
            "weight_version": self.weight_version,
            "data": self.prompts.state_dict(),
            "buffer": self.buffer.state_dict(),
            "rng": ckpt.rng_state(),
        }
        saved = ckpt.save_checkpoint(
            Path(c.save), rollout_id, state,
            lambda d: ray.get(self.trainer.save.remote(str(d))), keep_last=c.keep_last,
        )
        return str(saved.path)

    # ---- the loop ----------------------------------------------------------------------------------
    def run(self) -> list[dict[str, float]]:
        """Run from the resume point to numRollout; return the per-rollout metrics."""
        c = self.config
        end = c.num_rollout if c.num_rollout is not None else self._epoch_rollouts()
        if self.options.max_rollouts is not None:
            end = min(end, self.start_rollout + self.options.max_rollouts)
        history: list[dict[str, float]] = []
        self._restart_metrics_log()
        bar = _progress_bar(self.start_rollout, end, self.options.progress_bar)
        rollout_id = self.start_rollout
        while rollout_id < end:
            self.current_rollout = rollout_id
            step_t0 = time.perf_counter()
            metrics: dict[str, float] = {"progress/rollout_id": float(rollout_id),
                                         "progress/num_rollout": float(end)}
            if self._eval_due(rollout_id):
                t = time.perf_counter()
                metrics.update(asyncio.run(self._evaluate(rollout_id)))
                metrics["time/eval_s"] = time.perf_counter() - t
            result = asyncio.run(self._collect(rollout_id))
            if not result.groups:
                log.info("prompt data exhausted at rollout %d", rollout_id)
                break
            # per rollout GPU on GPUs (an engine of gpusPerEngine 2 is two GPUs), per engine on CPU
            devices = c.rollout_num_gpus if self._use_gpus else c.num_engines
            metrics.update(rollout_metrics(result, c.max_response_len, devices))
            self._log_samples(rollout_id, result.groups)
            self._release_engines()
            metrics.update(self._train(result.groups))
            self.weight_version += 1
            metrics["time/weight_sync_s"] = self._sync_weights()
            metrics["progress/weight_version"] = float(self.weight_version)
            metrics["buffer/samples"] = float(self.buffer.num_samples)
            t = time.perf_counter()
            saved = self._checkpoint(rollout_id, end)
            if saved:
                self.last_saved = (rollout_id, saved)
            metrics["time/checkpoint_s"] = time.perf_counter() - t
            metrics["time/step_s"] = time.perf_counter() - step_t0
            self._report(rollout_id, end, metrics, saved)
            history.append(metrics)
            bar(rollout_id, metrics)
            rollout_id += 1
            end = self._refresh_end(end)
            if self.options.stop_when is not None and self.options.stop_when(history):
                log.info("stopping after rollout %d: the stop condition holds", rollout_id - 1)
                break
        if self._eval_due(end, final=True) and history:
            final = asyncio.run(self._evaluate(end))
            history[-1].update(final)
            self._report(end - 1, end, final, None)
        return history

    def _restart_metrics_log(self) -> None:
        """A resumed run redoes the rollouts after its checkpoint: their earlier lines go, so the log
        (and ``kuberl plot``) holds each rollout once, in order."""
        path = self.run_dir / "metrics.jsonl"
        self._log_file.close()
        dropped = drop_rollouts_from(path, self.start_rollout)
        if dropped:
            log.info("metrics.jsonl: replaced %d line(s) of rollouts >= %d (redone after resume)",
                     dropped, self.start_rollout)
        self._log_file = path.open("a")

    def _refresh_end(self, end: int) -> int:
        """In a cluster, follow a changed ``spec.rollout.numRollout`` (the one mutable run length)."""
        if self.config.num_rollout is None or self.options.max_rollouts is not None:
            return end
        desired = self.reporter.desired_num_rollout()
        if desired is not None and desired != end:
            log.info("spec.rollout.numRollout changed: %d -> %d", end, desired)
            return desired
        return end

    def _log_samples(self, rollout_id: int, groups: list[list[Sample]]) -> None:
        record = {
            "rollout_id": rollout_id,
            "rows": [g[0].metadata.get("row") for g in groups],
            "samples": [s.index for g in groups for s in g],
            "resumed_from": sorted({s.metadata.get("start_rollout_id", rollout_id)
                                    for g in groups for s in g}),
        }
        self._samples_file.write(json.dumps(record) + "\n")
        self._samples_file.flush()

    def _eval_due(self, rollout_id: int, final: bool = False) -> bool:
        c = self.config
        if not c.eval_interval or not c.eval_sets:
            return False
        if final:
            return True
        if rollout_id == 0:
            return not c.skip_eval_before_train
        return rollout_id % c.eval_interval == 0

    def _epoch_rollouts(self) -> int:
        per_epoch = max(1, len(self.prompts) // self.config.rollout_batch_size)
        return per_epoch * (self.config.num_epoch or 1)

    def _report(self, rollout_id: int, end: int, metrics: dict[str, float], saved: str | None) -> None:
        self.metrics.observe(metrics)
        self._log_file.write(json.dumps({"rollout_id": rollout_id, "time": time.time(), **metrics}) + "\n")
        self._log_file.flush()
        self.reporter.report(ProgressReport(
            rollout_id=rollout_id, num_rollout=end,
            reward=metrics.get("rollout/reward_mean"), eval_score=metrics.get("eval/score"),
            checkpoint=saved, weight_version=self.weight_version,
        ))

    def stop(self) -> None:
        import ray

        if self._router is not None:
            self._router.stop()
        for engine in self._engines:
            try:
                ray.get(engine.stop.remote(), timeout=30)
            except Exception as exc:  # shutting down: log, keep going
                log.warning("engine stop failed: %s", exc)
        for process in self._prelaunched:  # stopped by their host actors; this reaps them (or stops them)
            process.stop()
        self._log_file.close()
        self._samples_file.close()
        self.reporter.close()
        self.pool.close()


def _progress_bar(start: int, end: int, enabled: bool):
    """A one-line console progress display: rollout n/N, reward, step time."""
    if not enabled:
        return lambda rollout_id, metrics: None
    from tqdm import tqdm

    bar = tqdm(total=end, initial=start, unit="rollout", dynamic_ncols=True)

    def update(rollout_id: int, metrics: dict[str, float]) -> None:
        shown = {"reward": f"{metrics.get('rollout/reward_mean', 0):.3f}",
                 "step": f"{metrics.get('time/step_s', 0):.1f}s"}
        if "eval/score" in metrics:
            shown["eval"] = f"{metrics['eval/score']:.3f}"
        bar.set_postfix(shown)
        bar.update(1)

    return update


@contextmanager
def _sigint_ignored(enabled: bool) -> Iterator[None]:
    """Ignore SIGINT while child processes are spawned, so they inherit the ignored disposition."""
    if not enabled or sys.platform == "win32":
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


class QuietInterruptedTasks(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for a Ctrl-C or SIGTERM: a signal that lands
    while a task runs is stored in that task as well as raised, and the task's traceback, printed when it
    is collected, would bury the one-line "interrupted" message under a stack trace."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[0] if record.exc_info else None
        return not (exc is not None and issubclass(exc, KeyboardInterrupt))


def _stopped_by(exc: BaseException) -> str | None:
    """The signal behind an exception: SIGINT (KeyboardInterrupt), SIGTERM (ours, or Ray's handler,
    which calls sys.exit(15)), or None for anything else."""
    if isinstance(exc, KeyboardInterrupt):
        return "SIGTERM" if exc.args == ("SIGTERM",) else "SIGINT"
    if isinstance(exc, SystemExit) and exc.code == signal.SIGTERM:
        return "SIGTERM"
    return None


def _interrupted_message(driver: Driver | None, job: RLTrainingJob, how: str) -> str:
    where = (f"rollout {driver.current_rollout}" if driver and driver.current_rollout is not None
             else "start-up")
    saved = driver.last_saved if driver else None
    if saved is not None:
        resume = f"last checkpoint at rollout {saved[0]} ({saved[1]}); rerun the same command to resume"
    elif job.spec.checkpoint.save:
        resume = "no checkpoint yet; rerun the same command to start again"
    else:
        resume = "no checkpoints (spec.checkpoint.save is unset); rerun to start again"
    return f"{job.metadata.name}: interrupted ({how}) at {where}; {resume}"


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _child_processes() -> set[Any]:
    import psutil

    return set(psutil.Process().children(recursive=True))  # a Process is its pid and start time


def _children_since(before: set[Any]) -> list[Any]:
    """This process's descendants that were not in ``before``: the run's own (Ray, the grading pool)."""
    return [p for p in _child_processes() if p not in before]


def _stop_local_ray(children: list[Any]) -> None:
    """Shut Ray down and make sure none of its processes outlives this one. ``children`` are only the
    processes started during the run: a caller's own children (a test session's control plane) are
    never touched."""
    import psutil
    import ray

    if ray.is_initialized():
        ray.shutdown()
    alive = [p for p in children if p.is_running()]
    _, alive = psutil.wait_procs(alive, timeout=5)
    for proc in alive:  # agents that did not notice their raylet is gone
        with suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def run_job(job: RLTrainingJob, options: DriverOptions) -> list[dict[str, float]]:
    """Print the header, start, run and always stop a driver, then print the summary.

    A finished job returns at once, before Ray starts. Ctrl-C and SIGTERM stop the run cleanly: Ray and its
    processes are shut down and ``TrainingInterrupted`` says where it stopped and how to resume.
    """
    config = resolve(job, in_cluster=options.in_cluster)
    point = resume_point(config)
    finished = already_complete(job, point) if options.max_rollouts is None else None
    if finished:
        print(finished, file=sys.stderr)
        return []
    end = job.spec.rollout.num_rollout
    if end is not None and options.max_rollouts is not None:
        end = min(end, point.next_rollout + options.max_rollouts)
    options.run_dir.mkdir(parents=True, exist_ok=True)
    (options.run_dir / "job.json").write_text(json.dumps(
        {"name": job.metadata.name, "namespace": job.metadata.namespace}))
    print(f"kuberl: training {job.metadata.name}\n"
          f"{startup_header(job, config, options.run_dir, point, end)}", file=sys.stderr, flush=True)
    local = options.ray_address is None
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, QuietInterruptedTasks) for f in asyncio_log.filters):
        asyncio_log.addFilter(QuietInterruptedTasks())
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt) if local else None
    # Our own SIGINT handler too: asyncio.run otherwise turns Ctrl-C into a task cancellation, which a
    # collector busy aborting requests could absorb (seen as a flaky interrupt test).
    previous_int = signal.signal(signal.SIGINT, _raise_interrupt) if local else None
    started = time.monotonic()
    driver: Driver | None = None
    history: list[dict[str, float]] = []
    before = _child_processes() if local else set()  # the caller's processes, which cleanup leaves alone
    try:
        driver = Driver(job, options)
        driver.start()
        if local:  # ray.init put its C++ failure handler on SIGTERM (it aborts): take the signals back
            signal.signal(signal.SIGTERM, _raise_interrupt)
            signal.signal(signal.SIGINT, _raise_interrupt)
        history = driver.run()
    except (KeyboardInterrupt, SystemExit) as exc:
        how = _stopped_by(exc)
        if how is None:
            raise
        raise TrainingInterrupted(_interrupted_message(driver, job, how),
                                  130 if how == "SIGINT" else 143) from None
    finally:
        # Cleanup runs to the end: a second Ctrl-C must not leave Ray's processes behind.
        with _sigint_ignored(local):
            if local:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            children = _children_since(before) if local else []
            if driver is not None:
                driver.stop()
            if local:
                _stop_local_ray(children)
                signal.signal(signal.SIGTERM, previous_term or signal.SIG_DFL)
                signal.signal(signal.SIGINT, previous_int or signal.default_int_handler)
    saved = driver.last_saved[1] if driver and driver.last_saved else None
    record = {**summary_record(history, options.run_dir),
              "startup_s": {k: round(v, 2) for k, v in (driver.startup_s if driver else {}).items()}}
    (options.run_dir / "summary.json").write_text(json.dumps(record))
    print(f"kuberl: {job.metadata.name} done\n"
          f"{summary_table(history, options.run_dir, saved, time.monotonic() - started)}", flush=True)
    return history
