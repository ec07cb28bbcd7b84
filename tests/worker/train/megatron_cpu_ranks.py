"""One rank of the Megatron model on CPU (gloo): TP logits and the dist checkpoint of the sharded model.

Launched by test_megatron_dist_cpu.py as N processes (``python megatron_cpu_ranks.py RANK WORLD PORT
ROOT``); rank 0 prints one JSON line of results. megatron-core's CUDA-only calls are redirected by
``kuberl.worker.train.megatron_cpu.megatron_on_cpu`` (the helper the backend itself uses on CPU).
Everything else -- TP layers and collectives, sharded state dicts with their replica ids,
dist_checkpointing save/load -- is megatron's own code on gloo. The whole backend (optimizer included)
on CPU: megatron_backend_cpu_ranks.py.
"""

from __future__ import annotations

import datetime
import json
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

warnings.filterwarnings("ignore")


def tiny_glm4(out: Path) -> None:
    from transformers import Glm4Config, Glm4ForCausalLM

    torch.manual_seed(0)
    model = Glm4ForCausalLM(Glm4Config(
        vocab_size=200, pad_token_id=0, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False,
        max_position_embeddings=256,
    ))
    with torch.no_grad():  # norms start at 1: perturb them so a dropped or swapped norm shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)


def one_layout(tp: int, hf: Path, root: Path, rank: int) -> dict:
    """TP ``tp`` over the world: HF logits parity, then dist checkpoint save -> load into a fresh model."""
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region
    from transformers import AutoModelForCausalLM

    from kuberl.worker.train import megatron_model as mm
    from kuberl.worker.train.hf_megatron import ModelShape

    par = mm.Parallelism(tp=tp)
    mm.init_parallel(par, device=torch.device("cpu"))
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    shape = ModelShape.from_hf_dir(hf)
    model = mm.build_gpt_model(shape, par, dtype=torch.float32, use_te=False, device=torch.device("cpu"))
    mm.load_hf_weights(model, shape, str(hf), tp_rank, tp)
    ids = torch.randint(1, 200, (2, 12), generator=torch.Generator().manual_seed(1))
    causal = torch.ones(12, 12, dtype=torch.bool).triu(1)[None, None]
    pos = torch.arange(12)[None].expand(2, -1)
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(hf).eval()(input_ids=ids).logits
        out = gather_from_tensor_model_parallel_region(
            model(input_ids=ids, position_ids=pos, attention_mask=causal))[..., :200]
    result = {"logits_err": float((out - ref).abs().max())}

    ckpt = root / f"dist_tp{tp}"
    if rank == 0:
        ckpt.mkdir()
    dist.barrier()
    dist_checkpointing.save(model.sharded_state_dict(), str(ckpt))  # validates replica ids
    torch.manual_seed(99)
    fresh = mm.build_gpt_model(shape, par, dtype=torch.float32, use_te=False, device=torch.device("cpu"))
    state = dist_checkpointing.load(fresh.sharded_state_dict(), str(ckpt))
    fresh.load_state_dict(state)
    mine = dict(model.named_parameters())
    result["reload_equal"] = all(torch.equal(p, mine[n]) for n, p in fresh.named_parameters())
    exported = dict(mm.iter_hf_weights(fresh, shape, parallel_state.get_tensor_model_parallel_group()))
    hf_state = AutoModelForCausalLM.from_pretrained(hf).state_dict()
    result["export_equal"] = sorted(exported) == sorted(hf_state) and all(
        torch.equal(exported[n], hf_state[n]) for n in hf_state)
    mm.release_parallel(default_group=False)
    return result


def main(rank: int, world: int, port: int, root: Path) -> None:
    from kuberl.worker.train.megatron_cpu import megatron_on_cpu

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=5))
    hf = root / "hf_glm4"
    if rank == 0:
        tiny_glm4(hf)
    dist.barrier()
    with megatron_on_cpu():
        results = {f"tp{tp}": one_layout(tp, hf, root, rank) for tp in (world, 1)}
    if rank == 0:
        print("RESULT " + json.dumps(results), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
