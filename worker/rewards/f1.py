"""``f1`` grader: SQuAD-style token F1 between response and label after normalisation."""

from __future__ import annotations

import re
import string
from collections import Counter

_EXACT_ONLY = {"yes", "no", "noanswer"}


def normalize(text: str) -> str:
    """Lowercase, drop punctuation and English articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def grade(response: str, label: object) -> float:
    """Token F1 in [0, 1]; yes/no/noanswer labels or predictions must match exactly."""
    pred, truth = normalize(response), normalize(str(label))
    if (pred in _EXACT_ONLY or truth in _EXACT_ONLY) and pred != truth:
        return 0.0
    common = Counter(pred.split()) & Counter(truth.split())
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred.split()), same / len(truth.split())
    return 2 * precision * recall / (precision + recall)
