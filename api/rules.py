"""Cross-field validation rules, each declared once with its CEL form and its Python form.

The CRD generator emits ``cel``/``message``/``fieldPath`` into ``x-kubernetes-validations`` of the model that
declares the rule; the pydantic validator of the same model runs ``check``. Tests evaluate both forms on every
bad manifest, so a rule can never exist in only one layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    """One cross-field rule: ``check(model) -> bool`` must agree with ``cel`` evaluated on the wire form."""

    id: str
    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None  # relative to the declaring object, e.g. ".overSamplingBatchSize"
    transition: bool = False  # uses oldSelf: only the apiserver (and operator update checks) evaluate it

    def to_crd(self) -> dict[str, str]:
        """Return the ``x-kubernetes-validations`` entry for this rule."""
        entry = {"rule": self.cel, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        return entry


def immutable(group: str) -> Rule:
    """A transition rule that forbids changing ``spec.<group>`` once the job exists."""
    return Rule(
        id=f"immutable-{group}",
        cel="self == oldSelf",
        message=(
            f"spec.{group} cannot change while the job exists: delete and recreate the RLTrainingJob to "
            "change it (only spec.suspend and spec.rollout.numRollout may change)"
        ),
        check=lambda _m: True,
        transition=True,
    )
