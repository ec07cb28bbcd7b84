"""The torch trainer backend agrees with the engine, learns, saves and resumes (packing invariance of its
update: test_torch_backend_packing.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from kuberl.worker.algo.losses import LossConfig
from kuberl.worker.rollout.engine_client import EngineClient
from kuberl.worker.train.batch import TrainSample
from kuberl.worker.train.torch_backend import TorchBackend, TorchBackendConfig

ALGO = {"advantage_estimator": "grpo", "use_kl_loss": False, "kl_loss_coef": 0.0, "kl_loss_type": "k1",
        "kl_coef": 0.0, "entropy_coef": 0.0, "eps_clip": 0.2, "eps_clip_high": 0.28, "eps_clip_c": None,
        "normalize_advantages": False, "grpo_std_normalization": True,
        "calculate_per_token_loss": False, "use_tis": False, "tis_clip": 2.0, "tis_clip_low": 0.0,
        "gamma": 1.0}
OPT = {"type": "adam", "lr": 1e-3, "min_lr": 0.0, "lr_decay_style": "constant", "lr_warmup_iters": 0,
       "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_eps": 1e-8, "clip_grad": 1.0,
       "seed": 1}


def backend(model_dir: Path, **kw) -> TorchBackend:
    return TorchBackend(TorchBackendConfig(hf_checkpoint=str(model_dir), loss=LossConfig.from_algorithm(ALGO), optimizer=OPT,
                                           device="cpu", **kw))


@pytest.mark.parametrize("temperature", [1.0, 0.8])
async def test_trainer_logprobs_match_the_engine_at_the_rollout_temperature(
    thread_engine, tiny_model_dir: Path, temperature: float
) -> None:
    prompt = [11, 12, 13, 14]
    async with EngineClient(thread_engine.url) as client:
        out = await client.generate(prompt, {"max_new_tokens": 12, "temperature": temperature,
                                             "sampling_seed": 3, "ignore_eos": True})
    sample = TrainSample(tokens=prompt + out.output_ids, prompt_len=len(prompt),
                         advantages=[0.0] * len(out.output_ids), loss_mask=[1] * len(out.output_ids))
    trainer = backend(tiny_model_dir, temperature=temperature)
    (logprobs,) = trainer.compute_logprobs([sample])
    assert logprobs == pytest.approx(out.logprobs, abs=1e-4)


def samples_for(tokens: list[list[int]], advantages: list[float]) -> list[TrainSample]:
    out = []
    for t, a in zip(tokens, advantages, strict=True):
        r = len(t) - 3
        out.append(TrainSample(tokens=t, prompt_len=3, advantages=[a] * r, loss_mask=[1] * r))
    return out


def test_positive_advantage_raises_the_sampled_tokens_probability(tiny_model_dir: Path) -> None:
    trainer = backend(tiny_model_dir)
    samples = samples_for([[5, 6, 7, 20, 21]], [1.0])
    before = trainer.compute_logprobs(samples)[0]
    samples[0].old_logprobs = before
    for _ in range(3):
        trainer.train_step(samples)
    after = trainer.compute_logprobs(samples)[0]
    assert sum(after) > sum(before)


def test_save_and_load_restore_weights_and_optimizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    trainer = backend(tiny_model_dir)
    samples = samples_for([[5, 6, 7, 20, 21]], [1.0])
    samples[0].old_logprobs = trainer.compute_logprobs(samples)[0]
    trainer.train_step(samples)
    trainer.save(tmp_path)
    restored = backend(tiny_model_dir)
    restored.load(tmp_path)
    assert restored.compute_logprobs(samples) == trainer.compute_logprobs(samples)
    assert restored.steps == 1
    assert restored.optimizer.state_dict()["state"].keys() == trainer.optimizer.state_dict()["state"].keys()


async def test_tied_embeddings_sync_to_an_engine(tmp_path: Path) -> None:
    """A model with tied input/output embeddings (SmolLM2, Qwen2.5-0.5B) exports each weight once."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from kuberl.worker.engine.server import EngineArgs, serve_in_thread
    from kuberl.worker.weight_sync import SyncSettings, WeightSender

    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                         max_position_embeddings=64)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    trainer = backend(tmp_path)
    names = [n for n, _ in trainer.named_weights()]
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    handle = serve_in_thread(EngineArgs(model_path=str(tmp_path), port=0))
    try:
        stats = await asyncio.to_thread(WeightSender().sync, trainer.named_weights(), [handle.url],
                                        "1", SyncSettings("ipc"))
        assert stats.version == "1"
    finally:
        handle.stop()


def test_step_without_old_logprobs_equals_step_with_a_recomputed_pass(tiny_model_dir: Path) -> None:
    """One step per rollout: skipping the old-logprob pass changes nothing (the old policy is current)."""
    tokens = [[5, 6, 7, 8, 9, 10], [5, 6, 7, 11, 12]]
    a, b = backend(tiny_model_dir), backend(tiny_model_dir)
    with_pass = samples_for(tokens, [1.0, -1.0])
    for s, lp in zip(with_pass, a.compute_logprobs(with_pass), strict=True):
        s.old_logprobs = lp
    ma = a.train_step(with_pass)
    mb = b.train_step(samples_for(tokens, [1.0, -1.0]))
    assert ma["train/grad_norm"] == pytest.approx(mb["train/grad_norm"], rel=1e-6)
    for (name, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-7), name


