"""A small multimodal world whose answers are known: shapes in colours, beeps at pitches, in English and Malay.

Images are rendered shapes (colour, shape, background, position and size vary); clips are 1 to 4
beeps at a low, medium or high pitch, written to WAV files so the real loading path is used.
Conversations hold 1 to 4 images and 0 to 3 clips over 1 to 3 turns; the last user turn asks
one question of a known kind, and that answer is what evaluation scores. The same seed gives
the same world; held-out conversations use their own media and are never trained on.
"""

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image, ImageDraw

IMAGE_PIXELS = 64
SAMPLE_RATE = 16000
CLIP_SECONDS = 1.0
MAX_BEEPS = 4

COLOURS = {  # name: (rgb, English, Malay)
    "red": ((220, 30, 30), "Red", "Merah"),
    "green": ((30, 170, 40), "Green", "Hijau"),
    "blue": ((30, 60, 220), "Blue", "Biru"),
    "yellow": ((235, 210, 20), "Yellow", "Kuning"),
    "purple": ((140, 40, 180), "Purple", "Ungu"),
    "orange": ((245, 130, 20), "Orange", "Oren"),
}
SHAPES = {
    "circle": ("A circle", "Bulatan"),
    "square": ("A square", "Segi empat"),
    "triangle": ("A triangle", "Segi tiga"),
    "cross": ("A cross", "Pangkah"),
}
SHAPE_NOUNS = {
    "circle": ("circle", "bulatan"),
    "square": ("square", "segi empat"),
    "triangle": ("triangle", "segi tiga"),
    "cross": ("cross", "pangkah"),
}
PITCHES = {
    "low": (330.0, "Low", "Rendah"),
    "medium": (880.0, "Medium", "Sederhana"),
    "high": (2200.0, "High", "Tinggi"),
}
NUMBERS = {0: ("Zero", "Sifar"), 1: ("One", "Satu"), 2: ("Two", "Dua"), 3: ("Three", "Tiga"), 4: ("Four", "Empat")}
ORDINALS = {1: ("first", "pertama"), 2: ("second", "kedua"), 3: ("third", "ketiga"), 4: ("fourth", "keempat")}

KINDS = (
    "image_colour",
    "image_shape",
    "which_image",
    "count_shape",
    "audio_pitch",
    "audio_beeps",
    "higher_clip",
    "image_vs_audio",
    "follow_up",
)
EASY_KINDS = ("image_colour", "audio_pitch")
CHANCE = {
    "image_colour": 1 / 6,
    "image_shape": 1 / 4,
    "which_image": 1 / 3,
    "count_shape": 1 / 3,
    "audio_pitch": 1 / 3,
    "audio_beeps": 1 / 4,
    "higher_clip": 1 / 2,
    "image_vs_audio": 1 / 3,
    "follow_up": 1 / 6,
}
LANGUAGES = ("en", "ms")
# The medium a kind's question singles out by its number (or, for which image and counting, looks
# through): with one of it in the conversation there is nothing to bind, with several there is.
ASKED_MEDIUM = {
    "image_colour": "image",
    "image_shape": "image",
    "which_image": "image",
    "count_shape": "image",
    "audio_pitch": "audio",
    "audio_beeps": "audio",
    "higher_clip": "audio",
    "image_vs_audio": "audio",
    "follow_up": "image",
}


@dataclass
class ImageFact:
    path: str
    colour: str
    shape: str


@dataclass
class ClipFact:
    path: str
    pitch: str
    beeps: int


@dataclass
class WorldConversation:
    """A content-block row plus what evaluation needs: the kind, language and expected answer.

    Media are numbered per type in the order they appear over the whole conversation, and questions
    point at them by that number ("image 2": the second image shown). No text names them, as a
    chat user attaches media without labelling them; the model tells them apart by the ordinal
    tags on their slots (`MMMModalConfig.media_index_embeddings`). With labels (the demo's world
    until 2026-11-29), each medium is introduced by one ("Image 2:", "Audio 1:").
    """

    kind: str
    language: str
    turns: list[dict]
    answer: str
    about: int | None = None  # the 0-based number of the medium the last question points at, if one

    def row(self) -> dict:
        return {"messages": self.turns, "kind": self.kind, "language": self.language, "about": self.about}

    def media_count(self, medium: str) -> int:
        """How many media of `medium` ("image" or "audio") the conversation holds, over all turns."""
        return sum(
            block["type"] == medium
            for turn in self.turns
            if isinstance(turn["content"], list)
            for block in turn["content"]
        )

    def prompt(self, media_folder: Path | None = None) -> list[dict]:
        """Every turn but the final answer, media paths made absolute under `media_folder`."""
        turns = []
        for turn in self.turns[:-1]:
            content = turn["content"]
            if isinstance(content, list) and media_folder is not None:
                content = [dict(b, path=str(Path(media_folder) / b["path"])) if "path" in b else b for b in content]
            turns.append({"role": turn["role"], "content": content})
        return turns


