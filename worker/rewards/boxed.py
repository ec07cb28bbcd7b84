"""Answer extraction shared by the math graders: the last ``\\boxed{...}`` and the final-answer text."""

from __future__ import annotations

THINK_END = "</think>"


def after_thinking(response: str) -> str | None:
    """The text after the last ``</think>``, or None when the model never closed its thinking."""
    if THINK_END not in response:
        return None
    return response.rsplit(THINK_END, 1)[1]


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (braces balanced), or ``\\boxed x``."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    if text.startswith(" ", i):  # "\boxed 5": the token up to the next space or dollar
        rest = text[i + 1 :]
        return rest.split("$")[0].split()[0] if rest.strip() else None
    if not text.startswith("{", i):
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None  # unbalanced: no answer


def label_answer(label: object) -> str:
    """A label as answer text: boxed labels are unwrapped, numbers stringified."""
    text = str(label).strip()
    return last_boxed(text) or text
