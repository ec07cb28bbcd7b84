"""One GRPO batch through kuberl's production path and through TRL's own ``GRPOTrainer._compute_loss``:
the same loss and the same gradients of every parameter (fp64), for TRL's token-level ``dapo`` loss
(kuberl's ``calculatePerTokenLoss``) and its per-sequence ``grpo`` loss (kuberl's default).

kuberl's side is ``TorchBackend.train_step`` (packed rows, response-only logits) with SGD at lr 1, so the
gradient is read back as weights before minus after. TRL's side is its real loss on the inputs its
``_generate_and_score_completions`` would hand it (left-padded prompts, right-padded completions).
The advantages differ by design only in the std epsilon (docs/algorithms.md, "kuberl and TRL").
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from kuberl.worker.algo.advantages import GROUP_STD_EPS, compute_advantages
from kuberl.worker.algo.losses import LossConfig
from kuberl.worker.train.batch import TrainSample
from kuberl.worker.train.torch_backend import TorchBackend, TorchBackendConfig

G = 4
COMPLETIONS = [[7, 3], [9], [4, 4, 12], [11, 2, 8], [5, 5], [6], [10, 3, 3], [2, 9],
               [8, 8, 8], [3], [12, 4], [7, 6, 5]]
REWARDS = [1.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.3]  # one zero-spread group
EQUAL_PROMPTS = [[5, 6, 7, 8], [5, 9, 10, 4], [5, 6, 11, 12]]
MIXED_PROMPTS = [[5, 6, 7, 8], [5, 9, 10], [5, 6, 11, 12, 13]]
TRL_STD_EPS = 1e-4  # grpo_trainer.py: advantages / (std_rewards + 1e-4)
OPT = {"type": "sgd", "lr": 1.0, "min_lr": 0.0, "lr_decay_style": "constant", "lr_warmup_iters": 0,
       "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_eps": 1e-8, "clip_grad": 0.0,
       "seed": 1}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kuberl.worker.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-vs-trl"), "glm4", seed=0)


@pytest.fixture(scope="module")
def trl_trainer(model_dir: Path):
    """A real GRPOTrainer on the fp64 model (clip 0.2/0.28, no KL), used only for ``_compute_loss``."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="kuberl-trl-"), per_device_train_batch_size=len(COMPLETIONS),
        num_generations=G, max_completion_length=3, loss_type="dapo", epsilon=0.2, epsilon_high=0.28,
        beta=0.0, use_cpu=True, bf16=False, report_to="none", learning_rate=1.0)
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64),
        reward_funcs=lambda completions, **_: [0.0] * len(completions), args=config,
        train_dataset=Dataset.from_list([{"prompt": "a"}] * 16),
        processing_class=AutoTokenizer.from_pretrained(model_dir))
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); one window here
    return trainer


def trl_advantages() -> torch.Tensor:
    r = torch.tensor(REWARDS, dtype=torch.float64).view(-1, G)
    centred = r - r.mean(1, keepdim=True)
    return (centred / (r.std(1, keepdim=True) + TRL_STD_EPS)).reshape(-1)


