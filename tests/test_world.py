"""The demo's world: deterministic for a seed, balanced, and its answers are right about its own media."""

import json
import random
import re
from collections import Counter

import numpy as np
import pytest
import soundfile
from PIL import Image

from mmmmodal_hf.demo.world import (
    ASKED_MEDIUM,
    COLOURS,
    KINDS,
    NEAR_MISS_ATTRIBUTE,
    NUMBERS,
    PITCHES,
    SAMPLE_RATE,
    SHAPE_NOUNS,
    SHAPES,
    MediaPool,
    make_split,
    read_split,
)


def test_same_seed_same_world(tmp_path):
    first = make_split(tmp_path / "a", 90, seed=3, images=40, clips=30)
    make_split(tmp_path / "b", 90, seed=3, images=40, clips=30)
    assert [c.about for c in read_split(tmp_path / "a")] == [c.about for c in first]  # kept in the rows
    make_split(tmp_path / "c", 90, seed=4, images=40, clips=30)
    assert (tmp_path / "a" / "data.jsonl").read_text() == (tmp_path / "b" / "data.jsonl").read_text()
    assert (tmp_path / "a" / "data.jsonl").read_text() != (tmp_path / "c" / "data.jsonl").read_text()
    for name in ("image_0007.png", "clip_0011.wav"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_kinds_and_languages_are_balanced_and_conversations_have_the_promised_shape(tmp_path):
    conversations = make_split(tmp_path, 360, seed=0, images=80, clips=60)
    kinds = Counter(c.kind for c in conversations)
    assert set(kinds) == set(KINDS) and max(kinds.values()) - min(kinds.values()) <= 1
    for kind in KINDS:
        languages = Counter(c.language for c in conversations if c.kind == kind)
        assert abs(languages["en"] - languages["ms"]) <= 1, kind
    for conversation in conversations:
        users = [t for t in conversation.turns if t["role"] == "user"]
        blocks = [b for t in users for b in t["content"]]
        images = sum(b["type"] == "image" for b in blocks)
        clips = sum(b["type"] == "audio" for b in blocks)
        assert 1 <= len(users) <= 3 and 1 <= images <= 4 and 0 <= clips <= 3
        if conversation.kind == "follow_up":
            assert len(users) >= 2 and not [b for b in users[-1]["content"] if b["type"] != "text"]
    assert (
        read_split(tmp_path)[0].turns == json.loads((tmp_path / "data.jsonl").read_text().splitlines()[0])["messages"]
    )


def test_near_misses_give_which_image_and_counting_images_alike_and_leave_the_default_world_alone(tmp_path):
    default = make_split(tmp_path / "default", 180, seed=5, images=60, clips=40)
    make_split(tmp_path / "none", 180, seed=5, images=60, clips=40, near_misses=0.0)
    assert (tmp_path / "default" / "data.jsonl").read_text() == (tmp_path / "none" / "data.jsonl").read_text()
    near = make_split(tmp_path / "near", 180, seed=5, images=60, clips=40, near_misses=1.0)
    facts = {f.path: f for f in MediaPool(tmp_path / "pool", random.Random(5), images=60, clips=40).images}

    def alike_pairs(conversations, kind):
        """Of the pairs of images within the conversations of `kind`, the share alike in the kind's attribute."""
        alike = pairs = 0
        for conversation in conversations:
            if conversation.kind != kind:
                continue
            paths = [
                b["path"]
                for t in conversation.turns
                if t["role"] == "user"
                for b in t["content"]
                if b["type"] == "image"
            ]
            values = [getattr(facts[p], NEAR_MISS_ATTRIBUTE[kind]) for p in paths]
            assert len(set(paths)) == len(paths)  # no image twice
            pairs += len(values) * (len(values) - 1) // 2
            alike += sum(a == b for i, a in enumerate(values) for b in values[i + 1 :])
        return alike / pairs

    for kind in NEAR_MISS_ATTRIBUTE:
        assert alike_pairs(near, kind) > 2 * alike_pairs(default, kind), kind
    assert Counter(c.kind for c in near) == Counter(c.kind for c in default)


def test_media_stand_unlabelled_and_labels_only_add_their_numbers(tmp_path):
    plain = make_split(tmp_path / "plain", 90, seed=3, images=40, clips=30)
    labelled = make_split(tmp_path / "labelled", 90, seed=3, images=40, clips=30, labels=True)
    for bare, named in zip(plain, labelled, strict=True):
        assert (bare.kind, bare.language, bare.answer, bare.about) == (
            named.kind,
            named.language,
            named.answer,
            named.about,
        )
        seen = Counter()  # media are numbered per type over the whole conversation
        for bare_turn, named_turn in zip(bare.turns, named.turns, strict=True):
            if bare_turn["role"] == "assistant":
                assert bare_turn == named_turn
                continue
            content = bare_turn["content"]
            assert [b["type"] for b in content].count("text") == 1 and content[-1]["type"] == "text"  # the question
            expected = []
            for block in content:
                if block["type"] != "text":
                    seen[block["type"]] += 1
                    word = "Audio" if block["type"] == "audio" else "Image" if bare.language == "en" else "Gambar"
                    expected.append({"type": "text", "text": f"{word} {seen[block['type']]}:"})
                expected.append(block)
            assert named_turn["content"] == expected


def dominant_colour(image: Image.Image) -> tuple[int, int, int]:
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    saturated = pixels[(pixels.max(1) - pixels.min(1)) > 60]  # backgrounds are light and grey-ish
    values, counts = np.unique(saturated, axis=0, return_counts=True)
    return tuple(values[counts.argmax()])


def shape_from_pixels(image: Image.Image, colour) -> str:
    mask = np.all(np.abs(np.asarray(image).astype(int) - np.array(COLOURS[colour][0])) < 10, axis=-1)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    fill, top_row = box.mean(), box[0].mean()
    if fill > 0.95:
        return "square"
    if top_row > 0.25 and fill < 0.7:
        return "cross"
    return "circle" if fill > 0.7 else "triangle"


def beeps_and_pitch(clip: np.ndarray) -> tuple[int, str]:
    frame = SAMPLE_RATE // 100
    energy = np.array([np.mean(clip[i : i + frame] ** 2) for i in range(0, len(clip) - frame, frame)])
    loud = energy > 0.01
    beeps = int(np.sum(loud[1:] & ~loud[:-1]) + loud[0])
    spectrum = np.abs(np.fft.rfft(clip))
    peak = np.fft.rfftfreq(len(clip), 1 / SAMPLE_RATE)[spectrum.argmax()]
    pitch = min(PITCHES, key=lambda name: abs(PITCHES[name][0] - peak))
    return beeps, pitch


def test_media_facts_match_the_rendered_pixels_and_samples(tmp_path):
    pool = MediaPool(tmp_path, random.Random(0), images=60, clips=40)
    for fact in pool.images:
        image = Image.open(tmp_path / fact.path).convert("RGB")
        assert dominant_colour(image) == COLOURS[fact.colour][0], fact
        assert shape_from_pixels(image, fact.colour) == fact.shape, fact
    for fact in pool.clips:
        clip, rate = soundfile.read(tmp_path / fact.path)
        assert rate == SAMPLE_RATE
        assert beeps_and_pitch(clip) == (fact.beeps, fact.pitch), fact


@pytest.mark.parametrize("near_misses", [0.0, 1.0])
def test_answers_follow_from_the_media(tmp_path, near_misses):
    conversations = make_split(tmp_path, 270, seed=1, images=60, clips=40, near_misses=near_misses)
    pool_facts = {}
    pool = MediaPool(tmp_path / "again", random.Random(1), images=60, clips=40)  # the same draws as the split
    pool_facts.update({f.path: f for f in pool.images + pool.clips})
    english_colours = {COLOURS[c][1] + ".": c for c in COLOURS} | {COLOURS[c][2] + ".": c for c in COLOURS}
    numbers = {NUMBERS[n][0] + ".": n for n in NUMBERS} | {NUMBERS[n][1] + ".": n for n in NUMBERS}
    pitch_words = {PITCHES[p][i].lower(): p for p in PITCHES for i in (1, 2)}
    shape_words = {SHAPE_NOUNS[s][i]: s for s in SHAPE_NOUNS for i in (0, 1)}
    thing_words = {(c, s, "en"): f"{COLOURS[c][1].lower()} {SHAPE_NOUNS[s][0]}" for c in COLOURS for s in SHAPES}
    thing_words |= {(c, s, "ms"): f"{SHAPE_NOUNS[s][1]} {COLOURS[c][2].lower()}" for c in COLOURS for s in SHAPES}
    checked = Counter()
    for conversation in conversations:
        blocks = [b for t in conversation.turns if t["role"] == "user" for b in t["content"]]
        images = [pool_facts[b["path"]] for b in blocks if b["type"] == "image"]
        clips = [pool_facts[b["path"]] for b in blocks if b["type"] == "audio"]
        # What the demo's "one medium / several" split counts, over all turns.
        assert (conversation.media_count("image"), conversation.media_count("audio")) == (len(images), len(clips))
        if conversation.kind in ("which_image", "count_shape", "higher_clip"):
            assert conversation.media_count(ASKED_MEDIUM[conversation.kind]) >= 2
        question = blocks[-1]["text"]
        number = next((int(w.strip("?:")) for w in question.split() if w.strip("?:").isdigit()), None)
        if conversation.kind in ("image_colour", "image_shape", "audio_pitch", "audio_beeps"):
            assert conversation.about == number - 1  # the medium the question points at
        elif conversation.kind == "follow_up":
            assert 0 <= conversation.about < len(images)
        else:
            assert conversation.about is None
        if conversation.kind == "image_colour":
            assert english_colours[conversation.answer] == images[number - 1].colour
        elif conversation.kind == "audio_beeps":
            assert numbers[conversation.answer] == clips[number - 1].beeps
        elif conversation.kind == "audio_pitch":
            # The clip's number, then its pitch ("Audio 2: high.").
            named, word = re.fullmatch(r"Audio (\d): (\w+)\.", conversation.answer).groups()
            assert int(named) == number and pitch_words[word] == clips[number - 1].pitch
        elif conversation.kind == "higher_clip":
            a, b = [int(w.strip("?,")) for w in question.split() if w.strip("?,").isdigit()]
            # The worked answer: each clip's pitch, in the question's order, then the higher one.
            heard = re.findall(r"Audio (\d): (\w+)\.", conversation.answer)
            assert [(int(n), pitch_words[w]) for n, w in heard] == [(a, clips[a - 1].pitch), (b, clips[b - 1].pitch)]
            higher = int(conversation.answer.rstrip(".").split()[-1])
            lower = b if higher == a else a
            order = list(PITCHES)
            assert order.index(clips[higher - 1].pitch) > order.index(clips[lower - 1].pitch)
        elif conversation.kind == "which_image":
            # The worked answer: the asked thing, each image in order against it, then its number.
            asked, steps, verdict = re.fullmatch(
                r"(.+?): (.+)\. (?:Image|Gambar) (\d)\.", conversation.answer
            ).groups()
            target = images[int(verdict) - 1]
            assert [(f.colour, f.shape) for f in images].count((target.colour, target.shape)) == 1
            assert asked == thing_words[(target.colour, target.shape, conversation.language)]
            yes, no = ("yes", "no") if conversation.language == "en" else ("ya", "tidak")
            word = 1 if conversation.language == "en" else 2
            for number, (step, image) in enumerate(zip(steps.split(", "), images), start=1):
                # Each image's colour first, in both languages; one whose colour differs from the
                # asked thing's is dismissed after it.
                colour, noun = COLOURS[image.colour][word].lower(), SHAPE_NOUNS[image.shape][word - 1]
                said = f"{colour} {noun}" if image.colour == target.colour else colour
                assert step == f"{number} {said} {yes if number == int(verdict) else no}"
        elif conversation.kind == "count_shape":
            # The worked answer: the asked shape; each image's shape, whether it is the asked one and
            # the count so far; then the count.
            asked, steps, final = re.fullmatch(r"(.+?): (.+)\. (\w+\.)", conversation.answer).groups()
            shape = shape_words[asked]
            yes, no = ("yes", "no") if conversation.language == "en" else ("ya", "tidak")
            word = 0 if conversation.language == "en" else 1
            matches = [f.shape == shape for f in images]
            for number, (step, image, match) in enumerate(zip(steps.split(", "), images, matches), start=1):
                assert step.rsplit(" ", 2)[:2] == [f"{number} {SHAPE_NOUNS[image.shape][word]}", yes if match else no]
            running = [numbers[s.rsplit(" ", 1)[-1].capitalize() + "."] for s in steps.split(", ")]
            assert running == list(np.cumsum(matches))
            assert numbers[final] == running[-1] == sum(f.shape == shape for f in images)
        elif conversation.kind == "image_vs_audio":
            # The worked answer: the asked clip's beeps, whether that many images and one more were given.
            clip_number, beeps, first, first_given, second, second_given, verdict = re.fullmatch(
                r"Audio (\d): (\w+) (?:beeps?|bip)\. (?:Image|Gambar) (\d) (\w+), (?:image|gambar) (\d) (\w+)\. (.+)",
                conversation.answer,
            ).groups()
            clip = clips[number - 1]
            assert int(clip_number) == number and numbers[beeps.capitalize() + "."] == clip.beeps
            assert (int(first), int(second)) == (clip.beeps, clip.beeps + 1)
            given = {"yes": True, "ada": True, "no": False, "tiada": False}
            assert (given[first_given], given[second_given]) == (len(images) >= clip.beeps, len(images) > clip.beeps)
            en = conversation.language == "en"
            if len(images) > clip.beeps:
                assert verdict == ("More images." if en else "Lebih banyak gambar.")
            elif len(images) < clip.beeps:
                assert verdict == ("More beeps." if en else "Lebih banyak bip.")
            else:
                assert verdict == ("The same." if en else "Sama banyak.")
        checked[conversation.kind] += 1
    kinds = ("image_colour", "audio_beeps", "higher_clip", "which_image", "count_shape", "image_vs_audio")
    assert min(checked[kind] for kind in kinds) >= 20
