"""The demo's finetune throughput: cached rows against re-encoding, packed blocks against padded batches.

`--compare cache_rows`: the demo's finetune sees each conversation several times. Without the
cache, the dataloader worker decodes PNGs, resizes, extracts Whisper features and renders the chat
template again each epoch, and on a 2-core machine it competes with the training step for the cores.

`--compare packing`: with cached rows, padded batches of 16 conversations (the demo's default
until 2026-11-28) against the same 16 packed into blocks of `--block-sizes` tokens, position ids
restarting per conversation. The conversations and the loss per step are the same; only the
padding differs.

`--compare towers`: packed and cached as the demo trains, with the frozen towers run on every
step's media against run once per distinct medium (`--remember_tower_outputs`). The world's media
recur as often as in the demo's (a pool a quarter and a sixth of the conversations).

`--compare head`: as the demo trains (packed, cached, towers remembered), the LM head over the
whole 32k vocabulary at every labelled position against `--grow_head_from_targets` (the head
computed on the rows of tokens the answers use; the same loss for that head).

`--compare mix`: as the demo trains (packed, cached, towers remembered, head grown), the model
without `previous_token_mix` against the demo's, with it (3 tokens back): what the maps of the
tokens before each position cost per step.

Every contender trains the demo's model (`mmmmodal demo` defaults) on the same small demo world
for the same number of epochs, with one persistent dataloader worker, as the demo does.

    python -m demo_experiments.demo_finetune --compare cache_rows [--conversations 320] [--epochs 3] [--repeats 2]
    python -m demo_experiments.demo_finetune --compare packing [--block-sizes 512,1024]
    python -m demo_experiments.demo_finetune --compare towers --conversations 480
    python -m demo_experiments.demo_finetune --compare head --conversations 960
    python -m demo_experiments.demo_finetune --compare mix --conversations 960
"""

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from transformers import TrainingArguments
from transformers.utils import logging as hf_logging

from mmmmodal_hf.benchmarking import interleaved_medians, report
from mmmmodal_hf.demo.run import DemoSettings, build_model, build_processor
from mmmmodal_hf.demo.world import make_split
from mmmmodal_hf.training import MMMModalTrainArguments, build_trainer


def train(
    base: Path,
    data: Path,
    output: Path,
    steps: int,
    batch_size: int,
    cache_rows: bool,
    block_size: int = 0,
    remember_tower_outputs: int = 0,
    grow_head: bool = False,
) -> None:
    """One finetune run (trainer set-up included: the same for every contender); `block_size` 0 pads."""
    args = MMMModalTrainArguments(
        stage="finetune",
        model=str(base),
        data=str(data),
        block_size=block_size or 1024,
        packing=bool(block_size),
        cache_rows=cache_rows,
        remember_tower_outputs=remember_tower_outputs,
        grow_head_from_targets=grow_head,
    )
    training_args = TrainingArguments(
        output_dir=str(output),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=1,
        dataloader_persistent_workers=True,
        disable_tqdm=True,
        optim="adamw_torch_fused",
        adam_beta2=0.95,
    )
    build_trainer(args, training_args).train()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--compare", choices=["cache_rows", "packing", "towers", "head", "mix"], default="cache_rows")
    parser.add_argument("--block-sizes", default="512,1024")
    parser.add_argument("--conversations", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    options = parser.parse_args()
    hf_logging.set_verbosity_error()
    settings = DemoSettings()
    steps = options.epochs * options.conversations // settings.batch_size
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        # As the demo trains, media recur as often as in its world (6,000 : 1,500 : 1,000).
        if options.compare in ("towers", "head", "mix"):
            images, clips = options.conversations // 4, options.conversations // 6
        else:
            images, clips = 200, 120
        world = make_split(work / "world", options.conversations, seed=0, images=images, clips=clips)
        processor, _ = build_processor(settings, work, [t["content"] for c in world for t in c.turns])
        bases = {}
        for mix in (True, False):
            bases[mix] = work / f"base_mix{int(mix)}"
            window = settings.previous_token_mix if mix else 0
            build_model(replace(settings, previous_token_mix=window), processor).save_pretrained(bases[mix])
            processor.save_pretrained(bases[mix])
        data = work / "world" / "data.jsonl"

        def contender(
            cache_rows: bool, block_size: int = 0, remember: int = 0, grow_head: bool = False, mix: bool = True
        ):
            return lambda: train(
                bases[mix], data, work / "out", steps, settings.batch_size, cache_rows, block_size, remember, grow_head
            )

        if options.compare == "cache_rows":
            baseline, contenders = "encode every epoch", {"encode every epoch": contender(False)}
            contenders["cache_rows"] = contender(True)
        elif options.compare == "towers":
            baseline = "towers run every step"
            contenders = {baseline: contender(True, 256), "towers remembered": contender(True, 256, 100_000)}
        elif options.compare == "head":
            baseline = "head over the whole vocabulary"
            contenders = {
                baseline: contender(True, 256, 100_000),
                "head grown from targets": contender(True, 256, 100_000, True),
            }
        elif options.compare == "mix":
            baseline = "without the previous tokens' maps"
            contenders = {
                baseline: contender(True, 256, 100_000, True, mix=False),
                "previous_token_mix": contender(True, 256, 100_000, True),
            }
        else:
            baseline, contenders = "padded batches", {"padded batches": contender(True)}
            for size in map(int, options.block_sizes.split(",")):
                contenders[f"packed, blocks of {size}"] = contender(True, size)
        medians = interleaved_medians(contenders, repeats=options.repeats, warmup=0)
    rows = [
        {"contender": name, "seconds": value, "steps_per_s": steps / value, "speedup": medians[baseline] / value}
        for name, value in medians.items()
    ]
    report(
        f"demo_finetune_{options.compare}",
        rows,
        {"steps": steps, "epochs": options.epochs, "conversations": options.conversations, "baseline": baseline},
    )
    for row in rows[1:]:
        print(f"{row['contender']}: {row['speedup']:.2f}x the steps per second of {baseline}")


if __name__ == "__main__":
    main()
