"""Batches for training: right-padded rows, or padding-free rows of several conversations side by side.

Media features are concatenated in the order their slots appear in the batch (row by row, left
to right), which is the order the model's scatter fills them.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from .configuration_mmmmodal import MEDIA_INPUT_NAMES
from .data import IGNORE_INDEX, EncodeStats

MEDIA_KEYS = (*MEDIA_INPUT_NAMES["image"], *MEDIA_INPUT_NAMES["audio"])


def _concat_media(samples: list[dict]) -> dict:
    batch = {}
    for key in MEDIA_KEYS:
        parts = [np.asarray(s[key]) for s in samples if key in s and len(s[key])]
        if parts:
            batch[key] = torch.from_numpy(np.concatenate(parts, axis=0))
    if any("pooled_images" in s for s in samples):  # pooled video frames: a flag per image, False where not given
        flags = [np.asarray(s.get("pooled_images", np.zeros(len(s.get("pixel_values", ())), bool))) for s in samples]
        batch["pooled_images"] = torch.from_numpy(np.concatenate(flags).astype(bool))
    return batch


@dataclass
class MMMModalDataCollator:
    """Right-pads `input_ids` (pad id), `labels` (-100) and `attention_mask` (0 on padding)."""

    pad_token_id: int
    stats: EncodeStats = field(default_factory=EncodeStats)

    def __call__(self, samples: list[dict]) -> dict:
        length = max(len(s["input_ids"]) for s in samples)
        input_ids = torch.full((len(samples), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample["input_ids"])
            input_ids[row, :n] = torch.as_tensor(sample["input_ids"])
            labels[row, :n] = torch.as_tensor(sample["labels"])
            attention_mask[row, :n] = 1
        self.stats.real_tokens += int(attention_mask.sum())
        self.stats.positions += attention_mask.numel()
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, **_concat_media(samples)}


def balanced_rows(lengths: list[int], block_size: int) -> list[list[int]]:
    """Split conversations of `lengths` into as few rows of at most `block_size` tokens as fit, rows nearly equal.

    Returns each row's conversation indices, in order. Longest first, each to the shortest row so far; then
    the longest and the shortest row trade a conversation (or one moves) while that brings them
    closer. Rows are padded to the longest, so near-equal rows waste almost nothing (BENCHMARKS.md 4).
    """
    too_long = [(index, n) for index, n in enumerate(lengths) if n > block_size]
    if too_long:
        index, n = too_long[0]
        raise ValueError(f"conversation {index + 1} of this step has {n} tokens, more than --block_size {block_size}")
    count = max(1, -(-sum(lengths) // block_size))
    while True:
        rows: list[list[int]] = [[] for _ in range(count)]
        totals = [0] * count
        for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            shortest = totals.index(min(totals))
            rows[shortest].append(index)
            totals[shortest] += lengths[index]
        for _ in range(4 * len(lengths)):
            long_row, short_row = totals.index(max(totals)), totals.index(min(totals))
            gap = totals[long_row] - totals[short_row]
            # Trade x (from the long row) for y (from the short row, or nothing): best when x - y is half the gap.
            trades = [
                (abs(gap - 2 * (lengths[x] - (lengths[y] if y is not None else 0))), x, y)
                for x in rows[long_row]
                for y in [None, *rows[short_row]]
                if 0 < lengths[x] - (lengths[y] if y is not None else 0) < gap
            ]
            if not trades:
                break
            _, x, y = min(trades, key=lambda trade: trade[0])
            moved = lengths[x] - (lengths[y] if y is not None else 0)
            rows[long_row].remove(x)
            rows[short_row].append(x)
            if y is not None:
                rows[short_row].remove(y)
                rows[long_row].append(y)
            totals[long_row] -= moved
            totals[short_row] += moved
        if max(totals) <= block_size:
            return [sorted(row) for row in rows]  # each row in the step's order
        count += 1


@dataclass
class MMMModalPackingCollator:
    """Padding-free batches: a step's conversations side by side in one row, as `DataCollatorWithFlattening` does.

    Position ids restart at 0 for each conversation and no attention mask is returned: transformers'
    mask code finds the restarts and keeps attention inside each conversation (SDPA, eager and flash
    alike), so the loss and gradients are those of the conversations run one by one. The first label
    of each conversation is -100, as it would be in a row of its own. `block_size` caps a row, which
    bounds memory (SDPA's mask is row x row): a step holding more tokens fills several rows of nearly
    equal length (`balanced_rows`), padded to the longest with position 0 at every padding token, so
    no position ever exceeds the language model's context.
    """

    pad_token_id: int
    block_size: int
    stats: EncodeStats = field(default_factory=EncodeStats)

    def __call__(self, samples: list[dict]) -> dict:
        rows = balanced_rows([len(sample["input_ids"]) for sample in samples], self.block_size)
        width = max(sum(len(samples[i]["input_ids"]) for i in row) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        position_ids = torch.zeros_like(input_ids)  # padding: position 0 each, a sequence of one never attended to
        for row, members in enumerate(rows):
            cursor = 0
            for index in members:
                sample = samples[index]
                n = len(sample["input_ids"])
                input_ids[row, cursor : cursor + n] = torch.as_tensor(sample["input_ids"])
                sample_labels = torch.as_tensor(sample["labels"]).clone()
                sample_labels[0] = IGNORE_INDEX
                labels[row, cursor : cursor + n] = sample_labels
                position_ids[row, cursor : cursor + n] = torch.arange(n)
                cursor += n
        self.stats.real_tokens += sum(len(s["input_ids"]) for s in samples)
        self.stats.positions += input_ids.numel()
        batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
        batch.update(_concat_media([samples[i] for row in rows for i in row]))
        return batch
