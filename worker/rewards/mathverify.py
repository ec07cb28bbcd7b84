"""``math`` grader: math-verify's parser and equivalence check, with its internal timeouts off.

math-verify's timeouts use ``signal.alarm`` and break outside the main thread; the grading pool's
per-sample deadline replaces them (ecosystem-notes §7). Only the text after ``</think>`` is graded
when the response has one, so answers tried while thinking do not count.
"""

from __future__ import annotations

import logging

from kuberl.worker.rewards.boxed import THINK_END

logging.getLogger("math_verify").setLevel(logging.ERROR)


def grade(response: str, label: object) -> float:
    """1.0 if math-verify finds the response's final answer equivalent to the label."""
    from math_verify import parse, verify

    text = response.rsplit(THINK_END, 1)[1] if THINK_END in response else response
    truth = str(label).strip()
    gold = parse(truth if ("$" in truth or "\\boxed" in truth) else f"${truth}$",
                 parsing_timeout=None)
    if not gold:
        gold = parse(truth, parsing_timeout=None)
    pred = parse(text, parsing_timeout=None)
    if not gold or not pred:
        return 0.0
    return 1.0 if verify(gold, pred, timeout_seconds=None) else 0.0
