"""The kuberl exception tree: every user-facing failure is a KuberlError with an actionable message."""

from __future__ import annotations


class KuberlError(Exception):
    """Root of all kuberl errors; the CLI prints the message and exits non-zero, without a traceback."""


class SpecError(KuberlError):
    """An RLTrainingJob manifest is invalid. ``problems`` holds one 'field: message' line per problem."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__("\n".join(prefix + p for p in problems))


class ImportPathError(KuberlError):
    """A user-given ``module:function`` import path cannot be loaded."""


class EngineError(KuberlError):
    """A rollout engine (SGLang or the embedded engine) failed or answered unexpectedly."""


class CheckpointError(KuberlError):
    """A checkpoint cannot be written or read back."""


class ClusterError(KuberlError):
    """The local development control plane could not be built, started or reached."""


class TrainingInterrupted(KuberlError):
    """``kuberl train`` was stopped by Ctrl-C or SIGTERM; the message says where and how to resume."""

    def __init__(self, message: str, exit_code: int) -> None:
        self.exit_code = exit_code  # 130 for SIGINT, 143 for SIGTERM, as shells report them
        super().__init__(message)
