"""How fast the demo's LM learns to look up a numbered medium, for two RoPE bases.

The demo's hard part is binding "image 2" to the span after the label "Image 2:". This isolates
it from media: the demo's LM (128 wide, 2 layers, the Mistral tokenizer; `--lm llama`, as recorded in
BENCHMARKS.md, or the demo's default `qwen3`, Llama with QK-norm) is trained from
scratch on dense text where every medium is written as words ("Image 2: red circle.") and six
questions per sequence ask for one fact of one numbered medium. Both contenders see the same
batches; the baseline is Llama's default RoPE base (10000), the contender the demo's (100).
Reported: answer-token accuracy on 256 held-out sequences every `--every` steps.

    python -m demo_experiments.lookup_rope [--steps 600] [--batch-size 32] [--thetas 10000,100] [--lm llama|qwen3]
"""

import argparse
import random
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mmmmodal_hf.benchmarking import report
from mmmmodal_hf.demo.language_model import TEXT_CONFIGS, build_text_config
from mmmmodal_hf.demo.run import DemoSettings
from mmmmodal_hf.demo.world import COLOURS, NUMBERS, PITCHES, SHAPE_NOUNS
from mmmmodal_hf.offline_tokenizer import mistral_tokenizer_folder

from .text_lm import adamw_with_warmup, answer_loss_and_accuracy, padded, train_step

# The demo world's English words, as answers are written: "Red", "Circle", "Low", "Two".
COLOUR_WORDS = [english for _, english, _ in COLOURS.values()]
SHAPE_WORDS = [english.capitalize() for english, _ in SHAPE_NOUNS.values()]
PITCH_WORDS = [english for _, english, _ in PITCHES.values()]
COUNT_WORDS = [NUMBERS[count][0] for count in range(1, 5)]


def sequence(tokenizer, rng: random.Random) -> tuple[list[int], list[int]]:
    """1-4 images and 0-3 clips written as words, then six questions; only answer words are labelled."""
    kinds = ["image"] * rng.randint(1, 4) + ["audio"] * rng.randint(0, 3)
    rng.shuffle(kinds)
    text, facts, counts = "[INST]", [], {"image": 0, "audio": 0}
    for kind in kinds:
        counts[kind] += 1
        k = counts[kind]
        if kind == "image":
            colour, shape = rng.choice(COLOUR_WORDS), rng.choice(SHAPE_WORDS)
            text += f" Image {k}: {colour.lower()} {shape.lower()}."
            facts += [(f"colour of image {k}", colour), (f"shape of image {k}", shape)]
        else:
            pitch, count = rng.choice(PITCH_WORDS), rng.choice(COUNT_WORDS)
            text += f" Audio {k}: {pitch.lower()}, {count.lower()} beeps."
            facts += [(f"pitch of audio {k}", pitch), (f"beeps in audio {k}", count)]
    pieces = [(text, False)]
    for _ in range(6):
        question, answer = rng.choice(facts)
        pieces += [(f" {question}? [/INST]", False), (f" {answer}", True), (". [INST]", False)]
    ids, labels = [], []
    for piece, is_answer in pieces:
        piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
        ids += piece_ids
        labels += piece_ids if is_answer else [-100] * len(piece_ids)
    return ids, labels


def batch(tokenizer, rng: random.Random, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return padded([sequence(tokenizer, rng) for _ in range(size)], tokenizer.pad_token_id)


def learning_curve(tokenizer, theta: float, steps: int, batch_size: int, every: int, lm: str) -> dict[int, float]:
    torch.manual_seed(0)
    # The demo's LM as `mmmmodal demo` builds it, in the layout `lm`, with only the RoPE base changed.
    config = build_text_config(replace(DemoSettings(), rope_theta=theta, lm=lm), tokenizer)
    model = AutoModelForCausalLM.from_config(config)
    optimizer, schedule = adamw_with_warmup(model)
    held_out = batch(tokenizer, random.Random(99), 256)
    rng, curve = random.Random(0), {}
    for step in range(steps + 1):
        if step % every == 0:
            with torch.no_grad():
                curve[step] = answer_loss_and_accuracy(model, *held_out)[1]
            print(f"rope_theta {theta:g} step {step}: held-out accuracy {curve[step]:.3f}", flush=True)
        if step == steps:
            break
        train_step(model, optimizer, schedule, *batch(tokenizer, rng, batch_size))
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--thetas", default="10000,100", help="the first is the baseline")
    parser.add_argument(
        "--lm", choices=sorted(TEXT_CONFIGS), default="llama", help="the LM's layout (recorded: llama)"
    )
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as work:
        folder = mistral_tokenizer_folder(Path(work) / "tokenizer")
        if folder is None:
            raise SystemExit("this benchmark uses the real Mistral tokenizer: pip install mistral-common")
        tokenizer = AutoTokenizer.from_pretrained(folder)
        thetas = [float(value) for value in args.thetas.split(",")]
        curves = {
            theta: learning_curve(tokenizer, theta, args.steps, args.batch_size, args.every, args.lm)
            for theta in thetas
        }
    baseline = curves[thetas[0]]
    rows = [
        {"step": step, **{f"theta_{theta:g}": curves[theta][step] for theta in thetas}}
        | {f"gain_{theta:g}": curves[theta][step] - baseline[step] for theta in thetas[1:]}
        for step in baseline
    ]
    report("lookup_rope", rows, {"steps": args.steps, "batch_size": args.batch_size, "lm": args.lm})


if __name__ == "__main__":
    main()
