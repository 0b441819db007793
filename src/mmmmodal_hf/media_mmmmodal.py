"""Turn what users hand us (paths, bytes, PIL images, arrays, tensors) into RGB images, mono waveforms and videos.

One place for media loading, shared by the processor, training data and the chat tools. The
kind of a file is decided by decoding it, never by its extension. Every failure is a
`MediaError` (a `ValueError`) of the problem's type, with the reason; the processor adds which sample and which
item it was, keeping the type, so callers branch on types and never on message text.
"""

import base64
import binascii
import io
import math
import os
import re
from numbers import Integral, Real
from pathlib import Path

import httpx
import numpy as np
import soundfile
import soxr
from PIL import Image, ImageOps, UnidentifiedImageError

URL_PREFIXES = ("http://", "https://", "data:")  # media fetched or decoded, never paths
_VIDEO_EXTRA = '"mmmmodal-hf[video]"'  # PyAV: videos, and the audio formats libsndfile lacks
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000  # 8000 x 8000; Pillow's own bomb check only warns below 179M


class MediaError(ValueError):
    """A medium that cannot be used: of the wrong form (a 4-D array, a dict without samples, ...), or one below."""


class MediaNotFoundError(MediaError):
    """No such file, or a URL that could not be fetched."""


class NotAnImageError(MediaError):
    """Bytes no image format decodes."""


class NotAudioError(MediaError):
    """Bytes no audio format decodes."""


class CorruptMediaError(MediaError):
    """Of its kind but unusable: truncated, empty, or holding NaN or infinite values."""


class MediaTooLargeError(MediaError):
    """Over a limit: more pixels than `max_image_pixels` (a possible decompression bomb), audio too long."""


class NotAVideoError(MediaError):
    """Bytes no video format decodes, or a file without a video stream (an audio file given as a video)."""


def describe_media(item) -> str:
    """A short, safe description of a media item for error messages."""
    if isinstance(item, (str, os.PathLike)):
        text = str(item)
        return repr(text if len(text) <= 120 else text[:117] + "...")
    if isinstance(item, bytes):
        return f"<{len(item)} bytes>"
    if isinstance(item, dict):
        return f"<dict with keys {sorted(item)}>"
    shape = getattr(item, "shape", None)  # numpy arrays and torch tensors
    if shape is None and isinstance(getattr(item, "size", None), tuple):
        shape = item.size  # PIL images: (width, height)
    return f"<{type(item).__name__} {tuple(shape)}>" if shape is not None else f"<{type(item).__name__}>"


def _fetch(url: str) -> io.BytesIO:
    """The body at an http(s) URL, or a data URL's bytes (as browsers and OpenAI-style clients send media), decoded
    afterwards as a file is: the same checks (kind, size) and errors."""
    if url.startswith("data:"):
        try:
            return io.BytesIO(base64.b64decode("".join(url.partition(",")[2].split()), validate=True))
        except binascii.Error:
            raise CorruptMediaError("the data URL holds no base64 data") from None
    try:
        response = httpx.get(url, follow_redirects=True, timeout=30)
    except httpx.HTTPError as error:  # no connection, a timeout, a malformed URL
        raise MediaNotFoundError(f"the URL could not be fetched ({type(error).__name__}: {error})") from None
    if response.is_error:
        raise MediaNotFoundError(
            f"the URL could not be fetched (HTTP {response.status_code} {response.reason_phrase})"
        )
    return io.BytesIO(response.content)


def _check_pixels(image: Image.Image, max_pixels: int | None) -> None:
    if max_pixels is not None and image.width * image.height > max_pixels:
        raise MediaTooLargeError(
            f"refused: {image.width}x{image.height} = {image.width * image.height:,} pixels is more than the limit "
            f"of {max_pixels:,} (max_image_pixels), a possible decompression bomb"
        )


