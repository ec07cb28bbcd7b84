"""kuberl.api: the RLTrainingJob contract (pydantic models -> CRD, validation, worker config)."""

from kuberl.api.job import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    RLTrainingJob,
    load_jobs,
    parse_job,
)
from kuberl.api.spec import RLTrainingJobSpec
from kuberl.api.status import Condition, Phase, Progress, RLTrainingJobStatus

__all__ = [
    "API_VERSION", "GROUP", "KIND", "PLURAL", "VERSION", "Condition", "Phase", "Progress",
    "RLTrainingJob", "RLTrainingJobSpec", "RLTrainingJobStatus", "load_jobs", "parse_job",
]
