"""Weight sync buckets tensors by size and really changes what an engine serves."""

from __future__ import annotations

import torch

from kuberl.worker.rollout.engine_client import EngineClient
from kuberl.worker.weight_sync import bucket_tensors, push_tensors


def test_buckets_respect_the_byte_budget_and_keep_order() -> None:
    named = [(f"w{i}", torch.zeros(n)) for i, n in enumerate([10, 10, 30, 5, 5])]  # float32: 4 B
    buckets = list(bucket_tensors(named, bucket_bytes=80))
    assert [[n for n, _ in b] for b in buckets] == [["w0", "w1"], ["w2"], ["w3", "w4"]]


async def test_push_tensors_sets_weights_and_version_on_the_engine(thread_engine, tiny_model_dir) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    named = [(n, torch.full_like(t, 0.01)) if n.endswith("lm_head.weight") else (n, t)
             for n, t in model.state_dict().items()]
    async with EngineClient(thread_engine.url) as client:
        before = await client.generate([5, 6, 7], {"max_new_tokens": 4, "temperature": 0})
    stats = await push_tensors([thread_engine.url], named, "7", bucket_bytes=64 * 1024)
    assert stats.calls > 1 and stats.version == "7"
    async with EngineClient(thread_engine.url) as client:
        after = await client.generate([5, 6, 7], {"max_new_tokens": 4, "temperature": 0})
    assert after.weight_version == "7"
    # A constant LM head makes every token equally likely: logprob = -log(V).
    vocab = model.config.vocab_size
    assert abs(after.logprobs[0] + torch.log(torch.tensor(float(vocab))).item()) < 1e-4
    assert before.logprobs != after.logprobs
