"""A local run's Ray environment: loopback-only listeners and a per-run token, the user's own choices kept.

The whole effect (every listener of a real run on loopback) is checked end to end by
tests/e2e/test_interrupt.py; the gRPC refusal without the token is checked here against a real Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from kuberl.worker.local_ray import LOOPBACK_ONLY, local_ray_environment


def test_a_local_run_asks_for_loopback_and_token_auth_with_a_fresh_token() -> None:
    env: dict[str, str] = {}
    added = local_ray_environment(env)
    assert env[LOOPBACK_ONLY] == "0" and env["RAY_AUTH_MODE"] == "token"
    assert len(env["RAY_AUTH_TOKEN"]) == 64 and added == env
    assert local_ray_environment({})["RAY_AUTH_TOKEN"] != env["RAY_AUTH_TOKEN"]


@pytest.mark.parametrize("user", [{"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_TOKEN": "mine"},
                                  {"RAY_AUTH_TOKEN_PATH": "/secrets/ray-token"}])
def test_the_users_own_ray_auth_settings_win(user: dict[str, str]) -> None:
    env = dict(user)
    local_ray_environment(env)
    for key, value in user.items():
        assert env[key] == value
    if user.get("RAY_AUTH_MODE") == "disabled" or "RAY_AUTH_TOKEN" in user or "RAY_AUTH_TOKEN_PATH" in user:
        assert env.get("RAY_AUTH_TOKEN", "mine") == user.get("RAY_AUTH_TOKEN", env.get("RAY_AUTH_TOKEN", "mine"))
    assert env[LOOPBACK_ONLY] == "0"


PROBE = textwrap.dedent("""
    import os, sys, grpc
    from kuberl.worker.local_ray import prepare_local_ray
    if sys.argv[1] == "ray-imported-first":  # an in-process caller that imported Ray earlier
        import ray
    prepare_local_ray()
    import ray
    ray.init(include_dashboard=False, num_cpus=1, configure_logging=False)
    from ray.core.generated import gcs_service_pb2 as pb, gcs_service_pb2_grpc as rpc
    host, port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
    stub = rpc.NodeInfoGcsServiceStub(grpc.insecure_channel(f"{host}:{port}"))
    token = [("authorization", "Bearer " + os.environ["RAY_AUTH_TOKEN"])]
    for name, md in (("without", None), ("with", token)):
        try:
            stub.GetAllNodeInfo(pb.GetAllNodeInfoRequest(), timeout=10, metadata=md)
            print(name, "OK")
        except grpc.RpcError as e:
            print(name, e.code().name)
    print("node", ray.util.get_node_ip_address())
    ray.shutdown()
""")


@pytest.mark.slow
@pytest.mark.parametrize("order", ["prepared-first", "ray-imported-first"])
def test_local_ray_sits_on_loopback_and_refuses_a_caller_without_the_token(order: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    out = subprocess.run([sys.executable, "-c", PROBE, order], cwd="/tmp", env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.split(" ", 1)[0] in
                 ("without", "with", "node"))
    assert lines == {"without": "UNAUTHENTICATED", "with": "OK", "node": "127.0.0.1"}, out.stdout


def test_a_node_that_misses_rays_start_up_window_is_started_again(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from kuberl.worker.local_ray import init_local_ray

    calls: list[dict] = []

    def flaky_init(**kwargs: object) -> None:
        calls.append(kwargs)
        if len(calls) < 3:
            raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(ray, "init", flaky_init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    init_local_ray(num_cpus=2)
    assert calls == [{"num_cpus": 2, "address": "local"}] * 3
    calls.clear()
    with pytest.raises(Exception, match="timed out during startup"):
        init_local_ray(attempts=2, num_cpus=2)
    assert len(calls) == 2


def test_other_ray_start_failures_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from kuberl.worker.local_ray import init_local_ray

    calls = []

    def broken(**kwargs: object) -> None:
        calls.append(kwargs)
        raise ValueError("num_cpus must be positive")

    monkeypatch.setattr(ray, "init", broken)
    with pytest.raises(ValueError):
        init_local_ray(num_cpus=-1)
    assert len(calls) == 1
