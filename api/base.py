"""Base models: strict for user specs (a typo is an error), lenient for status written by others."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from kuberl.api.rules import Rule


class SpecModel(BaseModel):
    """A frozen, strict spec group: camelCase on the wire, unknown keys rejected, cross-field rules checked.

    Subclasses list their cross-field ``RULES``; each rule carries both its CEL expression (emitted into the
    CRD) and the Python predicate that ``kuberl validate`` runs, so the two layers cannot drift apart.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=False,
        validate_default=True,
    )

    RULES: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Any:
        failed = [rule for rule in type(self).RULES if not rule.check(self)]
        if failed:
            raise PydanticCustomError(
                "kuberl_rule",
                "{summary}",
                {
                    "summary": "; ".join(r.message for r in failed),
                    "rules": [(r.field_path, r.message) for r in failed],
                },
            )
        return self


class StatusModel(BaseModel):
    """Status is written by the operator and the driver, possibly newer versions: read it leniently."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")
