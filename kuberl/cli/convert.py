"""``kuberl convert {hf-to-dist,dist-to-hf} SOURCE TARGET``: HF checkpoint <-> Megatron dist checkpoint.

A thin shell over ``kuberl.worker.train.megatron_convert`` (CPU, gloo; one process per TP rank).
"""

from __future__ import annotations

import argparse
import json

from kuberl.errors import SpecError

EPILOG = """\
examples:
  kuberl convert hf-to-dist models/GLM-Z1-9B-0414 ckpt/glm4-9b-dist --tp 2 --preset glm4-9b
  kuberl convert dist-to-hf runs/job/checkpoints/rollout_000099/trainer out/hf \\
      --hf-config models/GLM-Z1-9B-0414
The dist checkpoint is what spec.model.refLoad (and the Megatron trainer's load) reads; the vocabulary
is padded to a multiple of 128 x TP, so use the trainer's spec.perf.tensorModelParallelSize for --tp."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert HF <-> Megatron dist checkpoints (CPU)", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("direction", choices=["hf-to-dist", "dist-to-hf"])
    parser.add_argument("source", help="the checkpoint directory to read")
    parser.add_argument("target", help="the directory to write (written atomically)")
    parser.add_argument("--tp", type=int, default=None,
                        help="tensor-parallel size (hf-to-dist: default 1; dist-to-hf: default from the "
                             "checkpoint's padded vocabulary)")
    parser.add_argument("--preset", default=None,
                        help="check config.json against a spec.model.architecture preset (e.g. glm4-9b)")
    parser.add_argument("--hf-config", default=None,
                        help="dist-to-hf: the HF checkpoint whose config.json and tokenizer describe SOURCE "
                             "(default SOURCE/hf_config, written by hf-to-dist)")
    parser.add_argument("--dtype", default="auto",
                        help="weights dtype: auto (config.json's / the checkpoint's), float32, bfloat16")
    parser.add_argument("--force", action="store_true", help="replace TARGET if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from kuberl.worker.train.megatron_convert import convert, describe, plan_conversion
    except ImportError as exc:
        raise SpecError([f"kuberl convert needs megatron-core ({exc}); pip install kuberl[megatron]"]) from exc

    plan = plan_conversion(args.direction, args.source, args.target, tp=args.tp, preset=args.preset,
                           hf_config=args.hf_config, dtype=args.dtype, force=args.force)
    convert(plan)
    print(json.dumps({"converted": describe(plan)}))
    return 0
