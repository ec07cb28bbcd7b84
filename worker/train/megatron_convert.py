"""``kuberl convert``: Hugging Face checkpoint <-> Megatron dist checkpoint, on CPU over gloo.

The conversion builds exactly the model the trainer trains (``megatron_model.build_gpt_model``) on one
process per tensor-parallel rank, and moves weights with the same maps as the trainer
(``load_hf_weights`` / ``iter_hf_weights``), so a converted checkpoint is what ``spec.model.refLoad`` or
``spec.checkpoint.load`` of the Megatron backend reads, and ``dist-to-hf`` of a trainer checkpoint is what
the engines would have received. A dist checkpoint holds the weights under ``model`` (the backend adds
``optimizer`` and ``steps``; conversion reads only ``model``). Megatron pads the vocabulary to a multiple
of 128 x TP, so a dist checkpoint belongs to the TP sizes that give its padded row count.

Planning (every check, with errors that name the flag and the fix) is pure and runs before any process
starts; TP 1 converts in this process, TP > 1 spawns one process per rank.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from kuberl.errors import CheckpointError, SpecError
from kuberl.worker.train.hf_megatron.shape import ModelShape, padded_vocab_size

Direction = Literal["hf-to-dist", "dist-to-hf"]
DIRECTIONS: tuple[Direction, ...] = ("hf-to-dist", "dist-to-hf")
HF_CONFIG_DIR = "hf_config"  # hf-to-dist copies config.json and the tokenizer here, for dist-to-hf
EMBEDDING_KEY = "embedding.word_embeddings.weight"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ConversionPlan:
    """One checked conversion: what to read, what to write, at which TP size and dtype."""

    direction: Direction
    source: Path
    target: Path
    tp: int
    hf_config: Path  # the HF directory whose config.json (and tokenizer) describe the model
    dtype: str  # a key of DTYPES

    @property
    def shape(self) -> ModelShape:
        return ModelShape.from_hf_dir(self.hf_config)


def _hf_dtype(config_dir: Path) -> str:
    config = json.loads((config_dir / "config.json").read_text())
    name = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    return name if name in DTYPES else "float32"


def _tp_problems(shape: ModelShape, tp: int) -> list[str]:
    counts = {"num_attention_heads": shape.num_attention_heads, "num_key_value_heads": shape.num_query_groups,
              "intermediate_size": shape.ffn_hidden_size}
    bad = [f"{k} ({v})" for k, v in counts.items() if v % tp]
    if tp < 1 or bad:
        fits = [t for t in range(1, 9) if all(v % t == 0 for v in counts.values())]
        return [f"--tp {tp} does not divide {', '.join(bad) or 'anything'} of the model; use one of {fits}"]
    return []


def _dist_embedding(source: Path) -> tuple[tuple[int, ...], torch.dtype]:
    """Global shape and dtype of the checkpoint's word embedding, from its metadata only.

    Read with torch.distributed.checkpoint's reader: megatron-core 0.19.2's ``load_tensors_metadata``
    fails with this torch (``empty() got an unexpected keyword argument 'strides'``).
    """
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(source)).read_metadata().state_dict_metadata
    entry = meta.get(EMBEDDING_KEY)
    if entry is None or not hasattr(entry, "size"):
        raise CheckpointError(f"{source}: no {EMBEDDING_KEY} tensor in this dist checkpoint "
                              f"(keys: {sorted(meta)[:5]})")
    return tuple(entry.size), entry.properties.dtype


def matching_tp_sizes(shape: ModelShape, padded_rows: int, limit: int = 64) -> list[int]:
    """The TP sizes whose vocabulary padding gives ``padded_rows`` and which split the model evenly."""
    return [t for t in range(1, limit + 1)
            if padded_vocab_size(shape.vocab_size, t) == padded_rows and not _tp_problems(shape, t)]


def plan_conversion(
    direction: str, source: str | Path, target: str | Path, *, tp: int | None = None,
    preset: str | None = None, hf_config: str | Path | None = None, dtype: str = "auto",
    force: bool = False,
) -> ConversionPlan:
    """Check a conversion request; raise SpecError / CheckpointError naming the flag and the fix.

    ``tp`` None means 1 for hf-to-dist and, for dist-to-hf, the smallest TP size the checkpoint's
    padded vocabulary allows.
    """
    from kuberl.worker.train.megatron_backend import DIST_CKPT_MARKER, is_dist_checkpoint

    if direction not in DIRECTIONS:
        raise SpecError([f"direction {direction!r}: choose one of {', '.join(DIRECTIONS)}"])
    src, dst = Path(source), Path(target)
    problems: list[str] = []
    if dst.exists() and not force:
        problems.append(f"TARGET {dst} exists; remove it or pass --force to replace it")
    if direction == "hf-to-dist":
        if not (src / "config.json").is_file():
            raise CheckpointError(f"SOURCE {src} is not a Hugging Face checkpoint (no config.json); "
                                  "hf-to-dist reads a directory written by save_pretrained")
        if hf_config is not None:
            problems.append("--hf-config is for dist-to-hf (hf-to-dist reads SOURCE/config.json); drop it")
        config_dir = src
    else:
        if not is_dist_checkpoint(src):
            raise CheckpointError(f"SOURCE {src} is not a Megatron dist checkpoint (no {DIST_CKPT_MARKER}); "
                                  "dist-to-hf reads `kuberl convert hf-to-dist` output or a Megatron "
                                  "trainer checkpoint (<save>/rollout_N/trainer)")
        config_dir = Path(hf_config) if hf_config is not None else src / HF_CONFIG_DIR
        if not (config_dir / "config.json").is_file():
            raise CheckpointError(
                f"dist-to-hf needs the model's config.json: pass --hf-config DIR, the Hugging Face "
                f"checkpoint the weights came from (spec.model.hfCheckpoint); {config_dir} has none")
    shape = ModelShape.from_hf_dir(config_dir)
    if preset is not None:
        from kuberl.api.presets import PRESETS

        if preset not in PRESETS:
            problems.append(f"--preset {preset!r} is unknown; choose one of {sorted(PRESETS)} or leave it out")
        else:
            try:
                shape.check_preset(PRESETS[preset])
            except SpecError as exc:
                problems += [f"--preset {preset}: {p.replace('spec.model.architecture', 'the preset')}"
                             for p in exc.problems]
    if dtype != "auto" and dtype not in DTYPES:
        problems.append(f"--dtype {dtype!r}: choose auto or one of {sorted(DTYPES)}")
    if direction == "hf-to-dist":
        size = 1 if tp is None else tp
        problems += _tp_problems(shape, size)
        chosen_dtype = _hf_dtype(config_dir) if dtype == "auto" else dtype
    else:
        (rows, _), ckpt_dtype = _dist_embedding(src)
        fits = matching_tp_sizes(shape, rows)
        if tp is None:
            if not fits:
                raise CheckpointError(f"{src}: its embedding has {rows} rows, which no TP size gives for "
                                      f"vocab_size {shape.vocab_size} of {config_dir}/config.json; is "
                                      "--hf-config the checkpoint these weights came from?")
            size = fits[0]
        else:
            size = tp
            problems += _tp_problems(shape, size)
            if size not in fits:
                problems.append(f"--tp {size}: {src} was written with the vocabulary padded to {rows} rows "
                                f"(TP sizes {fits or 'none'}); pass one of those or leave --tp out")
        chosen_dtype = str(ckpt_dtype).removeprefix("torch.") if dtype == "auto" else dtype
    if problems:
        raise SpecError(problems)
    return ConversionPlan(direction, src, dst, size, config_dir, chosen_dtype)  # type: ignore[arg-type]


def convert(plan: ConversionPlan, port: int | None = None) -> None:
    """Run ``plan``: in this process for TP 1 (when no process group exists), else one process per rank."""
    import torch.distributed as dist

    from kuberl.worker.net import free_port

    port = port or free_port()
    tmp = plan.target.with_name(plan.target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if plan.tp == 1 and not dist.is_initialized():
        _rank_main(0, 1, port, plan, tmp)
    else:
        import torch.multiprocessing as mp

        try:
            mp.start_processes(_rank_main, args=(plan.tp, port, plan, tmp), nprocs=plan.tp,
                               start_method="spawn")
        except mp.ProcessRaisedException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            last = str(exc).strip().splitlines()[-1]
            raise CheckpointError(f"kuberl convert {plan.direction} failed on a TP rank: {last}") from exc
    if plan.direction == "hf-to-dist":
        (tmp / HF_CONFIG_DIR).mkdir()
        from kuberl.worker.train.hf_megatron.io import copy_hf_metadata

        copy_hf_metadata(plan.hf_config, tmp / HF_CONFIG_DIR)
    shutil.rmtree(plan.target, ignore_errors=True)
    tmp.rename(plan.target)


def _rank_main(rank: int, world: int, port: int, plan: ConversionPlan, tmp: Path) -> None:
    """One TP rank: build the shard, move the weights, write (collectively) into ``tmp``."""
    import datetime

    import torch.distributed as dist
    from megatron.core import dist_checkpointing, parallel_state

    from kuberl.worker.train import megatron_model as mm
    from kuberl.worker.train.megatron_cpu import megatron_on_cpu

    cpu = torch.device("cpu")
    with megatron_on_cpu():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=60))
        try:
            par = mm.Parallelism(tp=world)
            mm.init_parallel(par, device=cpu)
            shape = plan.shape
            model = mm.build_gpt_model(shape, par, dtype=DTYPES[plan.dtype], use_te=False, device=cpu)
            tp_rank = parallel_state.get_tensor_model_parallel_rank()
            if plan.direction == "hf-to-dist":
                mm.load_hf_weights(model, shape, str(plan.source), tp_rank, world)
                dist_checkpointing.save({"model": model.sharded_state_dict()}, str(tmp))
            else:
                state = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(plan.source))
                model.load_state_dict(state["model"])
                weights = mm.iter_hf_weights(model, shape, parallel_state.get_tensor_model_parallel_group())
                if rank == 0:
                    from kuberl.worker.train.hf_megatron.io import write_hf_checkpoint

                    write_hf_checkpoint(tmp, weights, plan.hf_config)
                else:
                    for _ in weights:
                        pass
            dist.barrier()
        finally:
            mm.release_parallel()


def describe(plan: ConversionPlan) -> dict[str, Any]:
    """A one-line summary for the CLI."""
    return {"direction": plan.direction, "source": str(plan.source), "target": str(plan.target),
            "tp": plan.tp, "dtype": plan.dtype, "family": plan.shape.family}
