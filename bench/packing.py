"""Packing: share of padding in blocks of 8192 on the published length mix, packed against padded batches.

Lengths follow the published data: image rows (one 384 px image: 576 slots + tags + a QA),
audio rows (one clip of 3-30 s: its trimmed slots + a transcript QA), and multi-image multi-turn
rows (1-4 images, 0-3 clips, 1-3 turns). The real collators (`MMMModalPackingCollator`,
`MMMModalDataCollator`) batch the same 20,000 rows; positions are counted, nothing is trained.

    python bench/packing.py [--quick]
"""

import argparse

import numpy as np
from common import parse_arguments, report

from mmmmodal_hf.collator import MMMModalDataCollator, MMMModalPackingCollator
from mmmmodal_hf.configuration_mmmmodal import num_real_audio_slots

IMAGE = 576 + 2
WINDOW = 487


def audio_positions(seconds: float) -> int:
    total, left = 2, seconds
    while left > 0:
        window = min(30.0, left)
        total += num_real_audio_slots(int(np.ceil(window * 100)), WINDOW, 3)
        left -= 30.0
    return total


def row_lengths(count: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    lengths = []
    for _ in range(count):
        kind = rng.choice(["image", "audio", "multi"], p=[0.4, 0.3, 0.3])
        if kind == "image":
            lengths.append(IMAGE + int(rng.integers(40, 400)))
        elif kind == "audio":
            lengths.append(audio_positions(rng.uniform(3, 30)) + int(rng.integers(30, 300)))
        else:
            turns = int(rng.integers(1, 4))
            media = IMAGE * int(rng.integers(1, 5)) + sum(
                audio_positions(rng.uniform(3, 30)) for _ in range(rng.integers(0, 4))
            )
            lengths.append(media + sum(int(rng.integers(40, 400)) for _ in range(turns)))
    return lengths


def padding_share(collator, lengths: list[int], per_step: int) -> float:
    real = positions = 0
    for start in range(0, len(lengths), per_step):
        samples = [{"input_ids": [1] * n, "labels": [1] * n} for n in lengths[start : start + per_step]]
        batch = collator(samples)
        real += sum(len(s["input_ids"]) for s in samples)
        positions += batch["input_ids"].numel()
    return 1 - real / positions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--block-size", type=int, default=8192)
    args = parse_arguments(parser, rows=200)
    lengths = [n for n in row_lengths(args.rows, 0) if n <= args.block_size]
    rows = []
    for per_step in (4, 8, 16, 32):
        packed = padding_share(MMMModalPackingCollator(0, args.block_size), lengths, per_step)
        padded = padding_share(MMMModalDataCollator(0), lengths, per_step)
        rows.append(
            {
                "rows_per_step": per_step,
                "packed_padding_share": packed,
                "padded_padding_share": padded,
            }
        )
    extra = {
        "data_rows": len(lengths),
        "median_length": int(np.median(lengths)),
        "p95_length": int(np.percentile(lengths, 95)),
    }
    report(f"padding share, blocks of {args.block_size}", rows, extra)
    print(f"lengths: {extra}")


if __name__ == "__main__":
    main()
