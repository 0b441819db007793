"""`mmmmodal demo`: build a small MMMModal, train it on the synthetic world, and prove it end to end.

Steps: write the world (PNG and WAV files + JSONL in the published format), build a small model
from configs (SigLIP vision tower, Whisper encoder, Llama-style LM, the real Mistral tokenizer
when available), pretrain its towers briefly (the stand-in for SigLIP's and Whisper's own
pretraining, see `encoders.py`), run `align` then `finetune` through the package's own training
code with the towers frozen as published, score
exact-match accuracy per question kind on held-out conversations, save a Hub-ready folder,
reload it in a fresh process through AutoModel/AutoProcessor with trust_remote_code, and print
a few multi-turn chats. Everything lands in the output folder, with a report. `--video` then teaches
that model videos with their soundtracks (`video.py`).
"""

import argparse
import textwrap
from pathlib import Path

from ..cli_help import positive
from .language_model import TEXT_CONFIGS
from .run import TARGET_MINUTES, DemoSettings, run_demo
from .video import run_video_demo
from .world import KINDS


def one_and_several(by_candidates: dict) -> tuple[str, str]:
    """Accuracy with one medium of the asked type and with two or more, as printable cells."""
    one = by_candidates.get("1")
    several = [group for count, group in by_candidates.items() if int(count) >= 2]
    answered = sum(group["n"] for group in several)
    one_cell = f"{one['accuracy']:.0%} ({one['n']})" if one else "-"
    several_accuracy = sum(group["accuracy"] * group["n"] for group in several) / max(1, answered)
    return one_cell, f"{several_accuracy:.0%} ({answered})" if answered else "-"


# Each option of `mmmmodal demo`: its DemoSettings field and what it sets (the default is read from DemoSettings).
OPTION_HELP = {
    "output_dir": "folder for the world, the checkpoints, the model and the report",
    "seed": "seed of the world, the model's start and the training order",
    "train_conversations": "training conversations in the world",
    "eval_per_kind": "held-out conversations scored per question kind",
    "train_images": "distinct training images (the held-out ones are drawn apart)",
    "train_clips": "distinct training clips",
    "near_misses": "share of training's which-image and counting conversations drawn with images alike",
    "align_steps": "steps of the align stage (projectors only)",
    "finetune_steps": "steps of the finetune stage",
    "align_learning_rate": "learning rate of align",
    "batch_size": "conversations per step",
    "learning_rate": "peak learning rate of finetune (cosine schedule)",
    "adam_beta2": "AdamW's second-moment decay",
    "hidden_size": "the language model's width",
    "layers": "the language model's layers",
    "rope_theta": "the language model's RoPE base",
    "position_free_pairs": "RoPE pairs per head slowed 1000-fold, so they match by content at any distance",
    "match_heads": "attention heads started as matchers of a number to its medium's tag (0: none)",
    "media_index_embeddings": "ordinal embeddings on each medium's slots (0: none, as published)",
    "media_index_scale": "their start, as a multiple of the digit's token embedding",
    "previous_token_mix": "tokens before each position mapped into its input (0: none, as published)",
    "media_labels": "write 'Image 2:' before each medium in the user's turn",
    "tokenizer": "auto (Mistral's from mistral-common, else one trained on the world), mistral, or trained",
    "lm": "the language model's layout: qwen3 (Llama's plus QK-norm) or llama",
    "threads": "torch threads",
    "vision_pretrain_steps": "steps of the vision tower's stand-in pretraining",
    "audio_pretrain_steps": "steps of the audio tower's stand-in pretraining",
    "train_encoders": "let the towers train in finetune too (published: frozen)",
    "grow_head": "compute finetune's LM head on the answers' tokens (--grow_head_from_targets)",
    "video_conversations": "--video: training conversations about videos",
    "video_train_videos": "--video: distinct training videos",
    "video_replay": "--video: rows of the demo's own world trained beside them",
    "video_finetune_steps": "--video: steps of the video finetune",
    "video_learning_rate": "--video: peak learning rate of the video finetune",
}
_BOOLEAN_OPTIONS = {"train_encoders", "grow_head", "media_labels"}
# Counts a run cannot do with none of (other counts may be 0: a stage, a pretraining or a kind of row left out).
_POSITIVE_OPTIONS = {"train_conversations", "eval_per_kind", "finetune_steps", "batch_size", "hidden_size", "layers",
                     "threads", "learning_rate", "video_conversations", "video_finetune_steps"}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    # Defaults stay unset (SUPPRESS), so only the options given override the settings; each help names its default.
    parser = argparse.ArgumentParser(
        prog="mmmmodal demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    defaults, quick = DemoSettings(), DemoSettings.quick()
    parser.add_argument(
        "--quick",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="a short run (a few minutes) that checks the pipeline learns, for CI (default: off)",
    )
    parser.add_argument(
        "--video",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="teach the model a finished `mmmmodal demo` left in --output-dir videos with their soundtracks, and "
        "score every kind again (its own run of a few minutes; default: off)",
    )
    choices = {"tokenizer": ["auto", "mistral", "trained"], "lm": sorted(TEXT_CONFIGS)}
    for name, text in OPTION_HELP.items():
        default, quick_default = getattr(defaults, name), getattr(quick, name)
        shown = ("on" if default else "off") if name in _BOOLEAN_OPTIONS else default
        note = f"default: {shown}" + (f"; --quick: {quick_default}" if quick_default != default else "")
        flag = f"--{name.replace('_', '-')}"
        if name in _BOOLEAN_OPTIONS:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=f"{text} ({note})")
        else:
            kind = positive(type(default)) if name in _POSITIVE_OPTIONS else type(default)
            parser.add_argument(flag, type=kind, choices=choices.get(name), help=f"{text} ({note})")
    return parser


