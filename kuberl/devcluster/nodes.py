"""Fake 8×H100 nodes for kwok: plain ``v1.Node`` objects that kwok keeps Ready and whose bound pods
it marks Running. The real kube-scheduler places pods on them, so GPU capacity and taints are
enforced for real."""

from __future__ import annotations

from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"  # value "fake"; kwok manages only nodes carrying it
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"

# What a pod needs to land on a fake GPU node: our workloads tolerate nvidia.com/gpu already (see
# kubernetes-notes.md section 6); the kwok taint is test-only, so test pods add it themselves.
FAKE_NODE_TOLERATIONS: list[dict[str, str]] = [
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"},
]


def h100_node(name: str, gpus: int = 8, cpu: str = "208", memory: str = "1800Gi",
              pods: int = 110) -> dict[str, Any]:
    """One fake GPU node shaped like a cloud 8×H100 80GB machine (a3-highgpu-8g / p5.48xlarge)."""
    capacity = {"cpu": cpu, "memory": memory, "pods": str(pods), "nvidia.com/gpu": str(gpus),
                "ephemeral-storage": "2Ti"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "node-role.kubernetes.io/agent": "",
                "type": "kwok",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": GPU_PRODUCT,
                "nvidia.com/gpu.count": str(gpus),
                "nvidia.com/gpu.memory": "81559",
            },
        },
        "spec": {"taints": [dict(KWOK_TAINT), dict(GPU_TAINT)]},
        "status": {
            "allocatable": dict(capacity),
            "capacity": dict(capacity),
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux",
                         "kubeletVersion": "fake", "kubeProxyVersion": "fake"},
            "phase": "Running",
        },
    }


def h100_nodes(count: int, prefix: str = "h100-") -> list[dict[str, Any]]:
    """``count`` fake nodes named ``<prefix>0`` … ``<prefix><count-1>``."""
    return [h100_node(f"{prefix}{i}") for i in range(count)]