def kuberl_step(model_dir: Path, prompts: list[list[int]], advantages: torch.Tensor, per_token: bool):
    backend = TorchBackend(TorchBackendConfig(
        hf_checkpoint=str(model_dir), optimizer=OPT, device="cpu", dtype="float64",
        loss=LossConfig(eps_clip=0.2, eps_clip_high=0.28, per_token=per_token)))
    before = {n: p.detach().clone() for n, p in backend.model.named_parameters()}
    samples = [TrainSample(tokens=prompts[i // G] + c, prompt_len=len(prompts[i // G]),
                           advantages=[float(advantages[i])] * len(c), loss_mask=[1] * len(c))
               for i, c in enumerate(COMPLETIONS)]
    metrics = backend.train_step(samples)
    grads = {n: before[n] - p.detach() for n, p in backend.model.named_parameters()}
    return metrics["train/loss"], grads


def trl_step(trainer, prompts: list[list[int]], advantages: torch.Tensor, loss_type: str):
    B, P, C = len(COMPLETIONS), max(map(len, prompts)), max(map(len, COMPLETIONS))
    prompt_ids, prompt_mask = torch.zeros(B, P, dtype=torch.long), torch.zeros(B, P, dtype=torch.long)
    comp_ids, comp_mask = torch.zeros(B, C, dtype=torch.long), torch.zeros(B, C, dtype=torch.long)
    for i, c in enumerate(COMPLETIONS):
        p = prompts[i // G]
        prompt_ids[i, P - len(p):], prompt_mask[i, P - len(p):] = torch.tensor(p), 1
        comp_ids[i, : len(c)], comp_mask[i, : len(c)] = torch.tensor(c), 1
    trainer.loss_type = loss_type
    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer._compute_loss(trainer.model, {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": comp_ids,
        "completion_mask": comp_mask, "advantages": advantages, "num_items_in_batch": comp_mask.sum()})
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in trainer.model.named_parameters()}


def test_advantages_differ_from_trls_only_in_the_std_epsilon():
    lengths = [len(c) for c in COMPLETIONS]
    ours = torch.stack([a[0] for a in compute_advantages(
        torch.tensor(REWARDS), lengths, G, {"advantage_estimator": "grpo"})]).double()
    r = torch.tensor(REWARDS, dtype=torch.float64).view(-1, G)
    std = r.std(1).repeat_interleave(G)
    theirs = trl_advantages()
    assert torch.allclose(ours * (std + GROUP_STD_EPS), theirs * (std + TRL_STD_EPS), atol=1e-6)
    assert (ours - theirs).abs().max() < 5e-4  # the size of the design difference on unit-scale rewards
    assert ours[4:8].abs().max() == 0 and theirs[4:8].abs().max() == 0  # no signal, either side


# TRL scores tokens with its chunked log-softmax kernel (trl/kernels/chunked_logprob.py), whose running
# statistics are fp32 even for an fp64 model; kuberl keeps the model's fp64. Gradients (up to ~0.4 here)
# therefore agree to about 2e-7 of the largest gradient, not 1e-12 (measured: 9e-7 and 1.1e-6 against a
# largest gradient of 5.6 and 5.2); a real difference (a wrong normaliser, clip or mask) is >= 1e-3 of it.
GRAD_REL = 1e-6


def grad_gap(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> float:
    """The largest gradient difference over all parameters, relative to the largest gradient."""
    scale = max(float(g.abs().max()) for g in theirs.values())
    return max(float((ours[n] - g).abs().max()) for n, g in theirs.items()) / scale


@pytest.mark.parametrize("prompts", [EQUAL_PROMPTS, MIXED_PROMPTS], ids=["equal", "left-padded"])
@pytest.mark.parametrize(("per_token", "loss_type"), [(True, "dapo"), (False, "grpo")])
def test_loss_and_every_gradient_equal_trls(model_dir, trl_trainer, prompts, per_token, loss_type):
    adv = trl_advantages()
    ours_loss, ours_grads = kuberl_step(model_dir, prompts, adv, per_token)
    trl_loss, trl_grads = trl_step(trl_trainer, prompts, adv, loss_type)
    assert ours_loss == pytest.approx(trl_loss, abs=1e-6)
    assert ours_grads.keys() == trl_grads.keys()
    assert grad_gap(ours_grads, trl_grads) < GRAD_REL
    assert max(float(g.abs().max()) for g in trl_grads.values()) > 1e-2  # the check has teeth


def test_the_comparison_catches_a_wrong_normaliser(model_dir, trl_trainer):
    """kuberl's per-sample loss against TRL's token-level one: the gradients must differ well beyond
    GRAD_REL, or the test above could not see a normalisation bug."""
    adv = trl_advantages()
    _, ours = kuberl_step(model_dir, EQUAL_PROMPTS, adv, per_token=False)
    _, theirs = trl_step(trl_trainer, EQUAL_PROMPTS, adv, "dapo")
    assert grad_gap(ours, theirs) > 1e3 * GRAD_REL


def test_one_adamw_step_with_grad_clip_moves_every_weight_as_trls_trainer(model_dir, trl_trainer):
    """The optimizer side of the race: AdamW lr 5e-3, beta2 0.98, no weight decay, grad-norm clip 1
    (the benchmark's settings), kuberl's backend against the optimizer and clipping TRL's Trainer uses."""
    adv = trl_advantages()
    opt = {**OPT, "type": "adam", "lr": 5e-3, "adam_beta2": 0.98, "clip_grad": 1.0}
    backend = TorchBackend(TorchBackendConfig(
        hf_checkpoint=str(model_dir), optimizer=opt, device="cpu", dtype="float64",
        loss=LossConfig(eps_clip=0.2, eps_clip_high=0.28, per_token=True)))
    before = {n: p.detach().clone() for n, p in backend.model.named_parameters()}
    backend.train_step([TrainSample(tokens=EQUAL_PROMPTS[i // G] + c, prompt_len=4,
                                    advantages=[float(adv[i])] * len(c), loss_mask=[1] * len(c))
                        for i, c in enumerate(COMPLETIONS)])
    ours = {n: p.detach() - before[n] for n, p in backend.model.named_parameters()}

    trl_trainer.model.load_state_dict(before)  # earlier tests only read gradients, but be explicit
    trl_trainer.args.learning_rate, trl_trainer.args.adam_beta2 = 5e-3, 0.98
    trl_trainer.args.weight_decay, trl_trainer.args.max_grad_norm = 0.0, 1.0
    trl_trainer.optimizer = None
    optimizer = trl_trainer.create_optimizer()
    trl_step(trl_trainer, EQUAL_PROMPTS, adv, "dapo")
    norm = torch.nn.utils.clip_grad_norm_(trl_trainer.model.parameters(), 1.0)
    optimizer.step()
    theirs = {n: p.detach() - before[n] for n, p in trl_trainer.model.named_parameters()}
    assert float(norm) > 1.0  # the clip is active (though Adam's first step hardly depends on scale)
    # Adam's first step is about lr * sign(g) per element, so an element whose gradient is within TRL's
    # fp32 logprob rounding of zero may step differently; all but 0.1 % of the elements must agree to 1e-3.
    moved = sum(int((s.abs() > 1e-4).sum()) for s in theirs.values())
    agree = sum(int(((ours[n] - s).abs() <= 1e-6 + 1e-3 * s.abs()).sum()) for n, s in theirs.items())
    total = sum(s.numel() for s in theirs.values())
    assert moved > total // 2 and agree >= total - total // 1000, (agree, total)
