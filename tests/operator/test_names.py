"""Child names are deterministic and stay within Kubernetes and KubeRay limits for any job name."""

from __future__ import annotations

import re

import pytest

from kuberl.operator import names

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _job_name(length: int) -> str:
    return ("glm4-dapo-" * 30)[:length].rstrip("-") or "g"


@pytest.mark.parametrize("length", [1, 5, 40, 46, 47, 48, 53, 63, 64, 100, 253])
def test_names_fit_limits_and_stay_dns_labels(length: int) -> None:
    job = _job_name(length)
    rayjob = names.rayjob_name(job)
    assert len(rayjob) <= names.MAX_RAYJOB_NAME
    assert len(rayjob) + names.RAYCLUSTER_SUFFIX_LENGTH <= names.MAX_RAYCLUSTER_NAME
    for name in (rayjob, names.config_map_name(job), names.driver_account_name(job)):
        assert DNS_1035.match(name), name
        assert len(name) <= names.MAX_LABEL_VALUE


def test_short_names_are_kept_readable() -> None:
    assert names.rayjob_name("glm4-9b-dapo-math") == "glm4-9b-dapo-math"
    assert names.config_map_name("glm4-9b-dapo-math") == "glm4-9b-dapo-math-config"
    assert names.driver_account_name("glm4-9b-dapo-math") == "glm4-9b-dapo-math-driver"


def test_long_names_sharing_a_prefix_get_distinct_children() -> None:
    a, b = "x" * 60 + "a", "x" * 60 + "b"
    assert names.rayjob_name(a) != names.rayjob_name(b)
    assert names.config_map_name(a) != names.config_map_name(b)
    assert names.rayjob_name(a) == names.rayjob_name(a)  # deterministic across calls


def test_cut_names_keep_the_suffix_and_use_the_whole_budget() -> None:
    name = names.config_map_name("a" * 100)
    assert name.endswith(names.CONFIG_SUFFIX)
    assert len(name) == names.MAX_LABEL_VALUE


def test_suffix_longer_than_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="no room"):
        names.fit("job", "-" + "s" * 20, 10)
