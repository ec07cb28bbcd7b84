"""Placement plans: one bundle per trainer GPU and per engine, tied to the pods' Ray resources."""

from __future__ import annotations

from kuberl.api import load_jobs
from kuberl.api.resolve import resolve
from kuberl.ray_resources import ROLLOUT_RESOURCE, TRAINER_RESOURCE
from kuberl.worker.placement import plan_placement
from tests.api.cases import EXAMPLES


def test_reference_workload_disaggregated_on_gpus() -> None:
    config = resolve(load_jobs(EXAMPLES / "glm4-9b-dapo-math.yaml")[0])
    plan = plan_placement(config, use_gpus=True)
    assert plan.num_trainer_ranks == 4
    assert all(b["GPU"] == 1 and b[TRAINER_RESOURCE] == 1 for b in plan.trainer_bundles)
    assert plan.num_engines == 2
    assert all(b["GPU"] == 2 and b[ROLLOUT_RESOURCE] == 2 for b in plan.rollout_bundles)


def test_colocated_engines_share_trainer_pods() -> None:
    config = resolve(load_jobs(EXAMPLES / "glm4-9b-dapo-math-colocated.yaml")[0])
    plan = plan_placement(config, use_gpus=True)
    assert plan.colocate and plan.num_trainer_ranks == 8 and plan.num_engines == 4
    assert all(b["GPU"] == 0 and TRAINER_RESOURCE in b for b in plan.rollout_bundles)


def test_local_plan_uses_cpu_bundles_only() -> None:
    config = resolve(load_jobs(EXAMPLES / "tiny" / "job.yaml")[0], in_cluster=False)
    plan = plan_placement(config, use_gpus=False)
    assert plan.trainer_bundles == [{"CPU": 1.0}] and plan.rollout_bundles == [{"CPU": 1.0}]
