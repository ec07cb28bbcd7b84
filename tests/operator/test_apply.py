"""Retry policy and REST paths of the operator's API shell (the calls themselves run in the cluster tests)."""

from __future__ import annotations

import aiohttp
import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from kuberl.operator.apply import ApiError, TransientApiError, object_path, with_retries


def test_paths_of_core_and_group_objects() -> None:
    assert object_path("v1", "ConfigMap", "ns", "a") == "/api/v1/namespaces/ns/configmaps/a"
    assert object_path("ray.io/v1", "RayJob", "ns", "a") == "/apis/ray.io/v1/namespaces/ns/rayjobs/a"
    assert object_path("rbac.authorization.k8s.io/v1", "Role", "ns") == (
        "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/roles")


class Flaky:
    """Fails with the given errors in order, then answers."""

    def __init__(self, *errors: Exception) -> None:
        self.errors, self.calls = list(errors), 0

    async def __call__(self) -> dict:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return {"ok": True}


@pytest.mark.parametrize("error", [
    ApiException(status=409, reason="Conflict"), ApiException(status=429, reason="Too Many"),
    ApiException(status=503, reason="Unavailable"), aiohttp.ClientConnectionError("reset"),
])
async def test_transient_errors_are_retried_until_success(error: Exception) -> None:
    call = Flaky(error, error)
    assert await with_retries(call, first_delay=0.001) == {"ok": True}
    assert call.calls == 3


async def test_persistent_transient_errors_surface_as_transient() -> None:
    call = Flaky(*[ApiException(status=500, reason="boom")] * 5)
    with pytest.raises(TransientApiError, match="500"):
        await with_retries(call, attempts=3, first_delay=0.001)
    assert call.calls == 3


async def test_refusals_are_not_retried_and_keep_the_apiservers_message() -> None:
    exc = ApiException(status=422, reason="Unprocessable")
    exc.body = '{"message": "RayJob.ray.io \\"x\\" is invalid: spec.entrypoint: Required value"}'
    call = Flaky(exc)
    with pytest.raises(ApiError) as info:
        await with_retries(call, first_delay=0.001)
    assert call.calls == 1 and info.value.status == 422
    assert "spec.entrypoint: Required value" in str(info.value)
