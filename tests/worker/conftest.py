"""Shared worker fixtures: a tiny model directory and embedded engines serving it."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

# Real-SGLang mode for the protocol tests: set KUBERL_SGLANG_URL (and optionally KUBERL_SGLANG_URL_2
# for the two-engine tests, KUBERL_SGLANG_MODEL_PATH for the forward-pass and reload checks).
SGLANG_URL = os.environ.get("KUBERL_SGLANG_URL")
TINY_CONTEXT = 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen2-architecture model (hidden 64, 2 layers) with a BPE tokenizer and chat template."""
    from kuberl.worker.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2", seed=0,
                            max_position_embeddings=TINY_CONTEXT)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def engine_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An engine URL: real SGLang when KUBERL_SGLANG_URL is set, else the embedded engine started
    as a subprocess through the launcher (``python -m kuberl.worker.engine.server``)."""
    if SGLANG_URL:
        yield SGLANG_URL
        return
    from kuberl.worker.engine.launcher import EngineSpec, launch_engine

    spec = EngineSpec(model_path=str(tiny_model_dir), port=free_port(), kind="embedded")
    log = tmp_path_factory.mktemp("engine-log") / "engine.log"
    proc = launch_engine(spec, log_path=str(log))
    try:
        asyncio.run(proc.wait_ready(timeout_s=120))
    except Exception as e:
        proc.stop()
        raise AssertionError(f"embedded engine did not start; log:\n{log.read_text()[-3000:]}") from e
    yield spec.url
    proc.stop()


@pytest.fixture(scope="session")
def second_engine_url(tiny_model_dir: Path) -> Iterator[str]:
    """A second engine for router/balancer tests (in-process thread for the embedded case)."""
    if SGLANG_URL:
        url = os.environ.get("KUBERL_SGLANG_URL_2")
        if not url:
            pytest.skip("set KUBERL_SGLANG_URL_2 to run two-engine tests against real SGLang")
        yield url
        return
    from kuberl.worker.engine.server import EngineArgs, serve_in_thread

    handle = serve_in_thread(EngineArgs(model_path=str(tiny_model_dir), port=0))
    yield handle.url
    handle.stop()


@pytest.fixture
def thread_engine(tiny_model_dir: Path):
    """A fresh embedded engine in this process, for tests that change its weights or state."""
    from kuberl.worker.engine.server import EngineArgs, serve_in_thread

    handle = serve_in_thread(EngineArgs(model_path=str(tiny_model_dir), port=0))
    yield handle
    handle.stop()
