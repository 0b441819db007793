"""`mmmmodal demo --video`: teach the demo's trained model videos with their soundtracks, and prove it kept the rest.

A third stage, as a released checkpoint would take it: the model from `mmmmodal demo` (its folder's
`model/`), which has seen images and clips but never a video, is finetuned through the package's
own training code on video conversations (`video_world.py`) mixed with rows of its own world, so
its other kinds hold; then every kind, old and new, is scored on held-out conversations by
`mmmmodal eval`'s prediction, and the saved folder is reloaded in a fresh process to chat about
videos. Its own run of a few minutes, not part of `mmmmodal demo`: that run already spends most of
its 10 minutes on its own world.
"""

import importlib.util
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..evaluation.metrics import verdict
from ..processing_mmmmodal import MMMModalProcessor
from .remote_code import MMMModalDemoConfig, MMMModalDemoForConditionalGeneration
from .report import write_report
from .run import (
    DemoSettings,
    accuracy_table,
    evaluate,
    reload_and_chat,
    run_stage,
    sample_chats,
    target_verdict,
)
from .video_world import VIDEO_CHANCE, VIDEO_KINDS, make_video_split
from .world import CHANCE, KINDS, read_split

VIDEO_NOTICE = (
    "This is the demo's model: it knows only its synthetic world (shapes in six colours, clips of 1-4 beeps, "
    "4-second videos of a shape changing colour with one beep) asked the way its examples ask, e.g. 'What colour "
    "is the shape in image 2?', 'How many beeps are in audio 1?', 'What colour was the shape when the beep "
    "sounded?' (one video alone); other questions get guesses."
)


def _absolute_rows(conversations, media_folder: Path) -> list[dict]:
    """Rows whose media paths are absolute, so rows of two worlds can share one training file."""
    return [{**c.row(), "messages": c.prompt(media_folder) + [c.turns[-1]]} for c in conversations]


def run_video_demo(settings: DemoSettings) -> dict:
    started = time.time()
    torch.set_num_threads(settings.threads)
    output = Path(settings.output_dir)
    base, world = output / "model", output / "world"
    if not (base / "config.json").is_file() or not (world / "train" / "data.jsonl").is_file():
        raise SystemExit(
            f"mmmmodal demo --video starts from the model and world of `mmmmodal demo`: {output} holds no model/ and "
            f"world/. Run `mmmmodal demo --output-dir {output}` (or --quick) first."
        )
    if importlib.util.find_spec("av") is None:
        raise SystemExit(
            'mmmmodal demo --video writes and reads mp4 files with PyAV: pip install "mmmmodal-hf[video]"'
        )
    folder = output / "video"
    timings = {}

    print(f"[1/5] writing videos to {folder / 'world'}")
    train_split = make_video_split(
        folder / "world" / "train", settings.video_conversations, settings.seed + 2, settings.video_train_videos
    )
    eval_split = make_video_split(
        folder / "world" / "heldout",
        settings.eval_per_kind * len(VIDEO_KINDS),
        settings.seed + 3,
        max(40, settings.eval_per_kind * 4),
    )
    replay = read_split(world / "train")[: settings.video_replay]
    mixed = folder / "world" / "train_with_replay.jsonl"
    with open(mixed, "w") as handle:
        rows = _absolute_rows(train_split, folder / "world" / "train") + _absolute_rows(replay, world / "train")
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    timings["world_s"] = time.time() - started

    print(f"[2/5] finetune on {len(train_split)} video and {len(replay)} of its own conversations "
          f"({settings.video_finetune_steps} steps)")  # fmt: skip
    stage_started = time.time()
    final, losses = run_stage(
        "finetune", base, mixed, folder / "model", settings.video_finetune_steps, settings,
        settings.video_learning_rate,
    )  # fmt: skip
    timings["training_s"] = time.time() - stage_started
    config = MMMModalDemoConfig.from_pretrained(final)
    config.chat_notice = VIDEO_NOTICE
    config.save_pretrained(final)

    old_split = read_split(world / "heldout")
    print(f"[3/5] scoring {len(eval_split)} held-out video and {len(old_split)} of its own world's conversations")
    eval_started = time.time()
    model = MMMModalDemoForConditionalGeneration.from_pretrained(final)
    processor = MMMModalProcessor.from_pretrained(final)
    results = evaluate(model, processor, eval_split, folder / "world" / "heldout" / "data.jsonl")
    results += evaluate(model, processor, old_split, world / "heldout" / "data.jsonl")
    verdict_sets = {}
    for conversation in train_split + replay:
        verdict_sets.setdefault(conversation.kind, set()).add(verdict(conversation.answer))
    kinds = VIDEO_KINDS + KINDS
    table = accuracy_table(results, verdict_sets, kinds, {**VIDEO_CHANCE, **CHANCE})
    timings["evaluation_s"] = time.time() - eval_started

    print("[4/5] reloading the saved folder in a fresh process to chat about videos")
    one_per_kind = [next(c for c in eval_split if c.kind == kind) for kind in VIDEO_KINDS]
    reloaded = reload_and_chat(final, sample_chats(one_per_kind, folder / "world" / "heldout"), folder)
    timings["total_s"] = time.time() - started
    metrics = {
        "settings": asdict(settings),
        "kinds": list(kinds),
        "video_kinds": list(VIDEO_KINDS),
        "accuracy": table,
        **target_verdict(table, kinds, timings["total_s"]),
        "losses": losses,
        "timings": timings,
        "reloaded_from": reloaded["model_module"],
        "model_folder": str(final),
    }
    if settings.quick_run:
        metrics["quick_checks"] = video_quick_checks(metrics)
    print("[5/5] writing the report")
    write_report(folder / "report", metrics, results, reloaded["transcripts"])
    return metrics


def video_quick_checks(metrics: dict) -> dict[str, bool]:
    """What `--video --quick` proves, after a quick demo's half-trained model: the video stage reads videos and
    learns from them (not the 90% target; the beep's colour needs the full run's model to build on)."""
    losses = [row["loss"] for row in metrics["losses"]]
    end = metrics["accuracy"]["video_end_colour"]
    return {
        "finetune loss fell below half its start": bool(losses) and losses[-1] < 0.5 * losses[0],
        "the colour at the end of a video right twice as often as chance": end["accuracy"]
        >= 2 * VIDEO_CHANCE["video_end_colour"],
    }
