"""`kuberl convert`: HF -> Megatron dist checkpoint at TP2 (two gloo processes) -> HF gives back every
tensor bit for bit, with the config and tokenizer; bad requests fail before any process starts, with the
flag and the fix in the message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("megatron.core")

from kuberl.cli.main import main as kuberl_main
from kuberl.errors import CheckpointError, SpecError
from kuberl.worker.train.megatron_convert import convert, matching_tp_sizes, plan_conversion


@pytest.fixture(scope="module")
def tiny_glm4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny example's GLM4 (tokenizer included), norms and biases perturbed so a swap would show."""
    from safetensors.torch import load_file, save_file

    from kuberl.worker.tiny_model import build_tiny_model

    out = build_tiny_model(tmp_path_factory.mktemp("glm4") / "hf", "glm4", seed=1)
    state = load_file(str(out / "model.safetensors"))
    gen = torch.Generator().manual_seed(3)
    for name, t in state.items():
        if "norm" in name or name.endswith("bias"):
            state[name] = t + 0.1 * torch.randn(t.shape, generator=gen, dtype=t.dtype)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def dist_tp2(tiny_glm4: Path) -> Path:
    target = tiny_glm4.parent / "dist_tp2"
    assert kuberl_main(["convert", "hf-to-dist", str(tiny_glm4), str(target), "--tp", "2"]) == 0
    return target


@pytest.mark.slow
def test_hf_to_dist_tp2_to_hf_is_bit_identical(tiny_glm4: Path, dist_tp2: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    assert (dist_tp2 / "metadata.json").is_file() and (dist_tp2 / "hf_config" / "config.json").is_file()
    assert not dist_tp2.with_name("dist_tp2.tmp").exists()
    back = tmp_path / "hf_back"
    plan = plan_conversion("dist-to-hf", dist_tp2, back)
    assert plan.tp == 2  # the vocabulary padding of TP2 (512 rows) is not TP1's (384)
    convert(plan)
    original, returned = load_file(str(tiny_glm4 / "model.safetensors")), load_file(str(back / "model.safetensors"))
    assert sorted(returned) == sorted(original)
    for name, tensor in original.items():
        assert returned[name].dtype == tensor.dtype and torch.equal(returned[name], tensor), name
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (back / name).read_bytes() == (tiny_glm4 / name).read_bytes(), name


@pytest.mark.slow
def test_a_dist_checkpoint_names_the_tp_sizes_it_fits(tiny_glm4: Path, dist_tp2: Path, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"--tp 1: .* padded to 512 rows \(TP sizes \[2\]\)"):
        plan_conversion("dist-to-hf", dist_tp2, tmp_path / "x", tp=1)
    with pytest.raises(SpecError, match=r"TARGET .* exists; remove it or pass --force"):
        plan_conversion("dist-to-hf", dist_tp2, tiny_glm4)
    assert plan_conversion("dist-to-hf", dist_tp2, tiny_glm4, force=True).tp == 2


def test_hf_to_dist_refuses_what_cannot_work_naming_the_flag(tiny_glm4: Path, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"--tp 3 does not divide num_attention_heads \(4\), "
                                        r"num_key_value_heads \(2\).*use one of \[1, 2\]"):
        plan_conversion("hf-to-dist", tiny_glm4, tmp_path / "d", tp=3)
    with pytest.raises(SpecError, match="--preset glm4-9b: the preset does not match"):
        plan_conversion("hf-to-dist", tiny_glm4, tmp_path / "d", preset="glm4-9b")
    with pytest.raises(SpecError, match="--preset 'nope' is unknown"):
        plan_conversion("hf-to-dist", tiny_glm4, tmp_path / "d", preset="nope")
    with pytest.raises(CheckpointError, match="not a Hugging Face checkpoint"):
        plan_conversion("hf-to-dist", tmp_path, tmp_path / "d")
    with pytest.raises(CheckpointError, match="not a Megatron dist checkpoint"):
        plan_conversion("dist-to-hf", tiny_glm4, tmp_path / "d")
    plan = plan_conversion("hf-to-dist", tiny_glm4, tmp_path / "d")
    assert (plan.tp, plan.dtype) == (1, "float32")


def test_the_cli_prints_the_problem_and_exits_2(tiny_glm4: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = kuberl_main(["convert", "hf-to-dist", str(tiny_glm4), str(tmp_path / "d"), "--tp", "3"])
    assert code == 2
    assert "--tp 3 does not divide" in capsys.readouterr().err


def test_matching_tp_sizes_follow_megatrons_vocabulary_padding() -> None:
    from kuberl.worker.train.hf_megatron.shape import ModelShape

    shape = ModelShape(family="glm4", num_layers=1, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                       num_query_groups=4, head_dim=16, vocab_size=151552, rotary_base=1e4)
    assert matching_tp_sizes(shape, 151552) == [1, 2, 4]  # 151552 = 1184 x 128: no padding up to TP 8
    assert matching_tp_sizes(shape, 999) == []
