"""The RLTrainingJob resource and its single parse entry point (pydantic errors -> SpecError)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kuberl.api.spec import RLTrainingJobSpec
from kuberl.api.status import RLTrainingJobStatus
from kuberl.errors import SpecError

GROUP = "kuberl.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "RLTrainingJob"
PLURAL = "rltrainingjobs"
SINGULAR = "rltrainingjob"
SHORT_NAMES = ("rltj",)
# KubeRay appends 6 characters to a RayJob's name for its RayCluster (<= 53), so RayJob names are <= 47.
MAX_NAME_LENGTH = 47
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


class ObjectMeta(BaseModel):
    """The metadata fields kuberl reads; everything else the apiserver adds is kept as is."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(..., description="Job name (DNS-1035 label, at most 47 characters).")
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        import re

        if len(value) > MAX_NAME_LENGTH:
            raise ValueError(
                f"metadata.name must be at most {MAX_NAME_LENGTH} characters (KubeRay derives its Ray "
                f"cluster name from it); {value!r} has {len(value)}: shorten it"
            )
        if not re.match(NAME_PATTERN, value):
            raise ValueError(
                f"metadata.name {value!r} must be a DNS-1035 label: lowercase letters, digits and '-', "
                "starting with a letter"
            )
        return value


class RLTrainingJob(BaseModel):
    """An RL post-training run (kuberl.io/v1alpha1)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    api_version: Literal["kuberl.io/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["RLTrainingJob"] = KIND
    metadata: ObjectMeta
    spec: RLTrainingJobSpec
    status: RLTrainingJobStatus | None = None

    def to_manifest(self) -> dict[str, Any]:
        """Return the wire form with defaults filled in (what the apiserver would store)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    """The wire (camelCase) names a manifest may use at ``loc``'s parent, found by walking the models."""
    import types
    import typing

    model: Any = RLTrainingJob
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", {})
        field = next((f for n, f in fields.items() if part in (n, f.alias)), None)
        if field is None:
            return []
        candidates = [field.annotation]
        model = None
        while candidates:
            ann = candidates.pop()
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                model = ann
                break
            if typing.get_origin(ann) in (typing.Union, types.UnionType, list, dict):
                candidates += list(typing.get_args(ann))
        if model is None:
            return []
    return [f.alias or n for n, f in getattr(model, "model_fields", {}).items()]


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    import difflib

    close = difflib.get_close_matches(str(loc[-1]), _known_fields(loc), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else "remove it or check its spelling (fields are camelCase)"


def format_validation_error(exc: ValidationError) -> list[str]:
    """Turn a pydantic error into one 'field: message' line per problem, in wire (camelCase) names."""
    lines: list[str] = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "kuberl_rule":
            for field_path, message in err["ctx"]["rules"]:
                # A rule on the top-level model has no loc; its message already names the field.
                where = loc + (field_path or "") if loc else ""
                lines.append(f"{where}: {message}" if where else message)
            continue
        if err["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown field; {_did_you_mean(tuple(err['loc']))}")
            continue
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            message = "required field is missing"
        elif err["type"] == "enum" or err["type"] == "literal_error":
            message = f"{message} (got {err.get('input')!r})"
        lines.append(f"{loc}: {message}")
    return lines


def parse_job(manifest: Any, source: str | None = None) -> RLTrainingJob:
    """Validate a manifest dict into an RLTrainingJob.

    Raises:
        SpecError: with one field-named line per problem.
    """
    if not isinstance(manifest, dict):
        raise SpecError(["the document must be a mapping (an RLTrainingJob manifest)"], source)
    if manifest.get("kind") not in (None, KIND):
        raise SpecError([f"kind: expected {KIND}, got {manifest.get('kind')!r}"], source)
    try:
        return RLTrainingJob.model_validate(manifest)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc), source) from None


def load_jobs(path: str | Path) -> list[RLTrainingJob]:
    """Parse every RLTrainingJob document in a YAML file (other kinds are skipped).

    Raises:
        SpecError: the file is unreadable, not YAML, or a job in it is invalid.
    """
    path = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except OSError as exc:
        raise SpecError([f"cannot read the file: {exc.strerror}"], str(path)) from None
    except yaml.YAMLError as exc:
        raise SpecError([f"not valid YAML: {exc}"], str(path)) from None
    jobs = [
        parse_job(d, str(path))
        for d in docs
        if not isinstance(d, dict) or d.get("kind", KIND) == KIND
    ]
    if not jobs:
        raise SpecError([f"no {KIND} document found"], str(path))
    return jobs
