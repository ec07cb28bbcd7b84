"""spec.sglang: rollout engine sizing and passthrough SGLang server/router arguments."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from kuberl.api.base import SpecModel
from kuberl.api.passthrough import SGLANG_SERVER, SMG_ROUTER, FlagTable, check_args


class SglangSpec(SpecModel):
    """Engines are SGLang servers (TP = gpusPerEngine) behind the router; serverArgs pass through as
    ``--kebab-case`` flags (``memFractionStatic: 0.8`` -> ``--mem-fraction-static 0.8``), checked against
    the pinned SGLang's and smg's own argument lists (kuberl.api.passthrough)."""

    gpus_per_engine: int = Field(1, ge=1, le=64, description="GPUs per engine (SGLang TP x PP).")
    server_args: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Extra SGLang ServerArgs in camelCase, e.g. {memFractionStatic: 0.8}; checked against the "
            "pinned SGLang's arguments."
        ),
    )
    router_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra router (smg launch) arguments in camelCase, checked against the pinned smg.",
    )
    server_concurrency: int = Field(512, ge=1, description="Max in-flight requests per engine.")
    router_request_timeout_secs: int = Field(14400, ge=1, description="Router request timeout.")

    @field_validator("server_args")
    @classmethod
    def _server_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _checked(value, SGLANG_SERVER)

    @field_validator("router_args")
    @classmethod
    def _router_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _checked(value, SMG_ROUTER)


def _checked(value: dict[str, Any], table: FlagTable) -> dict[str, Any]:
    """Refuse keys and values the pinned program would refuse, one problem line per key."""
    problems = check_args(value, table)
    if problems:
        raise PydanticCustomError(
            "kuberl_rule",
            "{summary}",
            {
                "summary": "; ".join(f"{key}: {msg}" for key, msg in problems),
                "rules": [(f".{key}", msg) for key, msg in problems],
            },
        )
    return value
