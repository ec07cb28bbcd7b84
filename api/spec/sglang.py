"""spec.sglang: rollout engine sizing and passthrough SGLang server/router arguments."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from kuberl.api.base import SpecModel

_CAMEL_KEY = r"^[a-z][A-Za-z0-9]*$"


class SglangSpec(SpecModel):
    """Engines are SGLang servers (TP = gpusPerEngine) behind the router; serverArgs pass through as
    ``--kebab-case`` flags (``memFractionStatic: 0.8`` -> ``--mem-fraction-static 0.8``)."""

    gpus_per_engine: int = Field(1, ge=1, le=64, description="GPUs per engine (SGLang TP x PP).")
    server_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra SGLang ServerArgs in camelCase, e.g. {memFractionStatic: 0.8}.",
    )
    router_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra router (smg) arguments in camelCase.",
    )
    server_concurrency: int = Field(512, ge=1, description="Max in-flight requests per engine.")
    router_request_timeout_secs: int = Field(14400, ge=1, description="Router request timeout.")

    @field_validator("server_args", "router_args")
    @classmethod
    def _camel_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        import re

        bad = [k for k in value if not re.match(_CAMEL_KEY, k)]
        if bad:
            raise ValueError(
                f"keys must be camelCase SGLang argument names (e.g. memFractionStatic), got {bad}"
            )
        return value
