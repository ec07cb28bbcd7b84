"""``dapo`` grader: DAPO's rule for dapo-math-17k (answers on an ``Answer:`` line), +1 or -1.

Only the last 300 characters are read; the last ``Answer: ...`` line there is the prediction. Both
sides are normalised the way Minerva-style graders do (strip units, ``\\text{}``, ``$``, thousands
separators, a leading ``x =``), then compared as strings or, when both are numbers, numerically.
"""

from __future__ import annotations

import re

from kuberl.worker.rewards.boxed import last_boxed

TAIL_CHARS = 300
_ANSWER = re.compile(r"(?i)Answer\s*:\s*([^\n]+)")
_DROP = ("square", "ways", "integers", "dollars", "mph", "inches", "hours", "km", "units",
         "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "pounds", "meters",
         "\\ldots", "\\dots", "^\\circ", "^{\\circ}", "\\;", ",\\!", "{,}", '"')


def normalize_final_answer(answer: str) -> str:
    """Short canonical text for a final answer."""
    s = answer.split("=")[-1].strip()
    for prefix in ("an ", "a "):
        s = s.removeprefix(prefix)
    s = s.replace("\\$", "").replace("\\ ", "").replace(" ", "")
    for token in _DROP:
        s = s.replace(token, "")
    s = re.sub(r"\$(.*?)\$", r"\1", s)
    s = re.sub(r"\\(?:text|textbf|mathrm|overline)\{(.*?)\}", r"\1", s)
    s = last_boxed(s) or s
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = s.replace("$", "").rstrip(".")
    if re.fullmatch(r"-?[\d,]+(\.\d+)?", s):
        s = s.replace(",", "")
    return s


def _number(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def predict(response: str) -> str | None:
    """The normalised prediction on the last ``Answer:`` line of the response's tail."""
    found = _ANSWER.findall(response[-TAIL_CHARS:])
    return normalize_final_answer(found[-1]) if found else None


def grade(response: str, label: object) -> float:
    """+1.0 if the ``Answer:`` line matches the label, -1.0 otherwise (including no answer)."""
    pred = predict(response)
    if pred is None:
        return -1.0
    truth = normalize_final_answer(str(label))
    if pred == truth:
        return 1.0
    a, b = _number(pred), _number(truth)
    return 1.0 if a is not None and b is not None and abs(a - b) < 1e-9 else -1.0
