"""Lay one micro-batch out as packed rows: several samples per row, positions restarting per sample.

Hugging Face models (transformers 5) read restarting ``position_ids`` with no attention mask as packed
sequences and attend block-diagonally (``masking_utils.find_packed_sequence_indices``), so a packed row
trains exactly what the right-padded rows did, without the padding. The row width bounds what a dense
attention mask costs (width squared per row), so on CPU and with SDPA the width is the longest sample
of the micro-batch; attention kernels that read the packing as variable-length sequences (flash
attention's cu_seqlens) take the whole micro-batch as one row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kuberl.worker.algo.packing import first_fit

VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn",
                    "kernels-community/vllm-flash-attn3", "kuberl_varlen")


@dataclass(frozen=True)
class RowLayout:
    """Where each sample of a micro-batch sits: ``rows[r]`` lists sample indices in row order."""

    rows: list[list[int]]
    width: int  # tokens per row (the fullest row)

    def offsets(self, lengths: Sequence[int]) -> dict[int, tuple[int, int]]:
        """sample index -> (row, first token's column)."""
        out: dict[int, tuple[int, int]] = {}
        for r, members in enumerate(self.rows):
            col = 0
            for i in members:
                out[i] = (r, col)
                col += lengths[i]
        return out


def row_width(lengths: Sequence[int], attn_implementation: str | None, total_tokens: int) -> int:
    """Pure: the row capacity for a micro-batch: one row for variable-length kernels, else the
    longest sample (so a row's dense block mask costs no more than a padded row's)."""
    if attn_implementation in VARLEN_ATTENTION:
        return max(total_tokens, 1)
    return max(lengths, default=1)


def plan_rows(lengths: Sequence[int], width: int) -> RowLayout:
    """Pure: first-fit decreasing of samples into rows of at most ``width`` tokens (a longer sample
    gets a row of its own). Inside a row samples keep ascending index order."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows = [sorted(b) for b in first_fit(order, lengths, max(width, 1))]
    rows.sort(key=lambda b: b[0])
    used = max((sum(lengths[i] for i in b) for b in rows), default=0)
    return RowLayout(rows, used)


def row_tensors(tokens: Sequence[Sequence[int]], layout: RowLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids (R, W) and position_ids (R, W) of a layout. Each sample's positions run 0..n-1; the
    padding after a row's last sample is a sequence of its own (positions from 0), which no sample
    attends to and whose outputs are never read."""
    R, W = len(layout.rows), layout.width
    input_ids = torch.zeros(R, W, dtype=torch.long)
    positions = torch.zeros(R, W, dtype=torch.long)
    for r, members in enumerate(layout.rows):
        col = 0
        for i in members:
            n = len(tokens[i])
            input_ids[r, col : col + n] = torch.tensor(tokens[i], dtype=torch.long)
            positions[r, col : col + n] = torch.arange(n)
            col += n
        positions[r, col:] = torch.arange(W - col)
    return input_ids, positions
