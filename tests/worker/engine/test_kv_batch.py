"""The batched KV cache against the naive reference: each sequence run alone through the model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from kuberl.worker.engine.kv_batch import KVBatch, prefill


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def alone(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1)


def test_rows_joining_and_leaving_keep_their_own_logits(model):
    cpu = torch.device("cpu")
    batch = KVBatch(cpu)
    a, b, c = [1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11, 12]
    seqs = {}
    for group in ([a, b], [c]):  # c joins after a and b have decoded a step
        logits, cache, mask = prefill(model, group, cpu, full_logits=False)
        nxt = logits[:, -1].argmax(-1)
        for seq, t in zip(group, nxt.tolist(), strict=True):
            assert torch.allclose(torch.log_softmax(logits[group.index(seq), -1], -1),
                                  alone(model, seq), atol=1e-4)
            seqs[len(seqs)] = [*seq, t]
        batch.add(cache, mask, nxt)
        logits = batch.decode(model)
        for row, seq in enumerate(seqs.values()):
            assert torch.allclose(torch.log_softmax(logits[row], -1), alone(model, seq), atol=1e-4)
        nxt = logits.argmax(-1)
        batch.next_tokens = nxt
        for row, t in enumerate(nxt.tolist()):
            seqs[row].append(t)
    batch.keep([2, 0])  # drop b (the longest): padding columns go away
    assert batch.mask.shape[1] == max(len(seqs[2]), len(seqs[0])) - 1
    logits = batch.decode(model)
    assert torch.allclose(torch.log_softmax(logits[0], -1), alone(model, seqs[2]), atol=1e-4)
    assert torch.allclose(torch.log_softmax(logits[1], -1), alone(model, seqs[0]), atol=1e-4)
