from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kuberl.errors import SpecError
from kuberl.worker.data.dataset import PromptDataset, render_prompt

from .rows import AIME_ROWS, DAPO_ROWS


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_chat_prompts_are_rendered_with_the_chat_template(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "dapo.jsonl", DAPO_ROWS)
    ds = PromptDataset(path, tiny_tokenizer, input_key="prompt", label_key="label",
                       apply_chat_template=True)
    assert len(ds) == 3 and ds.dropped == 0
    text = tiny_tokenizer.decode(ds[0].prompt_ids)
    assert text.startswith("<|im_start|>user\nSolve: what is 12 + 22?")
    assert text.endswith("<|im_start|>assistant\n")
    assert ds[0].label == "34" and ds[0].metadata == {"source": "dapo"}
    assert ds[0].prompt == DAPO_ROWS[0]["prompt"]


def test_parquet_and_jsonl_give_the_same_prompts(tmp_path, tiny_tokenizer):
    jl = write_jsonl(tmp_path / "aime.jsonl", AIME_ROWS)
    pqt = tmp_path / "aime.parquet"
    pq.write_table(pa.Table.from_pylist(AIME_ROWS), pqt)
    a = PromptDataset(jl, tiny_tokenizer, "prompt", "label", apply_chat_template=True)
    b = PromptDataset(pqt, tiny_tokenizer, "prompt", "label", apply_chat_template=True)
    assert [p.prompt_ids for p in a.prompts] == [p.prompt_ids for p in b.prompts]
    assert [p.label for p in b.prompts] == ["24", "\\frac{3}{4}"]


def test_long_prompts_are_dropped_and_counted(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"input": "a b"}, {"input": "x " * 200}])
    ds = PromptDataset(path, tiny_tokenizer, max_prompt_len=50)
    assert len(ds) == 1 and ds.dropped == 1 and ds[0].index == 0


def test_plain_text_prompt_is_encoded_without_template(tiny_tokenizer):
    ids = render_prompt("what is 1 + 2", tiny_tokenizer, apply_chat_template=False)
    assert tiny_tokenizer.decode(ids) == "what is 1 + 2"


def test_chat_messages_without_template_flag_are_refused(tiny_tokenizer):
    with pytest.raises(SpecError, match="applyChatTemplate"):
        render_prompt([{"role": "user", "content": "hi"}], tiny_tokenizer, False)


@pytest.mark.parametrize(("rows", "kwargs", "field"), [
    ([{"question": "q"}], {"input_key": "prompt"}, "inputKey"),
    ([{"prompt": "q"}], {"input_key": "prompt", "label_key": "answer"}, "labelKey"),
])
def test_missing_keys_name_the_field_and_the_keys_present(tmp_path, tiny_tokenizer, rows, kwargs,
                                                         field):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(SpecError, match=field) as err:
        PromptDataset(path, tiny_tokenizer, **kwargs)
    assert str(sorted(rows[0])) in str(err.value)


def test_unknown_suffix_and_missing_file_are_spec_errors(tmp_path, tiny_tokenizer):
    with pytest.raises(SpecError, match="does not exist"):
        PromptDataset(tmp_path / "nope.jsonl", tiny_tokenizer)
    (tmp_path / "data.csv").write_text("a\n")
    with pytest.raises(SpecError, match=r"\.jsonl or \.parquet"):
        PromptDataset(tmp_path / "data.csv", tiny_tokenizer)
