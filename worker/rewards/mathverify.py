"""``math`` grader, graded like slime's ``math``: the last ``\\boxed{}`` answer, checked by math-verify.

slime's ``math`` takes the last boxed answer of the whole response and scores 0 without one, so a response
that merely ends in the right bare number scores 0 in both systems and one manifest teaches one output
format. Equivalence (``\\frac{1}{2}`` vs ``0.5``, expanded vs factored forms) stays math-verify's, run on
the boxed answer only. math-verify's own timeouts use ``signal.alarm`` and break outside the main thread;
the grading pool's per-sample deadline replaces them (ecosystem-notes §7).
"""

from __future__ import annotations

import logging

from kuberl.worker.rewards.boxed import label_answer, last_boxed

logging.getLogger("math_verify").setLevel(logging.ERROR)


def _parse(answer: str) -> list[object]:
    """math-verify's parse of one bare answer (LaTeX first, then plain text)."""
    from math_verify import parse

    return parse(f"${answer}$", parsing_timeout=None) or parse(answer, parsing_timeout=None)


def grade(response: str, label: object) -> float:
    """1.0 if the response's last ``\\boxed{}`` answer is equivalent to the label, else 0.0."""
    from math_verify import verify

    answer = last_boxed(response)
    if answer is None or not answer.strip():
        return 0.0
    gold, pred = _parse(label_answer(label)), _parse(answer.strip())
    if not gold or not pred:
        return 0.0
    return 1.0 if verify(gold, pred, timeout_seconds=None) else 0.0