def render_image(colour: str, shape: str, rng: random.Random) -> Image.Image:
    """One shape on a light background, at a random size and position inside the frame."""
    background = tuple(rng.randint(200, 255) for _ in range(3))
    image = Image.new("RGB", (IMAGE_PIXELS, IMAGE_PIXELS), background)
    draw = ImageDraw.Draw(image)
    size = rng.randint(int(IMAGE_PIXELS * 0.45), int(IMAGE_PIXELS * 0.8))
    left = rng.randint(2, IMAGE_PIXELS - size - 2)
    top = rng.randint(2, IMAGE_PIXELS - size - 2)
    box = (left, top, left + size, top + size)
    fill = COLOURS[colour][0]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(left + size / 2, top), (left, top + size), (left + size, top + size)], fill=fill)
    else:  # cross: two bars a third of the size wide
        bar = size // 3
        draw.rectangle((left + bar, top, left + 2 * bar, top + size), fill=fill)
        draw.rectangle((left, top + bar, left + size, top + 2 * bar), fill=fill)
    return image


def synthesise_clip(pitch: str, beeps: int, rng: random.Random) -> np.ndarray:
    """`beeps` beeps of 0.1 s at the pitch's frequency, 0.1 s apart, over faint noise."""
    samples = int(SAMPLE_RATE * CLIP_SECONDS)
    clip = np.random.default_rng(rng.randint(0, 2**31)).normal(0, 0.01, samples)
    frequency = PITCHES[pitch][0] * rng.uniform(0.97, 1.03)
    beep = int(0.1 * SAMPLE_RATE)
    start = int(rng.uniform(0.02, 0.15) * SAMPLE_RATE)
    t = np.arange(beep) / SAMPLE_RATE
    envelope = np.minimum(1.0, np.minimum(t, t[::-1]) * 200)  # 5 ms fades: no clicks
    for index in range(beeps):
        offset = start + index * 2 * beep
        clip[offset : offset + beep] += 0.5 * envelope * np.sin(2 * math.pi * frequency * t)
    return clip.astype(np.float32)