def _open_image(source, max_pixels: int | None) -> Image.Image:
    try:
        image = Image.open(source)
        _check_pixels(image, max_pixels)  # from the header, before a single pixel is decoded
        image.load()  # decode now, so a truncated file fails here and not inside the image processor
    except FileNotFoundError:
        raise MediaNotFoundError(f"no such file: {source}") from None
    except UnidentifiedImageError:
        raise NotAnImageError("not a readable image (the bytes are not in any format Pillow decodes)") from None
    except Image.DecompressionBombError as error:
        raise MediaTooLargeError(f"refused as a possible decompression bomb: {error}") from None
    except (OSError, SyntaxError) as error:
        raise CorruptMediaError(f"the image data is corrupt or truncated ({error})") from None
    # Animated images (GIF, WebP, APNG) hold their first frame after open(); EXIF rotation is applied
    # so photos from phones come upright.
    return ImageOps.exif_transpose(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: transparency over white, 16/32-bit and float scaled to 8 bits."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or pixels.max(initial=0) > 255 else 255.0
        if image.mode == "F" and pixels.max(initial=0) <= 1.0:
            peak = 1.0
        image = Image.fromarray(np.clip(pixels / peak * 255.0, 0, 255).round().astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB") if image.mode != "RGB" else image


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first, as torch tensors usually are
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise MediaError(f"an image array must be (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4; got {array.shape}")
    if array.size == 0:
        raise MediaError(f"the image array is empty (shape {array.shape})")
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        if not np.isfinite(array).all():
            raise CorruptMediaError("the image array holds NaN or infinite values")
        if array.max(initial=0) <= 1.0:
            array = array * 255.0  # floats in [0, 1]
        array = np.clip(array, 0, 255).round().astype(np.uint8)
    return Image.fromarray(array)


def _tensor_array(tensor) -> np.ndarray:
    """A torch tensor's values in numpy, from any device: floats as float32, integers as they are (scaled as numpy's)."""
    tensor = tensor.detach().cpu()
    return tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()


def load_image(item, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """An RGB PIL image from a path, URL, bytes, PIL image, numpy array, torch tensor or datasets' stored image.

    Files and bytes larger than `max_pixels` are refused from their header, before decoding.
    """
    if isinstance(item, dict) and (item.get("bytes") or item.get("path")):  # datasets' `Image` feature, not decoded
        item = item.get("bytes") or item["path"]
    if isinstance(item, Image.Image):
        image = item
    elif isinstance(item, (str, os.PathLike)):
        text = str(item)
        image = _open_image(_fetch(text) if text.startswith(URL_PREFIXES) else Path(text), max_pixels)
    elif isinstance(item, (bytes, bytearray)):
        image = _open_image(io.BytesIO(item), max_pixels)
    elif isinstance(item, np.ndarray):
        image = _array_to_image(item)
    elif hasattr(item, "detach") and hasattr(item, "numpy"):  # torch.Tensor, without importing torch here
        image = _array_to_image(_tensor_array(item))
    else:
        raise MediaError(
            "an image must be a path, URL, bytes, PIL image, numpy array, torch tensor or a dict of 'bytes' or 'path' "
            f"(as datasets stores one); got {describe_media(item)}"
        )
    if image.width == 0 or image.height == 0:
        raise CorruptMediaError(f"the image has no pixels ({image.width}x{image.height})")
    _check_pixels(image, max_pixels)
    return _to_rgb(image)


# libsndfile reads a cut-off WAV/AIFF without complaint and notes the shortfall in its log.
_SHORT_CHUNK_RE = re.compile(r"data\s*:\s*(\d+)\s*\(should be (\d+)\)")


def _read_audio_file(source) -> tuple[np.ndarray, int]:
    try:
        with soundfile.SoundFile(source) as handle:
            shortfall = _SHORT_CHUNK_RE.search(handle.extra_info)
            promised, present = (int(n) for n in shortfall.groups()) if shortfall else (0, 0)
            if present < promised:
                raise CorruptMediaError(
                    f"the audio file is truncated: its header promises {promised:,} bytes of samples but only "
                    f"{present:,} are present"
                )
            samples, rate = handle.read(dtype="float32", always_2d=True), handle.samplerate
    except FileNotFoundError:
        raise MediaNotFoundError(f"no such file: {source}") from None
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        return _read_audio_with_ffmpeg(source, f"not a readable audio file ({error})")
    return samples.T, rate  # (channels, samples)


def _read_audio_with_ffmpeg(source, refusal: str) -> tuple[np.ndarray, int]:
    """What libsndfile does not read (AAC in m4a, Opus in webm, ...), through FFmpeg where PyAV is installed (the
    [video] extra); refused with `refusal` where it is not, or where FFmpeg finds no audio or a video."""
    try:
        import av
    except ImportError:
        raise NotAudioError(f"{refusal}; m4a, webm and more need PyAV: pip install av (or {_VIDEO_EXTRA})") from None
    if hasattr(source, "seek"):
        source.seek(0)
    try:
        with av.open(source) as container:
            if _is_still_image(container) or not container.streams.audio:
                raise NotAudioError(refusal)
            if moving_pictures(container):
                raise NotAudioError("not a readable audio file: it is a video (give it as a video)")
            return _soundtrack(container), container.streams.audio[0].rate
    except av.FFmpegError:
        raise NotAudioError(refusal) from None


def _as_channels_first(array: np.ndarray) -> np.ndarray:
    if array.ndim == 1:
        return array[None, :]
    if array.ndim == 2:
        if array.shape[0] > 64 and array.shape[1] <= 64:
            raise MediaError(f"audio of shape {array.shape} looks like (samples, channels); pass (channels, samples)")
        return array
    raise MediaError(f"audio must be 1-D (samples) or 2-D (channels, samples); got shape {array.shape}")


def load_audio(item, target_rate: int | None, sampling_rate: int | None = None) -> np.ndarray:
    """A mono float32 waveform at `target_rate` from a path, URL, bytes, array, tensor or datasets-style dict
    (`target_rate=None`: at the file's own rate, for checking that a file is usable audio).

    `sampling_rate` is the rate of a bare array (files carry their own; default `target_rate`). Channels are
    averaged; other rates are resampled with soxr.
    """
    waveform, rate = read_audio(item, sampling_rate if sampling_rate is not None else target_rate)
    return _resampled(waveform, rate, target_rate)


def _resampled(waveform: np.ndarray, rate: int, target_rate: int | None) -> np.ndarray:
    """A mono waveform (`read_audio`'s) at `target_rate`, resampled with soxr where its `rate` differs."""
    if target_rate is not None and rate != target_rate:
        resampled = soxr.resample(waveform, rate, target_rate, quality="HQ")
        # soxr gives round-half-up(n * target / rate) samples: none for a clip shorter than one output
        # sample, which then becomes a single sample of its mean level.
        waveform = resampled if resampled.shape[0] else np.full(1, waveform.mean(), dtype=np.float32)
    return np.ascontiguousarray(waveform, dtype=np.float32)


def read_audio(item, sampling_rate: int | None = None) -> tuple[np.ndarray, int]:
    """A mono float32 waveform at its own rate, and that rate (`sampling_rate` for a bare array)."""
    if isinstance(item, dict):  # datasets' Audio feature: {"array", "sampling_rate"} or {"path"/"bytes"}
        key = next((key for key in ("array", "bytes", "path") if item.get(key) is not None), None)
        if key is None:
            raise MediaError(f"an audio dict needs 'array' (+ 'sampling_rate'), 'bytes' or 'path'; got {sorted(item)}")
        sampling_rate = item.get("sampling_rate", sampling_rate) if key == "array" else sampling_rate
        item = item[key]

    if isinstance(item, (list, tuple)) and item and isinstance(item[0], float):  # samples, as transformers takes them
        item = np.asarray(item, dtype=np.float32)
    if isinstance(item, (str, os.PathLike)):
        text = str(item)
        channels, rate = _read_audio_file(_fetch(text) if text.startswith(URL_PREFIXES) else text)
    elif isinstance(item, (bytes, bytearray)):
        channels, rate = _read_audio_file(io.BytesIO(item))
    elif isinstance(item, np.ndarray) or (hasattr(item, "detach") and hasattr(item, "numpy")):
        array = item if isinstance(item, np.ndarray) else _tensor_array(item)
        if not np.issubdtype(array.dtype, np.number):
            raise MediaError(f"audio samples must be numbers; got dtype {array.dtype}")
        if np.issubdtype(array.dtype, np.integer):  # as libsndfile reads PCM files: unsigned centred, / 2^(bits-1)
            info = np.iinfo(array.dtype)
            half = (int(info.max) - int(info.min) + 1) / 2
            array = ((array.astype(np.float64) - (int(info.min) + half)) / half).astype(np.float32)
        channels = _as_channels_first(np.asarray(array, dtype=np.float32))
        rate = sampling_rate
        if rate is None:
            raise MediaError("an audio array needs its sampling_rate")
    else:
        raise MediaError(
            "audio must be a path, URL, bytes, numpy array, torch tensor, list of floats or a dict with 'array' and "
            f"'sampling_rate'; got {type(item).__name__}"
        )
    return np.ascontiguousarray(_mono(channels, int(rate)), dtype=np.float32), int(rate)


def _mono(channels: np.ndarray, rate: int) -> np.ndarray:
    if channels.shape[-1] == 0:
        raise CorruptMediaError("the audio is empty (0 samples)")
    if rate <= 0:
        raise MediaError(f"the sampling rate must be positive; got {rate}")
    if not np.isfinite(channels).all():
        raise CorruptMediaError("the audio holds NaN or infinite samples")
    return _averaged(channels)


def _averaged(channels: np.ndarray) -> np.ndarray:
    """(channels, samples) as one channel, their mean: the one rule that makes audio mono, whole or chunk by chunk."""
    return channels.mean(axis=0, dtype=np.float32) if channels.shape[0] > 1 else channels[0]


DEFAULT_NUM_FRAMES = 8  # with its soundtrack, a 30 s clip takes about 5,200 of an 8,192-position context at 384 px
DEFAULT_MAX_FRAMES = 64


class Video:
    """A video as the processor takes it: upright RGB `frames` at `times` (seconds from the start), its `duration`,
    and its `soundtrack`, a mono waveform at `sampling_rate` (None: the video has none, or it is not used)."""

    __slots__ = ("frames", "times", "duration", "soundtrack", "sampling_rate")

    def __init__(self, frames: list, times: list[float], duration: float, soundtrack: np.ndarray | None = None,
                 sampling_rate: int | None = None):  # fmt: skip
        self.frames, self.times, self.duration, self.soundtrack = frames, times, duration, soundtrack
        self.sampling_rate = sampling_rate

    def __repr__(self) -> str:
        sound = "" if self.soundtrack is None else f", soundtrack of {len(self.soundtrack)} samples"
        return f"Video({len(self.frames)} frames over {self.duration:.2f} s{sound})"


def sample_times(duration: float, num_frames: int | None = None, fps: float | None = None,
                 max_frames: int | None = None) -> list[float]:  # fmt: skip
    """When the frames are taken: `num_frames` (default 8), or `fps` frames per second of the video (at least one,
    at most `max_frames`), evenly spaced from the start."""
    if num_frames is not None and fps is not None:
        raise ValueError("give num_frames or fps, not both")
    options = {"num_frames": (num_frames, Integral), "fps": (fps, Real), "max_frames": (max_frames, Integral)}
    for name, (value, kind) in options.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind) or not 0 < value < math.inf):
            raise ValueError(f"{name} must be a positive {'whole ' * (kind is Integral)}number; got {value!r}")
    max_frames = DEFAULT_MAX_FRAMES if max_frames is None else max_frames
    count = num_frames if num_frames is not None else round(duration * fps) if fps is not None else DEFAULT_NUM_FRAMES
    count = max(1, min(int(count), max_frames))
    return [index * duration / count for index in range(count)]


def load_video(item, num_frames: int | None = None, fps: float | None = None, max_frames: int | None = None,
               sampling_rate: int | None = 16000, load_audio_from_video: bool = True,
               max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, sample_frames: bool = True) -> Video:  # fmt: skip
    """A `Video` from a file path, URL or bytes (decoded with PyAV: only the sampled frames, seeking), a `Video`, a
    list of frames or a `(frames, height, width, 3)` array (one frame a second), or a dict of `frames` with their
    `fps`, and an optional soundtrack (`audio`, with its `sampling_rate`). The soundtrack is made mono and resampled
    to `sampling_rate` (None: kept at its own rate); frames over `max_pixels` are refused before decoding. Given
    frames are all kept with `sample_frames=False` (transformers' `do_sample_frames`)."""
    if isinstance(item, Video):  # already read; its soundtrack brought to `sampling_rate` where it is elsewhere
        if item.soundtrack is None or not sampling_rate or item.sampling_rate in (None, sampling_rate):
            return item
        soundtrack = load_audio(item.soundtrack, sampling_rate, item.sampling_rate)
        return Video(item.frames, item.times, item.duration, soundtrack, sampling_rate)
    if isinstance(item, (str, os.PathLike, bytes, bytearray)):
        text = str(item) if isinstance(item, (str, os.PathLike)) else None
        source = io.BytesIO(item) if text is None else _fetch(text) if text.startswith(URL_PREFIXES) else text
        return _read_video_file(source, num_frames, fps, max_frames, load_audio_from_video, sampling_rate, max_pixels)
    given = item if isinstance(item, dict) else {"frames": item}
    frames, rate = given.get("frames"), float(1.0 if given.get("fps") is None else given["fps"])
    if not isinstance(frames, (list, tuple)) and getattr(frames, "ndim", None) != 4:
        got = describe_media(item if frames is None else frames)
        raise MediaError(
            "a video must be a file path, URL or bytes, a list of frames, a (frames, height, width, channels) array "
            f"or a dict of 'frames' (with 'fps', and 'audio' with 'sampling_rate'); got {got}"
        )
    if len(frames) == 0:
        raise CorruptMediaError("the video has no frames")
    if not 0 < rate < math.inf:
        raise MediaError(f"the frames' fps must be positive; got {given.get('fps')!r}")
    duration = len(frames) / rate
    times = (
        sample_times(duration, num_frames, fps, max_frames)
        if sample_frames
        else [i / rate for i in range(len(frames))]
    )
    picked = [load_image(frames[min(len(frames) - 1, round(time * rate))], max_pixels) for time in times]
    audio = given.get("audio") if load_audio_from_video else None
    if audio is None:
        return Video(picked, times, duration)
    waveform, rate = read_audio(audio, given.get("sampling_rate"))
    return Video(picked, times, duration, _resampled(waveform, rate, sampling_rate or rate), sampling_rate or rate)


def _pyav():
    """PyAV, imported only when a video file is given."""
    try:
        import av
    except ImportError:
        raise ImportError(f"reading a video file needs PyAV: pip install av (or {_VIDEO_EXTRA})") from None
    return av


def _read_video_file(source, num_frames, fps, max_frames, with_sound, sampling_rate, max_pixels) -> Video:
    av = _pyav()
    try:
        container = av.open(source)
    except FileNotFoundError:
        raise MediaNotFoundError(f"no such file: {source}") from None
    except av.FFmpegError as error:
        raise NotAVideoError(f"not a readable video ({error})") from None
    with container:
        if _is_still_image(container):
            raise NotAVideoError("the file is a still image, not a video (give it as an image)")
        if not (streams := moving_pictures(container)):
            raise NotAVideoError("the file has no video stream (an audio file? give it as audio)")
        stream = streams[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if max_pixels is not None and width * height > max_pixels:
            raise MediaTooLargeError(f"its frames are {width}x{height}, more than max_pixels={max_pixels:,}")
        duration = video_duration(container, stream)
        times = sample_times(duration, num_frames, fps, max_frames)
        frames = _frames_at(container, stream, times)
        if not (with_sound and container.streams.audio):
            return Video(frames, times, duration)
        rate = container.streams.audio[0].rate
        start = float((stream.start_time or 0) * stream.time_base)
        soundtrack = load_audio(_soundtrack(container, start), sampling_rate or rate, rate)
    return Video(frames, times, duration, soundtrack, sampling_rate or rate)


def video_duration(container, stream) -> float:
    """Seconds the video stream lasts: from the header, or where it holds none (a live recording, as browsers write
    webm) from the end of its last packet, demuxed without decoding."""
    start = stream.start_time or 0
    if stream.duration or container.duration:  # the container's end, where the stream's own duration is not given
        end = ((container.start_time or 0) + (container.duration or 0)) / 1e6
        return float(stream.duration * stream.time_base) if stream.duration else end - float(start * stream.time_base)
    ends = [packet.pts + (packet.duration or 0) for packet in container.demux(stream) if packet.pts is not None]
    return float((max(ends) - start) * stream.time_base) if ends else 0.0


def moving_pictures(container) -> list:
    """The video streams that are not an album's picture (an attached picture, as music files carry one)."""
    cover_art = _pyav().stream.Disposition.attached_pic
    return [stream for stream in container.streams.video if cover_art not in stream.disposition]


def _is_still_image(container) -> bool:
    """Whether FFmpeg read the file as a still image (PNG, JPEG, ...: its image2 and *_pipe formats)."""
    return container.format.name == "image2" or container.format.name.endswith("_pipe")


def _frames_at(container, stream, times: list[float]) -> list[Image.Image]:
    """The frame shown at each time, upright. Decoding goes on from the last frame when the next time is near, else
    seeks to the keyframe before it: a few frames of a long file decode only a few groups of pictures."""
    av = _pyav()

    start = float((stream.start_time or 0) * stream.time_base)
    frames, decoder, shown, ahead = [], None, None, None
    try:
        for time in times:
            target = start + time
            if decoder is None or shown is None or target - shown.time > 2.0:
                (decoder, ahead), shown = _decoding_from(container, stream, target, start), None
            while ahead is None or ahead.time is None or ahead.time <= target + 1e-6:
                shown = ahead or shown
                ahead = next(decoder, None)
                if ahead is None:
                    break
            shown = shown or ahead  # a seek that landed after the time: its first frame
            if shown is None or (ahead is None and target - shown.time > 1.0):
                ends = "no frame decodes" if shown is None else f"its frames end at {shown.time - start:.2f} s"
                raise CorruptMediaError(f"{ends}, but a frame at {time:.2f} s was asked for (a truncated file?)")
            frames.append(_upright(shown))
    except av.FFmpegError as error:
        raise CorruptMediaError(f"the video cannot be decoded near {time:.2f} s ({error})") from None
    return frames


def _decoding_from(container, stream, target: float, start: float) -> tuple:
    """A decoder from the keyframe at or before `target` (seconds), and its first frame. Where the seek lands after
    the time (MPEG-TS lands on the next keyframe), it seeks again further back, at most to before the `start`."""
    back = 0.0
    while True:
        container.seek(int((target - back) / stream.time_base), stream=stream)
        decoder = container.decode(stream)
        first = next(decoder, None)
        if first is None or first.time is None or first.time <= target + 1e-6 or target - back < start:
            return decoder, first
        back = max(1.0, 2 * back)


def _upright(frame) -> Image.Image:
    image = frame.to_image()
    rotation = getattr(frame, "rotation", 0) or 0  # the display matrix: how far to turn it, counterclockwise
    return image.rotate(rotation, expand=True) if rotation else image


def _soundtrack(container, start: float | None = None) -> np.ndarray:
    """The first audio stream, whole, as float (1, samples), its channels averaged as it decodes (an hour of 5.1 is
    0.7 GB mono, 4 GB as six channels); with `start` (the first frame's time), on the video's clock: silence before
    a soundtrack that begins later, nothing from before `start`."""
    av = _pyav()

    stream = container.streams.audio[0]
    container.seek(0)
    resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=stream.rate)
    chunks, begins = [], None
    for frame in container.decode(stream):
        begins = frame.time if begins is None else begins  # where decoding began: the stream's start, or the seek's
        chunks += [_averaged(out.to_ndarray()) for out in resampler.resample(frame)]
    if not chunks:
        raise CorruptMediaError("the soundtrack holds no samples")
    samples = np.concatenate(chunks)[None]
    shift = 0 if start is None or begins is None else round((begins - start) * stream.rate)
    if shift > 0:
        return np.concatenate([np.zeros((samples.shape[0], shift), samples.dtype), samples], axis=1)
    if -shift >= samples.shape[1]:
        raise CorruptMediaError("the soundtrack ends before the first frame")
    return samples[:, -shift:]


__all__ = [
    "load_image", "load_audio", "read_audio", "load_video", "sample_times", "video_duration", "moving_pictures",
    "Video", "describe_media", "URL_PREFIXES", "DEFAULT_MAX_IMAGE_PIXELS", "MediaError", "MediaNotFoundError",
    "NotAnImageError", "NotAudioError", "NotAVideoError", "CorruptMediaError", "MediaTooLargeError",
]  # fmt: skip
