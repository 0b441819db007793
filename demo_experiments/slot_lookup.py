"""Which look-ups the demo's LM learns over media slots, with perception taken out (accuracy, not speed).

`mmmmodal demo` leaves which image and counting near chance (docs/demo-experiments.md). This trains the
demo's LM (`DemoSettings`: 128 wide, 2 layers, 32-wide heads, Qwen3's QK-norm, RoPE base 100 with 8
position-free pairs) on short sequences whose media are slots, as in the demo: each image is
`--slots` slot positions holding a learned projection of a stand-in tower feature (a fixed random
vector per colour plus one per shape, plus noise) and its ordinal tag (a digit's embedding times
`--tag-scale`, as the demo starts it). The text is a small vocabulary of single tokens, one
question form per kind, so neither the tokenizer nor a second language is in the way:

- colour (the look-up by number): "What colour is image 2 ?" -> the colour of image 2;
- which (the reverse look-up, colour and shape together): "Which image shows the red circle ?"
  -> "Image 3", its target unique in its conversation as in the world;
- count: "How many show a circle ?" -> "circle : two", the shape drawn as the world draws it.

Each sequence holds 2-4 images and asks colour, or the kind under test with probability `--share`
(`--early-share` for the first `--early-frac` of the steps: a curriculum; `--weight` multiplies
its answers' loss). `--form` works the answer image by image after restating what was asked:

- which, `verdict`: "c1 s2 : d1 c0 s3 no d2 c1 s2 yes Image d2"; `running`: each image followed
  by the number of the match found so far (n0 before it); `compact`: the numbers and verdicts only;
- count, `running`: "s2 : d1 s0 n0 d2 s2 n1 n1", a running count after each image's shape;
  `restated`: the asked shape again before each count; `compact`: the numbers and counts only.

`--demo-like` (count) brings in what the demo's text has and this vocabulary lacks: counts written
with the images' digits, half the shape words two tokens long, and a bare "_" before every digit
(the Mistral tokenizer's "▁"). Reported every `--steps / 5` steps on 256 held-out sequences per
kind: accuracy of the answer's last token (the digit, the colour, the count) and exact match (every
answer token right under teacher forcing, which is what greedy decoding would reproduce).

    python -m demo_experiments.slot_lookup [--kind which|count] [--share 0.5] [--steps 1000] [--early-share S --early-frac F]
                                [--form plain|verdict|running|restated|compact] [--demo-like] [--weight 1]
                                [--slots 4] [--layers 2] [--lm qwen3|llama] [--tag-scale 60]
"""

import argparse
import math
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mmmmodal_hf.benchmarking import report
from mmmmodal_hf.demo.language_model import TEXT_CONFIGS, build_text_config
from mmmmodal_hf.demo.run import DemoSettings
from mmmmodal_hf.offline_tokenizer import mistral_tokenizer_folder

COLOURS, SHAPES, MAX_IMAGES, FEATURE = 6, 4, 4, 64
WORDS = ["<pad>", "<s>", "[INST]", "[/INST]", "What", "colour", "is", "image", "Which", "shows", "the", "?", "Image"]
WORDS += (
    ["How", "many", "show", "a", ":", "yes", "no"]
    + [f"c{i}" for i in range(COLOURS)]
    + [f"s{i}" for i in range(SHAPES)]
)
WORDS += [f"d{i}" for i in range(1, MAX_IMAGES + 1)] + [f"n{i}" for i in range(MAX_IMAGES + 1)] + ["<slot>", "x", "_"]
IDS = {word: index for index, word in enumerate(WORDS)}
CHANCE = {"colour": 1 / COLOURS, "which": 1 / 3, "count": 1 / 3}


