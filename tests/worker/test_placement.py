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


def test_cluster_trainer_ranks_are_actor_nodes_times_gpus_per_node() -> None:
    import dataclasses

    from kuberl.worker.placement import num_trainer_ranks

    config = resolve(load_jobs(EXAMPLES / "glm4-9b-dapo-math.yaml")[0])
    two_nodes = dataclasses.replace(config, actor_num_nodes=2, actor_num_gpus=8)
    assert num_trainer_ranks(two_nodes, use_gpus=True) == 8
    assert plan_placement(two_nodes, use_gpus=True).num_trainer_ranks == 8


def test_local_cpu_device_gets_one_cpu_rank_per_actor_gpu() -> None:
    """Locally, spec.backends.device: cpu reads actorNumNodes x actorNumGpusPerNode as CPU ranks."""
    import dataclasses

    from kuberl.worker.placement import num_trainer_ranks

    config = resolve(load_jobs(EXAMPLES / "tiny" / "job.yaml")[0], in_cluster=False)
    two = dataclasses.replace(config, actor_num_gpus_per_node=2, actor_num_gpus=2)
    assert num_trainer_ranks(two, use_gpus=False) == 2
    assert plan_placement(two, use_gpus=False).trainer_bundles == [{"CPU": 1.0}, {"CPU": 1.0}]
    # Any other local device keeps one trainer process.
    auto = dataclasses.replace(two, device="auto")
    assert plan_placement(auto, use_gpus=False).num_trainer_ranks == 1


def test_ranks_are_contiguous_per_node_with_rank_zero_on_bundle_zero() -> None:
    from kuberl.worker.placement import plan_ranks

    ranks = plan_ranks(["b", "a", "b", "a", "c"])
    assert [r.bundle_index for r in ranks] == [0, 2, 1, 3, 4]
    assert [r.node for r in ranks] == ["b", "b", "a", "a", "c"]
    assert [r.rank for r in ranks] == [0, 1, 2, 3, 4] and {r.world_size for r in ranks} == {5}
    assert [r.bundle_index for r in plan_ranks(["n"] * 3)] == [0, 1, 2]
    assert plan_ranks([]) == []


def test_every_bundle_gets_exactly_one_rank() -> None:
    import itertools

    from kuberl.worker.placement import plan_ranks

    for n in range(1, 7):
        for nodes in itertools.product("xyz", repeat=n):
            ranks = plan_ranks(list(nodes))
            assert sorted(r.bundle_index for r in ranks) == list(range(n))
            assert ranks[0].bundle_index == 0
            # Each node's ranks form one contiguous block.
            seq = [r.node for r in ranks]
            assert all(seq.index(node) + seq.count(node) - 1 == len(seq) - 1 - seq[::-1].index(node)
                       for node in set(seq))
