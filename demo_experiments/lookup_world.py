"""Which of the demo world's question kinds its LM can learn at all, with media written as words.

`mmmmodal demo` misses its 90% target on every kind (docs/demo-experiments.md). This separates the LM from
the media: the demo's LM as `mmmmodal demo` builds it (128 wide, 2 layers, RoPE base 100, Llama's
layout with QK-norm, or without it with `--lm llama` as recorded in BENCHMARKS.md,
the Mistral tokenizer with the processor's tags) is trained from scratch on text in the demo's
chat format where each medium is written as its facts ("Image 2:\\n<image> red circle </image>"),
and each sequence asks six of the world's own questions (`world.ask`, every kind but the
follow-up, English or Malay), all answers supervised. That is three times the answered
questions per sequence of the demo's conversations, with no perception to learn.
Reported per kind: teacher-forced exact match of the whole answer on 512 held-out sequences
every `--every` steps, and its ratio to chance (the baseline) at the last step.

    python -m demo_experiments.lookup_world [--steps 900] [--batch-size 32] [--every 150] [--layers 2] [--hidden-size 128] [--lm qwen3|llama]
                                 [--kinds which_image,...] [--recall-steps 0] [--which-image-by shape]

`--recall-steps N` first trains the LM on associative recall (`associative_recall.py`), to see
whether a ready look-up circuit makes the world's questions come faster. `--which-image-by shape`
asks which image by a shape only one image holds ("Which image shows the cross?") instead of the
world's colour and shape, to see whether the conjunction is what stalls the reverse look-up.
"""

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from mmmmodal_hf.benchmarking import report
from mmmmodal_hf.demo import world
from mmmmodal_hf.demo.language_model import TEXT_CONFIGS, build_text_config
from mmmmodal_hf.demo.run import DemoSettings, build_processor

from .associative_recall import warm_up
from .text_lm import adamw_with_warmup, padded, train_step

QUESTIONS_PER_SEQUENCE = 6
KINDS = [kind for kind in world.KINDS if kind != "follow_up"]  # the follow-up is the colour question reworded


def describe(medium: str, fact, language: str) -> str:
    """A medium as its facts in words, between the processor's tags: "<image> red circle </image>"."""
    column = 0 if language == "en" else 1
    if medium == "image":
        colour = world.COLOURS[fact.colour][1 + column].lower()
        return f"<image> {colour} {world.SHAPE_NOUNS[fact.shape][column]} </image>"
    pitch = world.PITCHES[fact.pitch][1 + column].lower()
    return f"<audio> {pitch} {world.NUMBERS[fact.beeps][column].lower()} </audio>"


def draw_media(rng: random.Random) -> tuple[str, list, list, str]:
    """A language, 1-4 images and 0-3 clips in a shuffled order, and the media as the demo labels them."""
    language = rng.choice(world.LANGUAGES)
    images = [
        world.ImageFact("", rng.choice(sorted(world.COLOURS)), rng.choice(sorted(world.SHAPES)))
        for _ in range(rng.randint(1, 4))
    ]
    clips = [
        world.ClipFact("", rng.choice(sorted(world.PITCHES)), rng.randint(1, world.MAX_BEEPS))
        for _ in range(rng.randint(0, 3))
    ]
    items = [("image", fact) for fact in images] + [("audio", fact) for fact in clips]
    rng.shuffle(items)
    seen_images, seen_clips, media = [], [], "[INST] "
    for medium, fact in items:
        seen = seen_images if medium == "image" else seen_clips
        seen.append(fact)
        media += f"{world.media_label(medium, language, len(seen))}\n{describe(medium, fact, language)}\n"
    return language, seen_images, seen_clips, media


def which_image_by_shape(kind: str, language: str, images: list, clips: list, rng: random.Random):
    """`world.ask`, except that which image names only a shape that one image alone holds."""
    if kind != "which_image":
        return world.ask(kind, language, images, clips, rng)
    unique = [i for i, f in enumerate(images) if sum(g.shape == f.shape for g in images) == 1]
    if len(images) < 2 or not unique:
        return None
    k = rng.choice(unique)
    en = language == "en"
    noun = world.SHAPE_NOUNS[images[k].shape][0 if en else 1]
    question = f"Which image shows the {noun}?" if en else f"Gambar manakah yang menunjukkan {noun}?"
    return question, (f"Image {k + 1}." if en else f"Gambar {k + 1}."), None


