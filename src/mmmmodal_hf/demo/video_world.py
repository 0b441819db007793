"""The demo world's videos: a shape that changes colour over 4 seconds, with one beep on its soundtrack.

Each video is an mp4 (H.264 frames, an AAC soundtrack at 16 kHz) written with PyAV, so the real
reading path is used. The processor takes 8 frames of a video by default, one every half second
here, each followed by the soundtrack's half second after it; the colour changes only at those
half seconds and the beep lies inside one of them, so the frame shown while it sounds is known.
Two question kinds, in English and Malay: the colour when the beep sounded, answerable only by
matching the sound to its moment, and the colour at the end of the video.
"""

import json
import math
import random
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .world import COLOURS, IMAGE_PIXELS, PITCHES, SAMPLE_RATE, SHAPES, WorldConversation, render_image

VIDEO_SECONDS = 4.0
VIDEO_MOMENTS = 8  # the processor's default num_frames: a frame every half second of a 4 s video
VIDEO_FPS = 4  # frames written per second: two per moment
VIDEO_KINDS = ("video_beep_colour", "video_end_colour")
VIDEO_CHANCE = {"video_beep_colour": 1 / 6, "video_end_colour": 1 / 6}


@dataclass
class VideoFact:
    path: str
    shape: str
    colours: list[str]  # the shape's colour at each of the 8 moments
    beep: int  # the 0-based moment the beep sounds in


def _moment_colours(rng: random.Random) -> list[str]:
    """2 to 4 runs of distinct neighbouring colours over the 8 moments, changing at random moments."""
    changes = sorted(rng.sample(range(1, VIDEO_MOMENTS), rng.randint(1, 3)))
    colours, previous = [], None
    for start, end in zip([0, *changes], [*changes, VIDEO_MOMENTS]):
        colour = rng.choice([c for c in sorted(COLOURS) if c != previous])
        colours += [colour] * (end - start)
        previous = colour
    return colours


def _soundtrack(beep: int, rng: random.Random) -> np.ndarray:
    """Faint noise and one 0.15 s beep well inside moment `beep`'s half second (AAC's start delay cannot move it out)."""
    sound = np.random.default_rng(rng.randint(0, 2**31)).normal(0, 0.01, int(SAMPLE_RATE * VIDEO_SECONDS))
    moment = VIDEO_SECONDS / VIDEO_MOMENTS
    start = int((beep * moment + rng.uniform(0.12, 0.2)) * SAMPLE_RATE)
    t = np.arange(int(0.15 * SAMPLE_RATE)) / SAMPLE_RATE
    envelope = np.minimum(1.0, np.minimum(t, t[::-1]) * 200)
    frequency = PITCHES[rng.choice(sorted(PITCHES))][0]
    sound[start : start + len(t)] += 0.5 * envelope * np.sin(2 * math.pi * frequency * t)
    return sound.astype(np.float32)


def write_video(path: Path, fact: VideoFact, rng: random.Random) -> None:
    import av  # the video extra: imported only when the video demo runs

    seed = rng.randint(0, 2**31)  # one background, size and place for every frame of the video
    frames_per_moment = int(VIDEO_FPS * VIDEO_SECONDS / VIDEO_MOMENTS)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=VIDEO_FPS, options={"crf": "12"})
        video.width = video.height = IMAGE_PIXELS
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=SAMPLE_RATE)
        audio.layout = "mono"
        for index, colour in enumerate(c for c in fact.colours for _ in range(frames_per_moment)):
            image = render_image(colour, fact.shape, random.Random(seed))
            frame = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, VIDEO_FPS)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        sound = _soundtrack(fact.beep, rng)[None]
        for start in range(0, sound.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(sound[:, start : start + 1024]), format="fltp",
                                               layout="mono")  # fmt: skip
            frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, start, Fraction(1, SAMPLE_RATE)
            container.mux(audio.encode(frame))
        container.mux(audio.encode())


def write_videos(folder: Path, count: int, rng: random.Random) -> list[VideoFact]:
    folder.mkdir(parents=True, exist_ok=True)
    facts = []
    for index in range(count):
        fact = VideoFact(f"video_{index:04d}.mp4", rng.choice(sorted(SHAPES)), _moment_colours(rng),
                         rng.randrange(VIDEO_MOMENTS))  # fmt: skip
        write_video(folder / fact.path, fact, rng)
        facts.append(fact)
    return facts


def ask_video(kind: str, language: str, fact: VideoFact) -> tuple[str, str]:
    """A (question, answer) of `kind` about one video.

    The beep's answer names the soundtrack piece that holds it, then the frame before that piece,
    as the model numbers them (a video's frames are its images 1 to 8, its pieces its audio 1 to 8),
    then the colour: "Audio 5: beep. Image 5: red."; each step is one look-up the demo's LM makes.
    """
    en = language == "en"
    if kind == "video_beep_colour":
        question = (
            "What colour was the shape when the beep sounded?" if en else "Apa warna bentuk itu semasa bunyi bip?"
        )
        colour = COLOURS[fact.colours[fact.beep]][1 if en else 2].lower()
        image = "Image" if en else "Gambar"
        return question, f"Audio {fact.beep + 1}: {'beep' if en else 'bip'}. {image} {fact.beep + 1}: {colour}."
    if kind == "video_end_colour":
        question = (
            "What colour is the shape at the end of the video?" if en else "Apakah warna bentuk itu pada akhir video?"
        )
        return question, COLOURS[fact.colours[-1]][1 if en else 2] + "."
    raise ValueError(f"not a video kind: {kind}")


def make_video_split(folder: Path, conversations: int, seed: int, videos: int) -> list[WorldConversation]:
    """Video conversations, kinds and languages in turn, over the split's own `videos`: one turn, the video then
    the question (the video's 8 frames take all 8 of the demo model's image tags, so nothing else is shown)."""
    rng = random.Random(seed)
    facts = write_videos(folder, videos, rng)
    rows = []
    for index in range(conversations):
        kind = VIDEO_KINDS[index % len(VIDEO_KINDS)]
        language = ("en", "ms")[(index // len(VIDEO_KINDS)) % 2]
        fact = rng.choice(facts)
        question, answer = ask_video(kind, language, fact)
        turns = [
            {"role": "user", "content": [{"type": "video", "path": fact.path}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": answer},
        ]
        rows.append(WorldConversation(kind, language, turns, answer, None))
    rng.shuffle(rows)
    with open(folder / "data.jsonl", "w") as handle:
        for conversation in rows:
            handle.write(json.dumps(conversation.row()) + "\n")
    return rows
