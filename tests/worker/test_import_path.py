from __future__ import annotations

import pytest

from kuberl.errors import ImportPathError
from kuberl.worker.import_path import load_callable, split_import_path


@pytest.mark.parametrize(("path", "parts"), [
    ("pkg.mod:fn", ("pkg.mod", "fn")),
    ("pkg.mod.fn", ("pkg.mod", "fn")),  # slime's dotted form
    ("mod:fn", ("mod", "fn")),
])
def test_split(path, parts):
    assert split_import_path(path) == parts


def test_loads_colon_and_dotted_forms():
    assert load_callable("os.path:join") is load_callable("os.path.join")


@pytest.mark.parametrize(("path", "message"), [
    ("no_such_pkg_kuberl:f", "cannot import module 'no_such_pkg_kuberl'"),
    ("os.path:no_such_fn", "has no attribute 'no_such_fn'"),
    ("os:sep", "is a str, not a function"),
    ("justaname", "not an import path"),
    ("", "empty import path"),
])
def test_errors_name_the_field_path_and_fix(path, message):
    with pytest.raises(ImportPathError, match=message) as err:
        load_callable(path, field="rollout.customRmPath")
    if path and ":" in path:
        assert str(err.value).startswith("rollout.customRmPath:")


def test_module_that_raises_on_import_is_reported(tmp_path, monkeypatch):
    (tmp_path / "broken_user_mod.py").write_text("raise ValueError('bad config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportPathError, match="raised ValueError: bad config"):
        load_callable("broken_user_mod:f")
