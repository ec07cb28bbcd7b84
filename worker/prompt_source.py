"""Fresh prompt groups for the rollout: dataset + cursor + sample numbering, with resumable state."""

from __future__ import annotations

from typing import Any

from kuberl.worker.data.cursor import PromptCursor
from kuberl.worker.data.dataset import PromptDataset
from kuberl.worker.rollout.generate import make_group
from kuberl.worker.rollout.sample import Sample


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


class PromptSource:
    """Hands out groups of ``n_samples`` pending samples per prompt; ``state_dict`` goes in checkpoints."""

    def __init__(self, dataset: PromptDataset, cursor: PromptCursor, n_samples: int, tokenizer: Any,
                 rm_type: str | None = None) -> None:
        self.dataset = dataset
        self.cursor = cursor
        self.n_samples = n_samples
        self.tokenizer = tokenizer
        self.rm_type = rm_type
        self.next_sample_index = 0
        self.next_group_index = 0

    @classmethod
    def for_training(cls, config: Any, tokenizer: Any | None = None) -> PromptSource:
        tokenizer = tokenizer or load_tokenizer(config.hf_checkpoint)
        dataset = PromptDataset(
            config.prompt_data, tokenizer, input_key=config.input_key, label_key=config.label_key,
            metadata_key=config.metadata_key, apply_chat_template=config.apply_chat_template,
            max_prompt_len=config.max_prompt_len,
        )
        cursor = PromptCursor(len(dataset), shuffle=config.shuffle, seed=config.seed,
                              max_epochs=config.num_epoch)
        return cls(dataset, cursor, config.n_samples_per_prompt, tokenizer, config.rm_type)

    @classmethod
    def for_eval(cls, config: Any, eval_set: Any, tokenizer: Any | None = None) -> PromptSource:
        """Every prompt of an eval set exactly once, ``nSamplesPerEvalPrompt`` samples each."""
        tokenizer = tokenizer or load_tokenizer(config.hf_checkpoint)
        dataset = PromptDataset(
            eval_set.path, tokenizer, input_key=eval_set.input_key, label_key=eval_set.label_key,
            metadata_key=config.metadata_key, apply_chat_template=config.apply_chat_template,
            max_prompt_len=config.eval_max_prompt_len,
        )
        cursor = PromptCursor(len(dataset), shuffle=False, max_epochs=1)
        source = cls(dataset, cursor, config.n_samples_per_eval_prompt, tokenizer, eval_set.rm_type)
        source.next_sample_index = 10**12  # eval rids never collide with training rids
        return source

    def __len__(self) -> int:
        return len(self.dataset)

    def next_groups(self, n: int) -> list[list[Sample]]:
        """Up to ``n`` new groups (fewer when the data runs out)."""
        groups = []
        for i in self.cursor.take(n):
            prompt = self.dataset[i]
            groups.append(make_group(
                prompt.prompt_ids, self.n_samples, self.next_group_index, self.next_sample_index,
                label=prompt.label, prompt=prompt.prompt,
                metadata={**prompt.metadata, "row": prompt.index, "rm_type": self.rm_type},
            ))
            self.next_group_index += 1
            self.next_sample_index += self.n_samples
        return groups

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor.state_dict(), "next_sample_index": self.next_sample_index,
                "next_group_index": self.next_group_index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor.load_state_dict(state["cursor"])
        self.next_sample_index = state["next_sample_index"]
        self.next_group_index = state["next_group_index"]
