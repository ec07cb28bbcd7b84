from __future__ import annotations

import sys

import pytest

from kuberl.errors import EngineError
from kuberl.worker.engine.launcher import EngineSpec, engine_command, router_command


def test_sglang_command_sets_tp_and_converts_camel_case_passthrough():
    spec = EngineSpec(model_path="/ckpt/glm", port=30001, host="0.0.0.0", kind="sglang", tp_size=2,
                      server_args={"memFractionStatic": 0.7, "enableMemorySaver": True,
                                   "disableRadixCache": False})
    argv = engine_command(spec, python="python")
    assert argv[:3] == ["python", "-m", "sglang.launch_server"]
    assert argv[argv.index("--tp-size") + 1] == "2"
    assert argv[argv.index("--mem-fraction-static") + 1] == "0.7"
    assert "--enable-memory-saver" in argv and "--disable-radix-cache" not in argv
    assert spec.url == "http://127.0.0.1:30001"


def test_embedded_command_uses_the_module_and_refuses_tensor_parallel():
    argv = engine_command(EngineSpec(model_path="m", port=5, server_args=["--foo", "1"]))
    assert argv[:3] == [sys.executable, "-m", "kuberl.worker.engine.server"]
    assert argv[-2:] == ["--foo", "1"]
    with pytest.raises(EngineError, match="one device"):
        engine_command(EngineSpec(model_path="m", port=5, tp_size=2))


def test_passthrough_may_not_override_what_the_launcher_owns():
    with pytest.raises(EngineError, match="--tp-size"):
        engine_command(EngineSpec(model_path="m", port=5, kind="sglang",
                                  server_args={"tpSize": 4}))


def test_router_command_disables_retries_and_lists_workers():
    argv = router_command(["http://a:1", "http://b:2"], 30000, policy="round_robin")
    assert argv[:2] == ["smg", "launch"] and "--disable-retries" in argv
    assert argv[argv.index("--worker-urls") + 1:][:2] == ["http://a:1", "http://b:2"]


def test_seeded_sampling_is_asked_for_with_enable_deterministic_inference_for_both_engines():
    from kuberl.worker.engine.launcher import seeded_sampling
    from kuberl.worker.engine.server import parse_args

    args = {"enableDeterministicInference": True}
    assert seeded_sampling(args) and seeded_sampling(["--enable-deterministic-inference"])
    assert not seeded_sampling({}) and not seeded_sampling({"enableDeterministicInference": False})
    for kind in ("sglang", "embedded"):
        argv = engine_command(EngineSpec(model_path="/m", port=1, kind=kind, server_args=args))
        assert "--enable-deterministic-inference" in argv
    # the twin understands the flag (it honours sampling_seed only with it, as SGLang 0.5.14)
    argv = engine_command(EngineSpec(model_path="/m", port=1, server_args=args))
    assert parse_args(argv[3:]).enable_deterministic_inference
    assert not parse_args(["--model-path", "/m"]).enable_deterministic_inference
