"""Prompt datasets: jsonl or parquet rows turned into token ids the engines can take.

The worker owns tokenisation (engines get ``input_ids``), so chat-message prompts are rendered here
with the tokenizer's chat template when ``applyChatTemplate`` is set. Prompts longer than
``maxPromptLen`` are dropped and counted, never truncated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kuberl.errors import SpecError


@dataclass(frozen=True)
class Prompt:
    """One dataset row, ready to generate from."""

    index: int  # row number in the file
    prompt_ids: list[int]
    prompt: Any  # the raw prompt: text or chat messages (graders and logs use it)
    label: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a ``.jsonl`` or ``.parquet`` file as dicts."""
    path = Path(path)
    if not path.exists():
        raise SpecError([f"spec.rollout.promptData: {str(path)!r} does not exist; give a .jsonl or "
                         ".parquet file reachable from the worker"])
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix in (".jsonl", ".json"):
        rows = []
        with path.open() as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise SpecError([f"spec.rollout.promptData: line {n} of {path} is not JSON: {e}"]) from e
        return rows
    raise SpecError([f"spec.rollout.promptData: {str(path)!r} has suffix {path.suffix!r}; "
                     "use .jsonl or .parquet"])


def render_prompt(raw: Any, tokenizer: Any, apply_chat_template: bool,
                  template_kwargs: dict[str, Any] | None = None) -> list[int]:
    """Prompt text or chat messages -> token ids (generation prompt appended for chat)."""
    is_chat = isinstance(raw, list) and all(isinstance(m, dict) for m in raw)
    if apply_chat_template:
        messages = raw if is_chat else [{"role": "user", "content": str(raw)}]
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False,
            **(template_kwargs or {}),
        )
        return [int(t) for t in ids]
    if is_chat:
        raise SpecError(["spec.rollout.applyChatTemplate: the prompts are chat messages; set "
                         "applyChatTemplate: true (or give plain-text prompts)"])
    return tokenizer.encode(str(raw), add_special_tokens=False)


class PromptDataset:
    """Every usable prompt of one file; ``dropped`` counts those over ``max_prompt_len``."""

    def __init__(
        self, path: str | Path, tokenizer: Any, input_key: str = "input",
        label_key: str | None = None, metadata_key: str = "metadata",
        apply_chat_template: bool = False, max_prompt_len: int | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> None:
        rows = read_rows(path)
        self.path = str(path)
        self.prompts: list[Prompt] = []
        self.dropped = 0
        for i, row in enumerate(rows):
            if input_key not in row:
                raise SpecError([f"spec.rollout.inputKey: row {i} of {path} has no key {input_key!r} "
                                 f"(it has {sorted(row)}); set inputKey to the prompt's key"])
            if label_key is not None and label_key not in row:
                raise SpecError([f"spec.rollout.labelKey: row {i} of {path} has no key {label_key!r} "
                                 f"(it has {sorted(row)}); set labelKey to the answer's key"])
            ids = render_prompt(row[input_key], tokenizer, apply_chat_template, template_kwargs)
            if max_prompt_len is not None and len(ids) > max_prompt_len:
                self.dropped += 1
                continue
            meta = row.get(metadata_key) or {}
            if isinstance(meta, str):
                meta = json.loads(meta) if meta.strip() else {}
            self.prompts.append(Prompt(
                index=i, prompt_ids=ids, prompt=row[input_key],
                label=row.get(label_key) if label_key else None, metadata=dict(meta),
            ))
        if not self.prompts:
            raise SpecError([f"spec.rollout.promptData: no usable prompt in {path} ({len(rows)} rows, "
                             f"{self.dropped} longer than maxPromptLen={max_prompt_len})"])

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> Prompt:
        return self.prompts[i]
