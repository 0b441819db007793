"""Finetune throughput with `--cache_rows` against encoding every row on every epoch.

The demo's finetune sees each conversation several times. Without the cache, the dataloader
worker decodes PNGs, resizes, extracts Whisper features and renders the chat template again each
epoch, and on a 2-core machine it competes with the training step for the cores. Both contenders
train the demo's model (`mmmmodal demo` defaults) on the same small demo world for the same number
of epochs, with one persistent dataloader worker, as the demo does.

    python bench/row_cache.py [--conversations 320] [--epochs 3] [--repeats 2]
"""

import argparse
import tempfile
from pathlib import Path

import torch
from common import interleaved_medians, report
from transformers import TrainingArguments
from transformers.utils import logging as hf_logging

from mmmmodal_hf.demo.run import DemoSettings, build_model, build_processor
from mmmmodal_hf.demo.world import make_split
from mmmmodal_hf.training import MMMModalTrainArguments, build_trainer


def train(base: Path, data: Path, output: Path, steps: int, batch_size: int, cache_rows: bool) -> None:
    """One finetune run (trainer set-up included: the same for both contenders)."""
    args = MMMModalTrainArguments(
        stage="finetune", model=str(base), data=str(data), block_size=1024, packing=False, cache_rows=cache_rows
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
    )
    build_trainer(args, training_args).train()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    options = parser.parse_args()
    hf_logging.set_verbosity_error()
    settings = DemoSettings()
    steps = options.epochs * options.conversations // settings.batch_size
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        world = make_split(work / "world", options.conversations, seed=0, images=200, clips=120)
        processor, _ = build_processor(settings, work, [t["content"] for c in world for t in c.turns])
        base = work / "base"
        build_model(settings, processor).save_pretrained(base)
        processor.save_pretrained(base)
        data = work / "world" / "data.jsonl"

        def contender(cache_rows: bool):
            return lambda: train(base, data, work / "out", steps, settings.batch_size, cache_rows)

        medians = interleaved_medians(
            {"encode every epoch": contender(False), "cache_rows": contender(True)}, repeats=options.repeats, warmup=0
        )
    rows = [{"contender": name, "seconds": value, "steps_per_s": steps / value} for name, value in medians.items()]
    ratio = medians["encode every epoch"] / medians["cache_rows"]
    report(
        "row_cache",
        rows,
        {"steps": steps, "epochs": options.epochs, "conversations": options.conversations, "speedup": ratio},
    )
    print(f"cache_rows: {ratio:.2f}x the steps per second of encoding every epoch")


if __name__ == "__main__":
    main()
