"""spec.placement: how many GPUs train and how many generate, colocated or disaggregated."""

from __future__ import annotations

from pydantic import Field

from kuberl.api.base import SpecModel
from kuberl.api.rules import Rule


class PlacementSpec(SpecModel):
    """slime's cluster args: actor nodes x GPUs per node; rollout GPUs (disaggregated) or colocate."""

    actor_num_nodes: int = Field(1, ge=1, le=1024, description="Trainer nodes.")
    actor_num_gpus_per_node: int = Field(8, ge=1, le=16, description="Trainer GPUs per node.")
    rollout_num_gpus: int | None = Field(
        None, ge=0, description="GPUs for rollout engines when not colocated."
    )
    colocate: bool = Field(False, description="Train and generate on the same GPUs, taking turns.")
    offload_train: bool | None = Field(None, description="Offload trainer memory while generating (not implemented yet: admission warns when set).")
    offload_rollout: bool | None = Field(None, description="Release engine memory while training.")

    RULES = (
        Rule(
            id="colocate-excludes-rollout-gpus",
            cel="!(self.colocate && has(self.rolloutNumGpus))",
            message=(
                "spec.placement.rolloutNumGpus must be unset with colocate: true "
                "(rollout shares the actor's GPUs); remove it or set colocate: false"
            ),
            check=lambda m: not (m.colocate and m.rollout_num_gpus is not None),
            field_path=".rolloutNumGpus",
        ),
        Rule(
            id="disaggregated-needs-rollout-gpus",
            cel="self.colocate || has(self.rolloutNumGpus)",
            message=(
                "spec.placement.rolloutNumGpus is required unless colocate: true "
                "(e.g. 4 of an 8-GPU node)"
            ),
            check=lambda m: m.colocate or m.rollout_num_gpus is not None,
            field_path=".rolloutNumGpus",
        ),
    )
