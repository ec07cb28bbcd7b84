"""KUBERL_DISABLE_LEVERS: every lever on by default, named ones off, typos refused."""

from __future__ import annotations

import pytest

from kuberl.worker.levers import ENV, Levers


def test_all_levers_are_on_by_default():
    assert Levers.parse(None) == Levers() and Levers().disabled() == []


def test_named_levers_switch_off_and_dashes_are_accepted():
    levers = Levers.parse("batch-generate, inline_grading")
    assert levers.disabled() == ["batch_generate", "inline_grading"]
    assert levers.packed_sequences and levers.response_logits


def test_an_unknown_lever_is_refused_naming_the_variable():
    with pytest.raises(ValueError, match=ENV):
        Levers.parse("batch")
