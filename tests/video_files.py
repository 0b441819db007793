"""Real video files for the tests, written with PyAV: a known colour each second and beeps at known times."""

from fractions import Fraction
from pathlib import Path

import numpy as np

COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 220, 40), (200, 40, 200), (40, 210, 210)]


def colour_at(second: float) -> tuple[int, int, int]:
    return COLOURS[int(second) % len(COLOURS)]


def beeping_soundtrack(seconds: float, rate: int, channels: int, beeps=(1.5,), beep_seconds=0.3) -> np.ndarray:
    """(channels, samples) float32: quiet noise, and a 1 kHz beep starting at each of `beeps` (seconds)."""
    samples = int(round(seconds * rate))
    sound = np.random.default_rng(0).normal(0, 0.01, (channels, samples)).astype(np.float32)
    for start in beeps:
        first, last = int(start * rate), int((start + beep_seconds) * rate)
        sound[:, first:last] += 0.5 * np.sin(2 * np.pi * 1000 * np.arange(last - first) / rate).astype(np.float32)
    return sound


def write_video(path: Path, seconds: float = 4.0, fps: int = 10, size=(64, 48), audio_rate: int | None = 44100,
                channels: int = 2, beeps=(1.5,), codec: str = "libx264", gop: int = 12, live: bool = False,
                audio_delay: float = 0.0) -> Path:  # fmt: skip
    """A video whose frames are one colour per second (`colour_at`, seconds from its first frame), with a beeping
    soundtrack unless `audio_rate` is None. Its container follows the suffix (mp4, webm, mkv, mov, avi). `live`: a
    Matroska/webm written as a stream, as a browser's MediaRecorder writes one: no duration in its header.
    `audio_delay`: the soundtrack starts that many seconds after the first frame (before it, where negative: the
    frames start later), its beeps still at `beeps` seconds from the first frame."""
    import av

    width, height = size
    with av.open(str(path), "w", options={"live": "1"} if live else {}) as container:
        video = container.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.gop_size = gop
        audio = None
        if audio_rate is not None:
            audio = container.add_stream("libopus" if path.suffix == ".webm" else "aac", rate=audio_rate)
            audio.layout = {1: "mono", 2: "stereo", 6: "5.1"}[channels]
        for index in range(int(seconds * fps)):
            pixels = np.zeros((height, width, 3), np.uint8)
            pixels[:] = colour_at(index / fps)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = index + round(max(0.0, -audio_delay) * fps), Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if audio is not None:
            sound = beeping_soundtrack(seconds - audio_delay, audio_rate, channels, [b - audio_delay for b in beeps])
            chunk, first = 1024, round(max(0.0, audio_delay) * audio_rate)
            for start in range(0, sound.shape[1], chunk):
                piece = np.ascontiguousarray(sound[:, start : start + chunk])
                frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout=audio.layout.name)
                frame.sample_rate, frame.pts, frame.time_base = audio_rate, first + start, Fraction(1, audio_rate)
                container.mux(audio.encode(frame))
            container.mux(audio.encode())
    return path


def write_variable_rate_video(path: Path, seconds: float = 4.0, steps=(0.04, 0.25, 0.1, 0.33)) -> list[float]:
    """A video of variable frame rate, frames `steps` seconds apart in turn (in a millisecond time base), each of
    `colour_at` its time, without a soundtrack; returns the frames' times."""
    import av

    times = [0.0]
    while times[-1] + steps[len(times) % len(steps)] < seconds:
        times.append(round(times[-1] + steps[len(times) % len(steps)], 3))
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.codec_context.time_base = Fraction(1, 1000)
        for time in times:
            pixels = np.zeros((48, 64, 3), np.uint8)
            pixels[:] = colour_at(time)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = round(time * 1000), Fraction(1, 1000)
            container.mux(video.encode(frame))
        container.mux(video.encode())
    return times


def write_turned_video(path: Path, size=(64, 32), fps: int = 10) -> Path:
    """An mp4 stored sideways, as phones record: frames red on the left and blue on the right, and a track header
    whose display matrix says to show them turned 90 degrees clockwise (red on top). PyAV writes no display
    matrix, so it is written into the `tkhd` box's matrix afterwards: [0, 1, 0; -1, 0, 0; 0, 0, 1]."""
    import struct

    import av

    width, height = size
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        for index in range(fps):
            pixels = np.zeros((height, width, 3), np.uint8)
            pixels[:, : width // 2], pixels[:, width // 2 :] = COLOURS[0], COLOURS[2]
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode())
    data = bytearray(path.read_bytes())
    header = data.find(b"tkhd")  # the one track's header: version, flags, times, ids, then the matrix
    matrix = header + 4 + (52 if data[header + 4] == 1 else 40)
    struct.pack_into(">9i", data, matrix, 0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))
    return path


def write_sound(path: Path, codec: str, container: str, rate: int = 44100, seconds: float = 1.0,
                cover_art: bool = False) -> Path:  # fmt: skip
    """An audio file of a format libsndfile does not read (AAC in m4a, Opus in webm), a mono beep at 0.3 s, with an
    album picture (an attached-picture video stream, as iTunes writes one) where `cover_art`."""
    import av
    from av.stream import Disposition

    with av.open(str(path), "w", format=container) as output:
        audio = output.add_stream(codec, rate=rate)
        audio.layout = "mono"
        if cover_art:
            picture = output.add_stream("mjpeg")
            picture.width, picture.height, picture.pix_fmt = 16, 16, "yuvj420p"
            picture.disposition = Disposition.attached_pic
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 200, np.uint8), format="rgb24")
            output.mux([*picture.encode(frame.reformat(format="yuvj420p")), *picture.encode()])
        sound = av.AudioFrame.from_ndarray(
            beeping_soundtrack(seconds, rate, 1, beeps=(0.3,)), format="fltp", layout="mono"
        )
        sound.sample_rate = rate  # one frame: PyAV cuts it into the encoder's frame size
        output.mux([*audio.encode(sound), *audio.encode()])
    return path
