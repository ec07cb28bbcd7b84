"""``deepscaler`` grader: slime's rule set, implemented from its description (ecosystem-notes §7).

Reward 1 only if the response closes its thinking with ``</think>``, the text after it has a
``\\boxed{}`` answer, and that answer equals the label as normalised strings or as sympy
expressions whose difference simplifies to 0. Otherwise 0. Binary, no partial credit.
"""

from __future__ import annotations

import re

from kuberl.worker.rewards.boxed import after_thinking, label_answer, last_boxed

_UNIT_WORDS = ("degrees", "degree", "units", "unit", "cm", "meters", "inches", "feet", "dollars")


def _fix_fracs(s: str) -> str:
    r"""``\frac12`` -> ``\frac{1}{2}``, ``\frac1{2}`` -> ``\frac{1}{2}``."""
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    return re.sub(r"\\frac\{([^{}]+)\}(\d)", r"\\frac{\1}{\2}", s)


def normalize(answer: str) -> str:
    """Canonical string form of a short math answer (spacing, LaTeX spelling, units, trivial forms)."""
    s = answer.strip().replace("\n", "")
    s = s.rstrip(".")
    s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", "")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("°", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{\s*([^{}]*)\}", r"\1", s)
    for word in _UNIT_WORDS:
        s = re.sub(rf"(?<=[\d}}])\s*{word}\b", "", s)
    if re.fullmatch(r"[a-zA-Z]\s*=\s*.+", s):  # "x = 5" -> "5"
        s = s.split("=", 1)[1]
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):  # 1,000 -> 1000
        s = s.replace(",", "")
    if re.fullmatch(r"-?\d+\.0+", s):  # 5.0 -> 5
        s = s.split(".")[0]
    if s.startswith("."):
        s = "0" + s
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)  # 3/4 -> \frac{3}{4}
    if m:
        s = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
    return s


def _split_top_level(s: str) -> list[str]:
    """Split a tuple/set/interval body on commas not nested in brackets."""
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def _sympy_equal_one(a: str, b: str) -> bool:
    import sympy
    from latex2sympy2_extended import latex2sympy

    if len(a) > 200 or len(b) > 200:  # long garbage can take sympy minutes
        return False
    try:
        diff = sympy.simplify(latex2sympy(a) - latex2sympy(b))
        return bool(diff == 0) or (diff.is_number and abs(complex(diff)) < 1e-9)
    except Exception:
        return False


def sympy_equal(a: str, b: str) -> bool:
    """Both answers parse to expressions (or equally shaped tuples of them) that are equal."""
    brackets = "()[]{}"
    if a[:1] in brackets and b[:1] in brackets and a[:1] == b[:1] and a[-1:] == b[-1:]:
        pa, pb = _split_top_level(a[1:-1]), _split_top_level(b[1:-1])
        if len(pa) > 1 or len(pb) > 1:
            return len(pa) == len(pb) and all(map(_sympy_equal_one, pa, pb))
    return _sympy_equal_one(a, b)


def answers_match(given: str, truth: str) -> bool:
    g, t = normalize(given), normalize(truth)
    return bool(g) and (g == t or sympy_equal(g, t))


def grade(response: str, label: object) -> float:
    """1.0 if the boxed answer after ``</think>`` matches the label, else 0.0."""
    solution = after_thinking(response)
    if solution is None:
        return 0.0
    given = last_boxed(solution)
    if given is None:
        return 0.0
    labels = label if isinstance(label, list | tuple) else [label]
    return 1.0 if any(answers_match(given, label_answer(t)) for t in labels) else 0.0
