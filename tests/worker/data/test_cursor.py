from __future__ import annotations

import pytest

from kuberl.worker.data.cursor import PromptCursor


def test_unshuffled_cursor_walks_in_order_and_wraps_epochs():
    c = PromptCursor(size=5)
    assert c.take(3) == [0, 1, 2]
    assert c.take(3) == [3, 4, 0]
    assert (c.epoch, c.offset) == (1, 1)


def test_shuffle_is_a_seeded_permutation_that_changes_per_epoch():
    a, b = PromptCursor(10, shuffle=True, seed=1), PromptCursor(10, shuffle=True, seed=1)
    first = a.take(10)
    assert first == b.take(10) and sorted(first) == list(range(10))
    assert a.take(10) != first
    assert PromptCursor(10, shuffle=True, seed=2).take(10) != first


def test_restored_cursor_continues_exactly():
    c = PromptCursor(7, shuffle=True, seed=3)
    c.take(9)
    state = c.state_dict()
    expected = c.take(12)
    d = PromptCursor(7, shuffle=True, seed=3)
    d.load_state_dict(state)
    assert d.take(12) == expected


def test_max_epochs_stops_the_stream():
    c = PromptCursor(4, max_epochs=2)
    assert len(c.take(5)) == 5 and len(c.take(5)) == 3 and c.exhausted and c.take(1) == []


def test_state_from_another_dataset_size_is_refused():
    with pytest.raises(ValueError, match="same promptData"):
        PromptCursor(3).load_state_dict(PromptCursor(4).state_dict())
