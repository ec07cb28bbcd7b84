"""kuberl: Kubernetes-native RL post-training (GRPO and relatives) for large language models."""

__version__ = "0.1.0"