TABLE_LEGEND = (
    "accuracy: the answer equals the expected one (`mmmmodal eval`'s exact_match); chance: guessing among the kind's answers; verdict: its key "
    "word right (the colour, the count, 'image 2') whatever the wording; well-formed: some valid answer of the "
    "kind, right or not; one medium / several: accuracy (count) where the conversation held one / several media "
    "of the type asked about."
)


def accuracy_lines(accuracy: dict, kinds=KINDS) -> list[str]:
    """The results table as printed, its columns explained under it, and a word for any kind no better than chance."""
    lines = [
        f"{'kind':16s} accuracy  (chance)  verdict  well-formed   {'one medium':>10s}  {'several':>10s}  (of the asked type)"
    ]
    guessing = []
    for kind in kinds:
        row = accuracy[kind]
        one, several = one_and_several(row["by_candidates"])
        lines.append(
            f"{kind:16s} {row['accuracy']:7.1%}   ({row['chance']:4.0%})  {row['verdict_right']:6.1%}  {row['well_formed']:7.1%}"
            f"   {one:>10s}  {several:>10s}  n={row['n']}"
        )
        if row["accuracy"] <= row["chance"]:
            guessing.append(f"{kind} ({row['accuracy']:.0%} against {row['chance']:.0%})")
    lines += textwrap.wrap(TABLE_LEGEND, 110, break_on_hyphens=False)  # "well-formed" stays one word
    if guessing:
        lines.append(f"no better than chance, so not learned yet: {', '.join(guessing)}")
    positions = accuracy["several_by_position"]
    if positions:
        cells = ", ".join(f"{where} {cell['accuracy']:.0%} ({cell['n']})" for where, cell in positions.items())
        lines.append(
            f"asked about one of several media (colour, shape, pitch, beeps, follow-up), by its place: {cells}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {
        k: int(v) if k in _BOOLEAN_OPTIONS else v for k, v in vars(args).items() if k not in ("quick", "video")
    }
    settings = DemoSettings.quick(**overrides) if args.quick else DemoSettings(**overrides)
    metrics = run_video_demo(settings) if args.video else run_demo(settings)
    print()
    print("\n".join(accuracy_lines(metrics["accuracy"], metrics.get("kinds", KINDS))))
    minutes = metrics["timings"]["total_s"] / 60
    if settings.quick_run:
        checks = metrics["quick_checks"]
        for name, passed in checks.items():
            print(f"quick-run check: {name}: {'passed' if passed else 'FAILED'}")
        print(
            f"quick run: {sum(checks.values())} of {len(checks)} checks passed in {minutes:.1f} min (the 90% target "
            "on every kind is the full run's: `mmmmodal demo`)"
        )
    else:
        print(
            f"target 90% on every kind: {'reached' if metrics['reached_accuracy'] else 'NOT reached'}; {minutes:.1f} "
            f"min in all ({'within' if metrics['within_time'] else 'past'} the {TARGET_MINUTES}-minute budget)"
        )
    report = Path(settings.output_dir) / ("video/report" if args.video else "report")
    print(
        f"report: {report} (chats with the reloaded model: {report / 'sample_chats.md'}); model: {metrics['model_folder']}"
    )
    return 0 if not settings.quick_run or all(metrics["quick_checks"].values()) else 1