class MediaPool:
    """Images and clips written once and shared by many conversations of one split."""

    def __init__(self, folder: Path, rng: random.Random, images: int, clips: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.images, self.clips = [], []
        for index in range(images):
            colour, shape = rng.choice(sorted(COLOURS)), rng.choice(sorted(SHAPES))
            path = folder / f"image_{index:04d}.png"
            render_image(colour, shape, rng).save(path)
            self.images.append(ImageFact(path.name, colour, shape))
        for index in range(clips):
            pitch, beeps = rng.choice(sorted(PITCHES)), rng.randint(1, MAX_BEEPS)
            path = folder / f"clip_{index:04d}.wav"
            soundfile.write(path, synthesise_clip(pitch, beeps, rng), SAMPLE_RATE)
            self.clips.append(ClipFact(path.name, pitch, beeps))


def _yes_no(language: str) -> tuple[str, str]:
    """A worked step's verdict words: ("yes", "no") in English, ("ya", "tidak") in Malay."""
    return ("yes", "no") if language == "en" else ("ya", "tidak")


def _answer(pair: tuple[str, str], language: str) -> str:
    return (pair[0] if language == "en" else pair[1]) + "."


def _colour_and_noun(fact: ImageFact, language: str) -> tuple[str, str]:
    """("red", "circle") in English, ("merah", "bulatan") in Malay: the words for an image's colour and shape."""
    en = language == "en"
    return COLOURS[fact.colour][1 if en else 2].lower(), SHAPE_NOUNS[fact.shape][0 if en else 1]


def _thing_words(fact: ImageFact, language: str) -> tuple[str, str]:
    """("red", "circle") in English, ("bulatan", "merah") in Malay: a colour and a shape in the language's order."""
    colour, noun = _colour_and_noun(fact, language)
    return (colour, noun) if language == "en" else (noun, colour)


def heard_pitch(clips: list[ClipFact], k: int, language: str) -> str:
    """ "Audio 2: high.": clip k's (0-based) pitch after its number."""
    return f"Audio {k + 1}: {PITCHES[clips[k].pitch][1 if language == 'en' else 2].lower()}."


def worked_which_image(images: list[ImageFact], k: int, language: str) -> str:
    """ "red circle: 1 blue no, 2 red square no, 3 red circle yes. Image 3.": the asked thing, each image, the verdict.

    The 2-layer demo LM does not find the image that matches a thing asked a sentence before in one
    step (docs/demo-experiments.md). Written image by image, each step is a look-up by number and a
    comparison of one word with the same word restated: an image whose colour differs from the
    asked one's is "no" at once, else its shape decides. Each step names the colour first in Malay
    too ("bulatan merah: 1 biru tidak, 2 merah segi empat tidak, ..."): shape first, two Malay shapes
    begin with the same word ("segi tiga", "segi empat"), and the colour written after a matching
    shape was often the asked one, whatever the image showed.
    """
    yes, no = _yes_no(language)
    asked_colour, _ = _colour_and_noun(images[k], language)
    steps = []
    for i, fact in enumerate(images):
        colour, noun = _colour_and_noun(fact, language)
        words = f"{colour} {noun}" if colour == asked_colour else colour
        steps.append(f"{i + 1} {words} {yes if i == k else no}")
    image = "Image" if language == "en" else "Gambar"
    return f"{' '.join(_thing_words(images[k], language))}: {', '.join(steps)}. {image} {k + 1}."


def worked_count(images: list[ImageFact], shape: str, language: str) -> str:
    """ "circle: 1 square no zero, 2 circle yes one, 3 circle yes two. Two.": the asked shape, a running count, the count.

    Summing a match over the images in one step is beyond the demo LM; a running count needs only
    the image's shape (a look-up by number), whether it is the asked one (written out, as which
    image's steps are), and the count one step back plus the verdict just written. Without the
    written verdict, comparing and counting in one word, the LM took Malay's "segi tiga" for
    "segi empat" and back in nearly all its counting misses (docs/demo-experiments.md). The counts are
    words: the Mistral tokenizer writes a digit after a bare "▁", one position further from what
    decides it, and that slowed learning the count twofold (`demo_experiments/slot_lookup.py`).
    """
    word = 0 if language == "en" else 1
    yes, no = _yes_no(language)
    noun = SHAPE_NOUNS[shape][word]
    running, steps = 0, []
    for i, fact in enumerate(images):
        match = fact.shape == shape
        running += match
        steps.append(
            f"{i + 1} {SHAPE_NOUNS[fact.shape][word]} {yes if match else no} {NUMBERS[running][word].lower()}"
        )
    return f"{noun}: {', '.join(steps)}. {_answer(NUMBERS[running], language)}"


def worked_image_vs_audio(images: int, clip: int, beeps: int, language: str) -> str:
    """ "Audio 2: two beeps. Image 2 yes, image 3 no. The same.": the clip's beeps, whether images that many and one more were given, the verdict.

    Written as two counts and a verdict ("Images four, beeps two. More images."), the counts were
    right and the verdict, a comparison of two number words, was not learned in the demo's budget
    (docs/demo-experiments.md). Here each step is what the demo LM does well: a look-up by number (the
    clip's beeps, its number written just before, as the higher clip's answer does), then whether
    an image of that number, and of the next, was given; the verdict follows from the two words
    just written.
    """
    en = language == "en"
    given = lambda n: ("yes" if en else "ada") if n <= images else ("no" if en else "tiada")  # noqa: E731
    image = "image" if en else "gambar"
    if images > beeps:
        verdict = "More images." if en else "Lebih banyak gambar."
    elif beeps > images:
        verdict = "More beeps." if en else "Lebih banyak bip."
    else:
        verdict = "The same." if en else "Sama banyak."
    heard = f"{NUMBERS[beeps][0 if en else 1].lower()} {('beeps' if beeps > 1 else 'beep') if en else 'bip'}"
    checks = f"{image.capitalize()} {beeps} {given(beeps)}, {image} {beeps + 1} {given(beeps + 1)}."
    return f"Audio {clip}: {heard}. {checks} {verdict}"


def ask(kind: str, language: str, images: list[ImageFact], clips: list[ClipFact], rng: random.Random):
    """A (question, answer, about) of `kind` about the media seen so far, or None if they cannot support it.

    `about` is the 0-based number of the one medium (of the asked type) the question points at, or
    None when it points at no single medium (which image, counting, comparisons).
    """
    en = language == "en"
    if kind == "image_colour" and images:
        k = rng.randrange(len(images))
        question = (
            f"What colour is the shape in image {k + 1}?" if en else f"Apakah warna bentuk dalam gambar {k + 1}?"
        )
        return question, _answer(COLOURS[images[k].colour][1:], language), k
    if kind == "image_shape" and images:
        k = rng.randrange(len(images))
        question = f"What shape is in image {k + 1}?" if en else f"Apakah bentuk dalam gambar {k + 1}?"
        return question, _answer(SHAPES[images[k].shape], language), k
    if kind == "which_image" and len(images) >= 2:
        unique = [
            i for i, f in enumerate(images) if sum((g.colour, g.shape) == (f.colour, f.shape) for g in images) == 1
        ]
        if not unique:
            return None
        k = rng.choice(unique)
        thing = " ".join(_thing_words(images[k], language))
        question = f"Which image shows the {thing}?" if en else f"Gambar manakah yang menunjukkan {thing}?"
        return question, worked_which_image(images, k, language), None
    if kind == "count_shape" and len(images) >= 2:
        shape = rng.choice([f.shape for f in images] + [rng.choice(sorted(SHAPES))])
        noun = SHAPE_NOUNS[shape][0 if en else 1]
        question = f"How many images show a {noun}?" if en else f"Berapa banyak gambar yang menunjukkan {noun}?"
        return question, worked_count(images, shape, language), None
    if kind == "audio_pitch" and clips:
        k = rng.randrange(len(clips))
        question = (
            f"Is the sound in audio {k + 1} low, medium or high?"
            if en
            else f"Adakah bunyi dalam audio {k + 1} rendah, sederhana atau tinggi?"
        )
        # The answer names the clip before its pitch ("Audio 2: high."), as the higher clip's does:
        # the number written just before the pitch word is what the look-up among three clips needs.
        return question, heard_pitch(clips, k, language), k
    if kind == "audio_beeps" and clips:
        k = rng.randrange(len(clips))
        question = f"How many beeps are in audio {k + 1}?" if en else f"Berapa banyak bip dalam audio {k + 1}?"
        return question, _answer(NUMBERS[clips[k].beeps], language), k
    if kind == "higher_clip" and len(clips) >= 2:
        pairs = [
            (a, b) for a in range(len(clips)) for b in range(a + 1, len(clips)) if clips[a].pitch != clips[b].pitch
        ]
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        order = list(PITCHES)
        higher = a if order.index(clips[a].pitch) > order.index(clips[b].pitch) else b
        question = (
            f"Which is higher, audio {a + 1} or audio {b + 1}?"
            if en
            else f"Yang manakah lebih tinggi, audio {a + 1} atau audio {b + 1}?"
        )
        # The answer hears both clips before it names one ("Audio 1: low. Audio 3: high. So audio 3."):
        # two look-ups by number, which the demo's LM learns, then a comparison of two nearby words.
        heard = " ".join(heard_pitch(clips, i, language) for i in (a, b))
        verdict = f"So audio {higher + 1}." if en else f"Jadi audio {higher + 1}."
        return question, f"{heard} {verdict}", None
    if kind == "image_vs_audio" and images and clips:
        k = rng.randrange(len(clips))
        beeps, count = clips[k].beeps, len(images)
        question = (
            f"Are there more images or more beeps in audio {k + 1}?"
            if en
            else f"Adakah lebih banyak gambar atau lebih banyak bip dalam audio {k + 1}?"
        )
        return question, worked_image_vs_audio(count, k + 1, beeps, language), None
    return None


def _follow_up(language, images, rng):
    k = rng.randrange(len(images))
    ordinal = ORDINALS[k + 1][0 if language == "en" else 1]
    question = (
        f"Going back to the {ordinal} image, what colour was it?"
        if language == "en"
        else f"Kembali kepada gambar {ordinal}, apakah warnanya?"
    )
    return question, _answer(COLOURS[images[k].colour][1:], language), k


_NEEDS = {  # kind -> (min images, min clips)
    "image_colour": (1, 0),
    "image_shape": (1, 0),
    "which_image": (2, 0),
    "count_shape": (2, 0),
    "audio_pitch": (1, 1),
    "audio_beeps": (1, 1),
    "higher_clip": (1, 2),
    "image_vs_audio": (1, 1),
    "follow_up": (1, 0),
}
_WARMUP_KINDS = ("image_colour", "image_shape", "audio_pitch", "audio_beeps")


def media_label(medium: str, language: str, number: int) -> str:
    """The text that introduces the `number`-th medium of its type: "Image 2:", "Gambar 2:", "Audio 1:"."""
    word = ("Image" if language == "en" else "Gambar") if medium == "image" else "Audio"
    return f"{word} {number}:"


# The attribute a kind's near misses share: an image of the asked colour but another shape is what
# which image gets wrong; images of one shape give counting its larger counts.
NEAR_MISS_ATTRIBUTE = {"which_image": "colour", "count_shape": "shape"}


def _with_near_misses(images: list[ImageFact], attribute: str, pool: MediaPool, rng: random.Random) -> list[ImageFact]:
    """`images` with each after a random first one, by even odds, replaced by a pool image sharing the first's `attribute`."""
    anchor = rng.choice(images)
    alike = [f for f in pool.images if getattr(f, attribute) == getattr(anchor, attribute) and f not in images]
    result = []
    for fact in images:
        if fact is not anchor and alike and rng.random() < 0.5:
            fact = alike.pop(rng.randrange(len(alike)))
        result.append(fact)
    return result


def make_conversation(
    kind: str,
    language: str,
    pool: MediaPool,
    rng: random.Random,
    labels: bool = False,
    near_misses: float = 0.0,
) -> WorldConversation:
    """One conversation whose last user turn asks a question of `kind`; `labels` puts "Image 2:" before each medium.

    `near_misses`: the share of which-image and counting conversations whose images are drawn alike
    (`NEAR_MISS_ATTRIBUTE`), for training; drawn at random, an image of the asked colour but another
    shape, the case which image gets wrong, is in one step of ten. 0 draws every image at random.
    """
    min_images, min_clips = _NEEDS[kind]
    for _attempt in range(100):
        n_images = rng.randint(max(1, min_images), 4)
        n_clips = rng.randint(min_clips, 3)
        n_turns = rng.randint(2 if kind == "follow_up" else 1, 3)
        images = rng.sample(pool.images, n_images)
        if near_misses and kind in NEAR_MISS_ATTRIBUTE and rng.random() < near_misses:
            images = _with_near_misses(images, NEAR_MISS_ATTRIBUTE[kind], pool, rng)
        clips = rng.sample(pool.clips, n_clips)
        # Media are dealt over the turns (the last turn of a follow-up gets none); each medium once.
        media_turns = n_turns - 1 if kind == "follow_up" else n_turns
        placement = sorted(rng.randrange(media_turns) for _ in range(n_images + n_clips))
        turns, seen_images, seen_clips = [], [], []
        items = [("image", f) for f in images] + [("audio", f) for f in clips]
        rng.shuffle(items)
        ok = True
        for turn in range(n_turns):
            here = [items[i] for i, t in enumerate(placement) if t == turn]
            blocks = []
            for medium, fact in here:
                seen = seen_images if medium == "image" else seen_clips
                seen.append(fact)
                if labels:
                    blocks.append({"type": "text", "text": media_label(medium, language, len(seen))})
                blocks.append({"type": medium, "path": fact.path})
            last = turn == n_turns - 1
            if last:
                asked = (
                    _follow_up(language, seen_images, rng)
                    if kind == "follow_up"
                    else ask(kind, language, seen_images, seen_clips, rng)
                )
            else:
                options = [k for k in _WARMUP_KINDS if ask(k, language, seen_images, seen_clips, random.Random(0))]
                asked = ask(rng.choice(options), language, seen_images, seen_clips, rng) if options else None
            if asked is None:
                ok = False
                break
            question, answer, about = asked
            turns.append({"role": "user", "content": blocks + [{"type": "text", "text": question}]})
            turns.append({"role": "assistant", "content": answer})
        if ok:
            return WorldConversation(kind, language, turns, turns[-1]["content"], about)
    raise RuntimeError(f"could not make a {kind} conversation")


def make_split(
    folder: Path,
    conversations: int,
    seed: int,
    images: int,
    clips: int,
    labels: bool = False,
    near_misses: float = 0.0,
) -> list[WorldConversation]:
    """A balanced split: kinds and languages in turn, media from the split's own pool (see `make_conversation`)."""
    rng = random.Random(seed)
    pool = MediaPool(folder, rng, images, clips)
    rows = []
    for index in range(conversations):
        kind = KINDS[index % len(KINDS)]
        language = LANGUAGES[(index // len(KINDS)) % len(LANGUAGES)]
        rows.append(make_conversation(kind, language, pool, rng, labels, near_misses))
    rng.shuffle(rows)
    with open(folder / "data.jsonl", "w") as handle:
        for conversation in rows:
            handle.write(json.dumps(conversation.row()) + "\n")
    return rows


def read_split(folder: Path) -> list[WorldConversation]:
    conversations = []
    for line in (folder / "data.jsonl").read_text().splitlines():
        row = json.loads(line)
        conversations.append(
            WorldConversation(
                row["kind"], row["language"], row["messages"], row["messages"][-1]["content"], row.get("about")
            )
        )
    return conversations
