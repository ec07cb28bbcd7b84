"""Rendering turns each example job into the children the issue asks for, field by field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from kuberl.api import parse_job
from kuberl.operator import render
from kuberl.operator.render import RenderSettings, plan_worker_groups, rollout_gpus_per_pod
from tests.operator.rayjob_checks import check_rayjob, container, gpus, groups_by_name

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_FILES = [*sorted(EXAMPLES.glob("*.yaml")), EXAMPLES / "tiny" / "job.yaml"]
SETTINGS = RenderSettings(default_image="registry.example/kuberl-worker:test")


def _manifest(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _job(manifest: dict[str, Any], **meta: Any):
    manifest = copy.deepcopy(manifest)
    manifest["metadata"].update(meta)
    return parse_job(manifest)


def _edit(manifest: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(manifest)
    node = manifest
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return manifest


REFERENCE = _manifest(EXAMPLES / "glm4-9b-dapo-math.yaml")


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_every_example_renders_a_rayjob_matching_its_spec(path: Path) -> None:
    job = _job(_manifest(path), namespace="team-a", uid="1234", generation=3)
    check_rayjob(render.render_rayjob(job, SETTINGS), job, default_image=SETTINGS.default_image)


def test_reference_workload_is_one_h100_node_split_four_and_four() -> None:
    rayjob = render.render_rayjob(_job(REFERENCE), SETTINGS)
    groups = groups_by_name(rayjob)
    assert (groups["trainer"]["replicas"], gpus(groups["trainer"])) == (1, 4)
    assert (groups["rollout"]["replicas"], gpus(groups["rollout"])) == (1, 4)


def test_colocated_example_is_one_group_of_eight() -> None:
    rayjob = render.render_rayjob(_job(_manifest(EXAMPLES / "glm4-9b-dapo-math-colocated.yaml")))
    groups = groups_by_name(rayjob)
    assert list(groups) == ["trainer"] and gpus(groups["trainer"]) == 8


@pytest.mark.parametrize(
    ("rollout", "engine", "per_pod"),
    [(4, 2, 4), (8, 2, 8), (16, 2, 8), (12, 4, 4), (6, 2, 6), (2, 1, 2), (16, 16, 8), (1, 1, 1),
     (24, 8, 8), (10, 2, 2)],
)
def test_rollout_pods_hold_whole_engines_and_fit_a_node(rollout: int, engine: int, per_pod: int) -> None:
    assert rollout_gpus_per_pod(rollout, engine, 8) == per_pod


def test_multi_node_trainer_gets_one_pod_per_node() -> None:
    manifest = _edit(REFERENCE, "spec.placement", {"actorNumNodes": 4, "actorNumGpusPerNode": 8,
                                                   "rolloutNumGpus": 16})
    groups = {g.name: g for g in plan_worker_groups(_job(manifest).spec)}
    assert (groups["trainer"].replicas, groups["trainer"].gpus_per_pod) == (4, 8)
    assert (groups["rollout"].replicas, groups["rollout"].gpus_per_pod) == (2, 8)


def test_zero_rollout_gpus_renders_no_rollout_group() -> None:
    manifest = _edit(REFERENCE, "spec.placement.rolloutNumGpus", 0)
    assert [g.name for g in plan_worker_groups(_job(manifest).spec)] == ["trainer"]


def test_queue_name_labels_the_rayjob_which_is_created_suspended_and_never_applied_with_suspend(
) -> None:
    manifest = _edit(REFERENCE, "spec.cluster.queueName", "h100-team")
    manifest["metadata"]["labels"] = {"kueue.x-k8s.io/priority-class": "high"}
    rayjob = render.render_rayjob(_job(manifest))
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "h100-team"
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "high"
    assert "suspend" not in rayjob["spec"]  # Kueue owns it: an applied value would fight admission
    assert render.creation_copy(rayjob)["spec"]["suspend"] is True  # created suspended
    assert "suspend" not in rayjob["spec"]  # the copy left the applied object alone
    # spec.suspend deactivates the Workload instead (operator.kueue.workload_activation).
    suspended = render.render_rayjob(_job(_edit(manifest, "spec.suspend", True)))
    assert "suspend" not in suspended["spec"]


def test_the_queue_label_on_the_job_and_the_operator_default_queue_the_rayjob() -> None:
    labelled = copy.deepcopy(REFERENCE)
    labelled["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    rayjob = render.render_rayjob(_job(labelled))
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    settings = RenderSettings(default_queue_name="pool", default_priority_class="batch")
    defaulted = render.render_rayjob(_job(REFERENCE), settings)
    assert defaulted["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "pool"
    assert defaulted["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "batch"
    assert render.render_rayjob(_job(labelled), settings)["metadata"]["labels"][
        "kueue.x-k8s.io/queue-name"] == "team-a"  # the job's own choice wins over the default
    plain = render.render_rayjob(_job(REFERENCE))
    assert render.creation_copy(plain) is plain and plain["spec"]["suspend"] is False


def test_no_queue_no_kueue_label_and_explicit_suspend() -> None:
    rayjob = render.render_rayjob(_job(_edit(REFERENCE, "spec.suspend", True)))
    assert "kueue.x-k8s.io/queue-name" not in rayjob["metadata"]["labels"]
    assert rayjob["spec"]["suspend"] is True


def test_lifecycle_fields_follow_spec_cluster() -> None:
    manifest = _edit(REFERENCE, "spec.cluster", {
        **REFERENCE["spec"]["cluster"], "backoffLimit": 3, "activeDeadlineSeconds": 86400,
        "ttlSecondsAfterFinished": 600})
    spec = render.render_rayjob(_job(manifest))["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (
        3, 86400, 600)


def test_gpu_type_any_selects_no_product_but_keeps_user_selectors() -> None:
    manifest = _edit(REFERENCE, "spec.cluster", {
        **REFERENCE["spec"]["cluster"], "gpuType": "any", "nodeSelector": {"pool": "rl"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "rl", "effect": "NoSchedule"}],
        "env": [{"name": "NCCL_IB_HCA", "value": "mlx5"}, {"name": "NCCL_DEBUG", "value": "INFO"}],
        "priorityClassName": "training"})
    job = _job(manifest)
    rayjob = render.render_rayjob(job)
    check_rayjob(rayjob, job, default_image=RenderSettings().default_image)
    pod = groups_by_name(rayjob)["trainer"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "rl"}
    assert pod["priorityClassName"] == "training"
    assert {"key": "dedicated", "operator": "Equal", "value": "rl", "effect": "NoSchedule"} in pod[
        "tolerations"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["NCCL_IB_HCA"] == "mlx5" and env["NCCL_DEBUG"] == "INFO"  # the user's value wins
    assert len([e for e in pod["containers"][0]["env"] if e["name"] == "NCCL_DEBUG"]) == 1


def test_default_image_applies_only_without_spec_image() -> None:
    manifest = copy.deepcopy(REFERENCE)
    del manifest["spec"]["cluster"]["image"]
    rayjob = render.render_rayjob(_job(manifest), SETTINGS)
    assert container(groups_by_name(rayjob)["rollout"])["image"] == SETTINGS.default_image


def test_children_carry_owner_reference_labels_and_namespace() -> None:
    job = _job(REFERENCE, namespace="team-a", uid="uid-42", generation=7)
    children = render.render_children(job, SETTINGS)
    for obj in children.in_apply_order():
        meta = obj["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["ownerReferences"] == [{
            "apiVersion": "kuberl.io/v1alpha1", "kind": "RLTrainingJob", "name": job.metadata.name,
            "uid": "uid-42", "controller": True, "blockOwnerDeletion": True}]
        assert meta["labels"]["kuberl.io/job-name"] == job.metadata.name
        assert meta["annotations"]["kuberl.io/spec-generation"] == "7"
    assert children.in_apply_order()[-1]["kind"] == "RayJob"
    stages = [[o["kind"] for o in stage] for stage in children.apply_stages()]
    assert sorted(k for stage in stages for k in stage) == sorted(
        o["kind"] for o in children.in_apply_order())
    role_stage = next(i for i, st in enumerate(stages) if "Role" in st)
    assert stages.index(["RoleBinding"]) > role_stage  # a binding needs its Role to exist


def test_without_uid_children_have_no_owner_reference() -> None:
    for obj in render.render_children(_job(REFERENCE)).in_apply_order():
        assert "ownerReferences" not in obj["metadata"]
        assert "namespace" not in obj["metadata"]


def test_driver_role_allows_only_get_and_patch_of_this_jobs_status() -> None:
    job = _job(REFERENCE, namespace="team-a")
    account, role, binding = render.render_driver_rbac(job)
    assert role["rules"] == [{"apiGroups": ["kuberl.io"], "resources": ["rltrainingjobs/status"],
                              "resourceNames": [job.metadata.name], "verbs": ["get", "patch"]}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": "team-a"}]


def test_config_map_holds_the_defaulted_job_and_the_resolved_config() -> None:
    job = _job(REFERENCE, namespace="team-a", uid="u", generation=2, resourceVersion="99")
    data = render.render_config_map(job)["data"]
    stored = yaml.safe_load(data["job.yaml"])
    assert stored["metadata"] == {"name": job.metadata.name, "namespace": "team-a"}
    assert "status" not in stored
    assert stored["spec"]["rollout"]["maxResponseLen"] == 8192
    assert stored["spec"]["backends"]["trainer"] == "auto"  # a default the manifest did not set
    assert parse_job(stored).spec == job.spec  # the driver reads back exactly the spec
    resolved = yaml.safe_load(data["resolved.yaml"])
    assert resolved["num_engines"] == 2 and resolved["rollout_num_gpus"] == 4


def test_ray_custom_resources_use_the_typed_group_map() -> None:
    rayjob = render.render_rayjob(_job(REFERENCE))
    for group in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        assert group["rayStartParams"] == {}  # KubeRay adds --num-gpus from the GPU limit itself
        assert all(isinstance(v, str) and v.isdigit() for v in group["resources"].values())
    assert render.ray_group_resources({"kuberl_trainer": 4, "kuberl_rollout": 4}) == {
        "kuberl_rollout": "4", "kuberl_trainer": "4"}


def test_submitter_pod_carries_the_job_tolerations_so_tainted_gpu_only_pools_can_submit() -> None:
    """KubeRay's default submitter tolerates nothing; on a cluster of tainted GPU nodes it never starts."""
    taint = {"key": "dedicated", "operator": "Equal", "value": "rl", "effect": "NoSchedule"}
    manifest = _edit(REFERENCE, "spec.cluster", {
        **REFERENCE["spec"]["cluster"], "tolerations": [taint], "priorityClassName": "training",
        "image": "registry.example/kuberl-worker:1"})
    job = _job(manifest)
    spec = render.render_rayjob(job)["spec"]
    submitter = spec["submitterPodTemplate"]
    assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"  # the only mode taking a template
    pod = submitter["spec"]
    assert pod["restartPolicy"] == "Never"
    assert taint in pod["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["priorityClassName"] == "training"
    [container] = pod["containers"]
    assert container["image"] == "registry.example/kuberl-worker:1"
    assert "command" not in container  # KubeRay writes `ray job submit ...` itself
    assert submitter["metadata"]["labels"]["kuberl.io/job-name"] == job.metadata.name
