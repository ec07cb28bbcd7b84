"""Built-in graders on dapo-math and AIME-style responses, with the scores each rule implies."""

from __future__ import annotations

import pytest

from kuberl.worker.rewards import dapo, deepscaler, f1, mathverify
from kuberl.worker.rewards.boxed import last_boxed

THINK = "<think>Let me try. Maybe \\boxed{7}? No.</think>"


@pytest.mark.parametrize(("response", "label", "score"), [
    (THINK + " The answer is \\boxed{24}.", "24", 1.0),
    (THINK + " So $x = \\boxed{\\frac{3}{4}}$", "\\frac{3}{4}", 1.0),
    (THINK + " \\boxed{0.75}", "\\frac{3}{4}", 1.0),  # sympy: 0.75 - 3/4 = 0
    (THINK + " \\boxed{\\dfrac34}", "\\frac{3}{4}", 1.0),  # normalised spelling
    (THINK + " \\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0),
    (THINK + " \\boxed{(1, 2)}", "(1,2)", 1.0),
    (THINK + " \\boxed{1,000}", "1000", 1.0),
    (THINK + " \\boxed{90^\\circ}", "90", 1.0),
    (THINK + " \\boxed{25}", "24", 0.0),
    ("No thinking block: \\boxed{24}", "24", 0.0),  # </think> is required
    (THINK + " the answer is 24", "24", 0.0),  # no boxed answer after thinking
    ("<think>\\boxed{24}</think> I give up.", "24", 0.0),  # boxed only inside thinking
    (THINK + " \\boxed{24}", "\\boxed{24}", 1.0),  # boxed label
    (THINK + " \\boxed{24}", ["23", "24"], 1.0),  # any of several labels
])
def test_deepscaler(response, label, score):
    assert deepscaler.grade(response, label) == score


@pytest.mark.parametrize(("response", "label", "score"), [
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("x = \\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
    (THINK + " final: \\boxed{204}", "204", 1.0),
    ("<think>\\boxed{204}</think> I think it is \\boxed{205}", "204", 0.0),
    ("\\boxed{3}", "4", 0.0),
    ("no answer at all", "4", 0.0),
    # graded like slime's `math`: only the last \boxed{} answer counts
    ("The answer is 42", "42", 0.0),  # bare number, no box
    ("so the total is 42.", "\\boxed{42}", 0.0),
    ("The answer is \\boxed{42}.", "42", 1.0),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}", 1.0),  # nested braces
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{2}}{2}", 0.0),
    ("first \\boxed{7}, then \\boxed{9}", "9", 1.0),  # several boxes: the last one
    ("first \\boxed{9}, then \\boxed{7}", "9", 0.0),
    ("\\boxed{}", "0", 0.0),  # empty box
    ("\\boxed{2\\pi} \\text{ and more: } 6.28", "2\\pi", 1.0),
])
def test_math_verify(response, label, score):
    assert mathverify.grade(response, label) == score


@pytest.mark.parametrize(("response", "label", "score"), [
    ("12 + 22 = 34.\nAnswer: 34", "34", 1.0),
    ("Work...\nAnswer: $34$", "34", 1.0),
    ("Answer: 1,000 dollars", "1000", 1.0),
    ("Answer: 3\nWait, recheck.\nAnswer: 8", "8", 1.0),  # the last Answer: line counts
    ("Answer: 8\nWait, recheck.\nAnswer: 9", "8", -1.0),
    ("I think it's \\boxed{34}", "34", -1.0),  # no Answer: line
    ("Answer: 8" + " filler" * 80, "8", -1.0),  # only the last 300 characters are read
    ("Answer: 50.0", "50", 1.0),
])
def test_dapo(response, label, score):
    assert dapo.grade(response, label) == score


@pytest.mark.parametrize(("response", "label", "score"), [
    ("The cat sat", "cat sat", 1.0),
    ("cat sat on mat", "cat sat", pytest.approx(2 * 0.5 * 1.0 / 1.5)),
    ("yes it is", "yes", 0.0),  # yes/no must match exactly
    ("dog", "cat", 0.0),
])
def test_f1(response, label, score):
    assert f1.grade(response, label) == score


def test_last_boxed_handles_nesting_and_unbalanced_braces():
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"
    assert last_boxed("\\boxed 5$") == "5"
    assert last_boxed("\\boxed{\\frac{1}{2}") is None
