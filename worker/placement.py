"""Where trainer ranks and rollout engines run: a pure plan of Ray bundles, then the placement groups.

In a cluster each trainer rank gets one GPU on a trainer pod and each engine ``gpusPerEngine`` GPUs on a
rollout pod (or, colocated, the same GPUs as the trainer, taking turns). Locally everything gets CPU
bundles, so the same driver code path runs on a laptop.

Trainer ranks: one per actor GPU (``actorNumNodes x actorNumGpusPerNode``). Without GPUs, a job with
``spec.backends.device: cpu`` gets that many CPU ranks too (gloo between them), so multi-rank training runs
and is tested on a laptop; any other local device gets one rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kuberl.ray_resources import ROLLOUT_RESOURCE, TRAINER_RESOURCE


@dataclass(frozen=True)
class PlacementPlan:
    """Bundles for one placement group per role (one bundle per trainer rank / per engine)."""

    trainer_bundles: list[dict[str, float]]
    rollout_bundles: list[dict[str, float]]
    colocate: bool
    strategy: str  # PACK keeps a role's bundles together (TP/NVLink); SPREAD is unused today

    @property
    def num_trainer_ranks(self) -> int:
        return len(self.trainer_bundles)

    @property
    def num_engines(self) -> int:
        return len(self.rollout_bundles)


@dataclass(frozen=True)
class TrainerRank:
    """One trainer process: its torch.distributed rank and the trainer placement-group bundle it runs on."""

    rank: int
    world_size: int
    bundle_index: int
    node: str


def num_trainer_ranks(config: Any, *, use_gpus: bool) -> int:
    """Trainer ranks for a resolved config: actor GPUs, or as many CPU ranks when the device is ``cpu``."""
    if use_gpus or config.device == "cpu":
        return config.actor_num_gpus
    return 1


def plan_ranks(bundle_nodes: Sequence[str]) -> list[TrainerRank]:
    """Return the trainer ranks, given the node each trainer bundle landed on (bundle index order).

    Ray's PACK strategy may interleave bundles over nodes; ranks are renumbered so each node's ranks are
    contiguous (tensor-parallel groups stay inside a node) while rank 0 stays on bundle 0. Nodes come in
    the order of their lowest bundle index, a node's bundles in ascending order.
    """
    first_seen: dict[str, int] = {}
    for index, node in enumerate(bundle_nodes):
        first_seen.setdefault(node, index)
    order = sorted(range(len(bundle_nodes)), key=lambda i: (first_seen[bundle_nodes[i]], i))
    world = len(order)
    return [TrainerRank(rank, world, index, bundle_nodes[index]) for rank, index in enumerate(order)]


def plan_placement(config: Any, *, use_gpus: bool, in_cluster: bool = False) -> PlacementPlan:
    """Return the placement plan for a resolved worker config.

    ``use_gpus`` is False for CPU runs: one CPU bundle per trainer rank (``num_trainer_ranks``) and one
    CPU per engine. With GPUs, ranks = actor GPUs; engines = rollout GPUs / gpusPerEngine. A CPU job in
    a cluster still asks for the pods' custom resources, so each role lands on its own pods.
    """
    if not use_gpus:
        pod = ({TRAINER_RESOURCE: 0.01}, {TRAINER_RESOURCE: 0.01} if config.colocate
               else {ROLLOUT_RESOURCE: 0.01}) if in_cluster else ({}, {})
        trainer = [{"CPU": 1.0, **pod[0]} for _ in range(num_trainer_ranks(config, use_gpus=False))]
        rollout = [{"CPU": 1.0, **pod[1]} for _ in range(max(1, config.num_engines))]
        return PlacementPlan(trainer, rollout, config.colocate, "PACK")
    trainer = [{"GPU": 1.0, "CPU": 1.0, TRAINER_RESOURCE: 1.0} for _ in range(config.actor_num_gpus)]
    if config.colocate:
        # Engines reuse the trainer's GPUs: fractional shares on the same bundles' pods.
        rollout = [
            {"GPU": 0.0, "CPU": 1.0, TRAINER_RESOURCE: 0.01} for _ in range(config.num_engines)
        ]
    else:
        rollout = [
            {"GPU": float(config.gpus_per_engine), "CPU": 1.0,
             ROLLOUT_RESOURCE: float(config.gpus_per_engine)}
            for _ in range(config.num_engines)
        ]
    return PlacementPlan(trainer, rollout, config.colocate, "PACK")


def create_placement_groups(plan: PlacementPlan, timeout_s: float = 600.0) -> dict[str, Any]:
    """Reserve the plan's bundles in Ray; raise with the missing resources if they never fit."""
    import ray
    from ray.util.placement_group import placement_group

    groups = {
        "trainer": placement_group(plan.trainer_bundles, strategy=plan.strategy, name="kuberl-trainer"),
        "rollout": placement_group(plan.rollout_bundles, strategy=plan.strategy, name="kuberl-rollout"),
    }
    ready, _ = ray.wait([g.ready() for g in groups.values()], num_returns=2, timeout=timeout_s)
    if len(ready) < 2:
        from kuberl.errors import KuberlError

        raise KuberlError(
            f"Ray could not place the job within {timeout_s:.0f}s: asked for trainer "
            f"{plan.trainer_bundles} and rollout {plan.rollout_bundles}, cluster has "
            f"{ray.cluster_resources()}; check spec.placement against the pods' GPUs"
        )
    return groups