def sequence(
    tokenizer, rng: random.Random, kinds: list[str], ask=world.ask
) -> tuple[list[int], list[int], list[tuple[str, int, int]]]:
    """Media as words, then six questions of `kinds` (media are drawn again until one of them
    applies); returns ids, labels and each answer's span."""
    options = []
    while not options:
        language, seen_images, seen_clips, media = draw_media(rng)
        options = [k for k in kinds if ask(k, language, seen_images, seen_clips, random.Random(0))]
    pieces = [("<s>", None)]
    for index in range(QUESTIONS_PER_SEQUENCE):
        kind = rng.choice(options)
        question, answer, _ = ask(kind, language, seen_images, seen_clips, rng)
        pieces += [((media if index == 0 else "[INST] ") + question + " [/INST]", None), (answer + "</s>", kind)]
    ids, labels, spans = [], [], []
    for piece, kind in pieces:
        piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
        if kind:
            spans.append((kind, len(ids), len(ids) + len(piece_ids)))
        ids += piece_ids
        labels += piece_ids if kind else [-100] * len(piece_ids)
    return ids, labels, spans


def batch(tokenizer, rng: random.Random, size: int, kinds: list[str], ask=world.ask):
    rows = [sequence(tokenizer, rng, kinds, ask) for _ in range(size)]
    input_ids, labels = padded([(ids, row_labels) for ids, row_labels, _ in rows], tokenizer.pad_token_id)
    return input_ids, labels, [spans for _, _, spans in rows]


def accuracy_per_kind(model, input_ids, spans) -> dict[str, float]:
    """Teacher-forced: an answer counts when every one of its tokens is the argmax."""
    with torch.no_grad():
        predicted = torch.cat(
            [model(input_ids=input_ids[i : i + 64]).logits.argmax(-1) for i in range(0, len(input_ids), 64)]
        )
    right: dict[str, list[bool]] = {}
    for row, row_spans in enumerate(spans):
        for kind, start, end in row_spans:
            whole_answer = (predicted[row, start - 1 : end - 1] == input_ids[row, start:end]).all()
            right.setdefault(kind, []).append(bool(whole_answer))
    return {kind: sum(values) / len(values) for kind, values in right.items()}


def learning_curve(
    tokenizer,
    kinds: list[str],
    steps: int,
    batch_size: int,
    every: int,
    lm: DemoSettings,
    recall_steps: int,
    ask=world.ask,
) -> dict[int, dict[str, float]]:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(build_text_config(lm, tokenizer))
    if recall_steps:
        warm_up(model, tokenizer, recall_steps)
    optimizer, schedule = adamw_with_warmup(model, fused=True)
    held_out_ids, _, held_out_spans = batch(tokenizer, random.Random(99), 512, kinds, ask)
    rng, curve, started = random.Random(0), {}, time.time()
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            curve[step] = accuracy_per_kind(model, held_out_ids, held_out_spans)
            scores = " ".join(f"{kind}={curve[step].get(kind, 0):.2f}" for kind in kinds)
            print(f"step {step} ({time.time() - started:.0f} s): {scores}", flush=True)
        if step == steps:
            break
        input_ids, labels, _ = batch(tokenizer, rng, batch_size, kinds, ask)
        train_step(model, optimizer, schedule, input_ids, labels)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--every", type=int, default=150)
    parser.add_argument("--layers", type=int, default=DemoSettings.layers, help="the demo's LM has 2")
    parser.add_argument("--hidden-size", type=int, default=DemoSettings.hidden_size, help="the demo's LM is 128 wide")
    parser.add_argument(
        "--lm", choices=sorted(TEXT_CONFIGS), default=DemoSettings.lm, help="the LM's layout, as the demo's"
    )
    parser.add_argument("--recall-steps", type=int, default=0, help="associative-recall warm-up steps of 64 first")
    parser.add_argument(
        "--which-image-by",
        choices=["colour_and_shape", "shape"],
        default="colour_and_shape",
        help="which image names the world's colour and shape, or only a shape one image holds",
    )
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help="the question kinds asked (default: all but follow-up)"
    )
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise SystemExit(f"--kinds: unknown {unknown}; choose from {','.join(KINDS)}")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as work:
        processor, tokenizer_kind = build_processor(DemoSettings(tokenizer="mistral"), Path(work), [])
    lm = DemoSettings(layers=args.layers, hidden_size=args.hidden_size, lm=args.lm)
    ask = which_image_by_shape if args.which_image_by == "shape" else world.ask
    curve = learning_curve(
        processor.tokenizer, kinds, args.steps, args.batch_size, args.every, lm, args.recall_steps, ask
    )
    last = curve[max(curve)]
    rows = [
        {"kind": kind, "chance": world.CHANCE[kind]}
        | {f"step_{step}": scores.get(kind, 0.0) for step, scores in curve.items() if step}
        | {"over_chance": last.get(kind, 0.0) / world.CHANCE[kind]}
        for kind in kinds
    ]
    report(
        "lookup_world",
        rows,
        {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "layers": args.layers,
            "hidden_size": args.hidden_size,
            "lm": args.lm,
            "recall_steps": args.recall_steps,
            "which_image_by": args.which_image_by,
            "kinds": kinds,
            "tokenizer": tokenizer_kind,
        },
    )


if __name__ == "__main__":
    main()
