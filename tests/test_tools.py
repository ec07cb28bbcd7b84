"""A missing external tool skips its tests locally and fails them under CI (tests/tools.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tools import in_ci, require

ABSENT = "kuberl-no-such-binary"


def test_missing_tool_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"{ABSENT} missing.*CI is set"):
        require(ABSENT)


@pytest.mark.parametrize("value", [None, "", "0", "false"])
def test_missing_tool_skips_outside_ci(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert not in_ci()
    with pytest.raises(pytest.skip.Exception, match=f"{ABSENT} missing"):
        require(ABSENT)


def test_present_tool_is_found_by_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    assert require("sh").endswith("/sh")


def test_tool_marker_fails_a_test_under_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the conftest hook: the marked test fails (not skips) and never runs its body."""
    pytester.makeconftest((Path(__file__).with_name("conftest.py")).read_text())
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = session\n"
                     "markers =\n    tool: binaries\n    cluster: control plane\n")
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.tool("{ABSENT}")
        def test_body():
            raise AssertionError("the body must not run")
    """)
    monkeypatch.setenv("CI", "true")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(errors=1)
    monkeypatch.delenv("CI")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(skipped=1)
