"""Batches for training: right-padded rows, or packed blocks of several conversations.

Media features are concatenated in the order their slots appear in the batch (row by row, left
to right), which is the order the model's scatter fills them.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from .data import IGNORE_INDEX, EncodeStats

MEDIA_KEYS = ("pixel_values", "input_features", "input_features_mask")


def _concat_media(samples: list[dict]) -> dict:
    batch = {}
    for key in MEDIA_KEYS:
        parts = [np.asarray(s[key]) for s in samples if key in s and len(s[key])]
        if parts:
            batch[key] = torch.from_numpy(np.concatenate(parts, axis=0))
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


@dataclass
class MMMModalPackingCollator:
    """Packs conversations into blocks of `block_size` tokens (first fit, in order).

    Position ids restart at 0 for each conversation and no attention mask is returned, so the
    language model builds a block-diagonal causal mask: no conversation sees another. The first
    label of each conversation is -100, as it would be in a row of its own.
    """

    pad_token_id: int
    block_size: int
    stats: EncodeStats = field(default_factory=EncodeStats)

    def __call__(self, samples: list[dict]) -> dict:
        blocks: list[list[int]] = []  # sample indices per block
        free: list[int] = []
        for index, sample in enumerate(samples):
            n = len(sample["input_ids"])
            if n > self.block_size:
                raise ValueError(f"a conversation of {n} tokens does not fit a block of {self.block_size}")
            target = next((b for b, space in enumerate(free) if space >= n), None)
            if target is None:
                blocks.append([])
                free.append(self.block_size)
                target = len(blocks) - 1
            blocks[target].append(index)
            free[target] -= n

        input_ids = torch.full((len(blocks), self.block_size), self.pad_token_id, dtype=torch.long)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        position_ids = torch.zeros_like(input_ids)
        order = []
        for row, members in enumerate(blocks):
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
                order.append(index)
            # The padded tail counts as one more sequence of its own, never attended to by real tokens.
            position_ids[row, cursor:] = torch.arange(self.block_size - cursor)
        real = sum(len(s["input_ids"]) for s in samples)
        self.stats.real_tokens += real
        self.stats.positions += input_ids.numel()
        batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
        batch.update(_concat_media([samples[i] for i in order]))
        return batch
