"""spec.checkpoint: where the reference and actor weights come from and where checkpoints go."""

from __future__ import annotations

from pydantic import Field

from kuberl.api.base import SpecModel


class CheckpointSpec(SpecModel):
    """Checkpoint directories (slime's CKPT args). Every checkpoint also holds the rollout buffer,
    the data cursor and RNG states, so a resumed job loses no work."""

    ref_load: str | None = Field(None, min_length=1, description="Reference model (torch_dist) dir.")
    load: str | None = Field(
        None,
        min_length=1,
        description="Actor checkpoint dir to resume from; falls back to refLoad when empty.",
    )
    save: str | None = Field(None, min_length=1, description="Directory for new checkpoints.")
    save_interval: int | None = Field(None, ge=1, description="Save every N rollouts.")
    no_save_optim: bool = Field(False, description="Skip optimizer state in checkpoints.")
    keep_last: int | None = Field(None, ge=1, description="Keep only the newest N checkpoints.")