def test_no_save_optim_writes_no_optimizer_and_resumes_with_a_fresh_one(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """spec.checkpoint.noSaveOptim: weights, LR schedule and step count are kept; Adam moments are not."""
    opt = {**OPT, "lr_warmup_iters": 10}
    trainer = TorchBackend(TorchBackendConfig(hf_checkpoint=str(tiny_model_dir), loss=LossConfig.from_algorithm(ALGO),
                                              optimizer=opt, device="cpu", save_optim=False))
    samples = samples_for([[5, 6, 7, 20, 21]], [1.0])
    for _ in range(2):
        trainer.train_step(samples)
    trainer.save(tmp_path)
    assert not (tmp_path / "optimizer.pt").exists() and (tmp_path / "trainer_state.pt").exists()

    restored = TorchBackend(TorchBackendConfig(hf_checkpoint=str(tiny_model_dir), loss=LossConfig.from_algorithm(ALGO),
                                               optimizer=opt, device="cpu"))
    with caplog.at_level("WARNING"):
        restored.load(tmp_path)
    assert "fresh optimizer" in caplog.text and "noSaveOptim" in caplog.text
    assert restored.steps == 2 and restored.optimizer.state_dict()["state"] == {}
    # The warm-up continues where it stopped (step 3 of 10), not from step 1.
    assert restored.optimizer.param_groups[0]["lr"] == pytest.approx(OPT["lr"] * 3 / 10)
    assert restored.compute_logprobs(samples) == trainer.compute_logprobs(samples)


def test_checkpoint_with_optimizer_restores_the_same_next_step(tiny_model_dir: Path, tmp_path: Path) -> None:
    trainer = backend(tiny_model_dir)
    samples = samples_for([[5, 6, 7, 20, 21], [5, 6, 7, 9]], [1.0, -1.0])
    trainer.train_step(samples)
    trainer.save(tmp_path)
    assert (tmp_path / "optimizer.pt").exists()
    restored = backend(tiny_model_dir)
    restored.load(tmp_path)
    a, b = trainer.train_step(samples), restored.train_step(samples)
    assert a == b
    for (name, pa), (_, pb) in zip(trainer.model.named_parameters(), restored.model.named_parameters(),
                                   strict=True):
        assert torch.equal(pa, pb), name


def test_model_parallel_sizes_are_refused_by_the_torch_backend() -> None:
    import dataclasses

    from kuberl.api import load_jobs
    from kuberl.api.resolve import resolve
    from kuberl.errors import SpecError
    from tests.api.cases import EXAMPLES

    config = resolve(load_jobs(EXAMPLES / "tiny" / "job.yaml")[0], in_cluster=False)
    TorchBackendConfig.from_worker_config(config)  # data-parallel only: fine
    with pytest.raises(SpecError, match=r"spec\.perf\.tensorModelParallelSize=2.*megatron"):
        TorchBackendConfig.from_worker_config(dataclasses.replace(config, tensor_model_parallel_size=2))


def test_weight_decay_skips_biases_and_norms_as_megatron_does(tiny_model_dir: Path) -> None:
    """Zero advantages give zero gradients, so an SGD step with decay only shrinks decayed weights."""
    opt = {**OPT, "type": "sgd", "lr": 0.5, "weight_decay": 0.1, "clip_grad": 0.0}
    trainer = TorchBackend(TorchBackendConfig(hf_checkpoint=str(tiny_model_dir), loss=LossConfig.from_algorithm(ALGO), optimizer=opt,
                                              device="cpu"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train_step(samples_for([[5, 6, 7, 8, 9], [5, 6, 7, 10]], [0.0, 0.0]))
    after = dict(trainer.model.named_parameters())
    skipped = [n for n in before if n.endswith(".bias") or before[n].ndim == 1]
    assert any(n.endswith(".bias") for n in skipped) and any("norm" in n for n in skipped)
    for name, w in before.items():
        expected = w if name in skipped else w * (1 - 0.5 * 0.1)
        assert torch.allclose(after[name].detach(), expected, atol=1e-7), name


def test_one_group_optimizer_checkpoint_from_before_decay_groups_still_loads(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    trainer = backend(tiny_model_dir, dtype="float32")
    samples = samples_for([[5, 6, 7, 8, 9], [5, 6, 7, 10]], [1.0, -1.0])
    # A checkpoint as written before the decay groups: AdamW over model.parameters() as ONE group.
    legacy = torch.optim.AdamW([p for p in trainer.model.parameters() if p.requires_grad], lr=1e-3,
                               weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(legacy, lambda step: 1.0)
    for p in trainer.model.parameters():
        p.grad = torch.randn_like(p)
    legacy.step()
    scheduler.step()
    trainer.save(tmp_path / "ckpt")
    torch.save({"optimizer": legacy.state_dict()}, tmp_path / "ckpt" / "optimizer.pt")
    torch.save({"scheduler": scheduler.state_dict(), "steps": 1, "dp_size": 1},
               tmp_path / "ckpt" / "trainer_state.pt")

    resumed = backend(tiny_model_dir, dtype="float32")
    resumed.load(tmp_path / "ckpt")
    assert len(resumed.optimizer.param_groups) == 2
    legacy_state = dict(zip((n for n, p in trainer.model.named_parameters() if p.requires_grad),
                            (legacy.state[p] for p in legacy.param_groups[0]["params"]), strict=True))
    for name, p in resumed.model.named_parameters():
        assert torch.equal(resumed.optimizer.state[p]["exp_avg"], legacy_state[name]["exp_avg"]), name
    assert resumed.scheduler.get_last_lr() == [1e-3, 1e-3]
    resumed.train_step(samples)  # the restored state steps without error