def shape_words(shape: int, demo_like: bool) -> list[str]:
    """A shape's word; with `demo_like`, half the shapes take two tokens, as Malay's "segi empat" does."""
    return [f"s{shape}"] + (["x"] if demo_like and shape >= SHAPES // 2 else [])


def conversation(rng: random.Random, kind: str, slots: int, form: str = "plain", demo_like: bool = False):
    """Tokens, each slot's (colour, shape, image number), and where the answer starts."""
    while True:
        images = [(rng.randrange(COLOURS), rng.randrange(SHAPES)) for _ in range(rng.randint(2, MAX_IMAGES))]
        unique = [k for k, image in enumerate(images) if images.count(image) == 1]
        if kind != "which" or unique:
            break
    tokens, slot_facts = ["<s>", "[INST]"], []
    for number, (colour, shape) in enumerate(images):
        tokens += ["<slot>"] * slots
        slot_facts += [(colour, shape, number)] * slots
    if kind == "colour":
        k = rng.randrange(len(images))
        question, answer = ["What", "colour", "is", "image", f"d{k + 1}", "?"], [f"c{images[k][0]}"]
    elif kind == "which":
        k = rng.choice(unique)
        colour, shape = images[k]
        question, answer = ["Which", "image", "shows", "the", f"c{colour}", f"s{shape}", "?"], []
        if form != "plain":  # the asked thing restated, then each image with a verdict
            answer += [f"c{colour}", f"s{shape}", ":"]
            mark = "n0"  # running form: the number of the match found so far
            for number, image in enumerate(images):
                match = image == (colour, shape)
                mark = f"d{number + 1}" if match else mark
                verdict = mark if form in ("running", "restated") else ("yes" if match else "no")
                described = [] if form == "compact" else [f"c{image[0]}", f"s{image[1]}"]
                answer += [f"d{number + 1}"] + described + [verdict]
        answer += ["Image", f"d{k + 1}"]
    else:
        shape = rng.choice([s for _, s in images] + [rng.randrange(SHAPES)])
        count = sum(s == shape for _, s in images)
        question = ["How", "many", "show", "a"] + shape_words(shape, demo_like) + ["?"]
        answer = shape_words(shape, demo_like) + [":"]
        running = 0
        for number, (_, image_shape) in enumerate(images if form != "plain" else []):
            running += image_shape == shape
            restated = [f"s{shape}"] if form == "restated" else []
            described = [] if form == "compact" else shape_words(image_shape, demo_like)
            count_word = (f"d{running}" if running else "n0") if demo_like else f"n{running}"
            space = ["_"] if demo_like else []  # the Mistral tokenizer's bare "▁" before each digit
            answer += space + [f"d{number + 1}"] + described + restated + space + [count_word]
        answer += [f"n{count}"]
    tokens += question + ["[/INST]"]
    return tokens + answer, slot_facts, len(tokens)


def demo_text_config(args):
    """The demo's LM config (`build_text_config`, with the Mistral tokenizer it gets), on this vocabulary."""
    folder = mistral_tokenizer_folder(Path(tempfile.mkdtemp(prefix="slot-lookup-")) / "tokenizer")
    if folder is None:
        raise SystemExit(
            "this benchmark builds the demo's LM with the real Mistral tokenizer: pip install mistral-common"
        )
    config = build_text_config(DemoSettings(layers=args.layers, lm=args.lm), AutoTokenizer.from_pretrained(folder))
    config.vocab_size = len(WORDS)
    return config


class SlotLM(torch.nn.Module):
    """The demo's LM with media slots: stand-in features, a projector, ordinal tags scaled as the demo starts them."""

    def __init__(self, args):
        super().__init__()
        config = demo_text_config(args)
        hidden = config.hidden_size
        self.model = AutoModelForCausalLM.from_config(config)
        generator = torch.Generator().manual_seed(123)
        self.register_buffer("colour_features", torch.randn(COLOURS, FEATURE, generator=generator))
        self.register_buffer("shape_features", torch.randn(SHAPES, FEATURE, generator=generator))
        self.projector = torch.nn.Sequential(
            torch.nn.Linear(FEATURE, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden)
        )
        digits = self.model.get_input_embeddings().weight[[IDS[f"d{k}"] for k in range(1, MAX_IMAGES + 1)]]
        self.tags = torch.nn.Parameter(digits.detach().clone() * args.tag_scale)

    def forward(self, ids, mask, slot_facts):
        embeds = self.model.get_input_embeddings()(ids)
        facts = torch.tensor(slot_facts)
        features = self.colour_features[facts[:, 0]] + self.shape_features[facts[:, 1]]
        features = features + 0.3 * torch.randn_like(features)
        slots = self.projector(features) + self.tags[facts[:, 2]]
        embeds = embeds.masked_scatter((ids == IDS["<slot>"]).unsqueeze(-1), slots)
        return self.model(inputs_embeds=embeds, attention_mask=mask).logits


def batch(rng: random.Random, kinds: list[str], slots: int, form: str = "plain", demo_like: bool = False):
    rows = [conversation(rng, kind, slots, form, demo_like) for kind in kinds]
    length = max(len(tokens) for tokens, _, _ in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    labels = torch.full((len(rows), length), -100)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    slot_facts = []
    for row, (tokens, facts, start) in enumerate(rows):
        ids[row, : len(tokens)] = torch.tensor([IDS[t] for t in tokens])
        mask[row, : len(tokens)] = 1
        labels[row, start : len(tokens)] = ids[row, start : len(tokens)]
        slot_facts += facts
    return ids, mask, labels, slot_facts


def answer_accuracy(model, held_out) -> tuple[float, float, Counter]:
    """The answer's last token right, and every answer token right (what greedy decoding would match exactly)."""
    ids, mask, labels, slot_facts = held_out
    with torch.no_grad():
        predicted = model(ids, mask, slot_facts)[:, :-1].argmax(-1)
    target = labels[:, 1:]
    last = (target != -100).long().cumsum(1).argmax(1)  # the answer's last token
    rows = torch.arange(len(ids))
    guesses = Counter(WORDS[t] for t in predicted[rows, last].tolist())
    exact = ((predicted == target) | (target == -100)).all(1)
    return (predicted[rows, last] == target[rows, last]).float().mean().item(), exact.float().mean().item(), guesses


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=["which", "count"], default="which")
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--early-share", type=float, default=None)
    parser.add_argument("--early-frac", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lm", choices=sorted(TEXT_CONFIGS), default="qwen3")
    parser.add_argument("--tag-scale", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--demo-like", action="store_true", help="counts written with the images' digits, two-token shape words"
    )
    parser.add_argument("--weight", type=float, default=1.0, help="loss weight of the tested kind's answers")
    parser.add_argument(
        "--form",
        choices=["plain", "running", "restated", "verdict", "compact"],
        default="plain",
        help="the answer: plain, or worked image by image (see the module docstring)",
    )
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng, held_out_rng = random.Random(args.seed), random.Random(999)
    model = SlotLM(args)
    held_out = {
        kind: batch(held_out_rng, [kind] * 256, args.slots, args.form, args.demo_like)
        for kind in ("colour", args.kind)
    }
    # The demo's finetune: AdamW at 1e-3, beta2 0.95, warmup then cosine, no weight decay.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)),
    )
    rows, start = [], time.time()
    for step in range(1, args.steps + 1):
        early = args.early_share is not None and step <= args.early_frac * args.steps
        share = args.early_share if early else args.share
        kinds = [args.kind if rng.random() < share else "colour" for _ in range(args.batch_size)]
        ids, mask, labels, slot_facts = batch(rng, kinds, args.slots, args.form, args.demo_like)
        logits = model(ids, mask, slot_facts)
        token_losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none"
        )  # (rows, positions), 0 where unlabelled
        weights = torch.tensor([args.weight if kind == args.kind else 1.0 for kind in kinds]).unsqueeze(1)
        loss = (token_losses * weights).sum() / (labels[:, 1:] != -100).sum()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % max(1, args.steps // 5) == 0:
            row = {"step": step, "seconds": round(time.time() - start)}
            for kind, data in held_out.items():
                row[kind], row[f"{kind}_exact"], guesses = answer_accuracy(model, data)
                row[f"{kind}_most_said"] = "/".join(f"{w}:{n}" for w, n in guesses.most_common(2))
            rows.append(row)
            print(row, flush=True)
    final = rows[-1]
    report(
        "slot_lookup",
        rows,
        vars(args) | {"over_chance": {kind: final[kind] / CHANCE[kind] for kind in held_out}},
    )


if __name__ == "__main__":
    main()
