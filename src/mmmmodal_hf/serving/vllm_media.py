"""A vLLM media connector that decodes with the processor's own loaders, so the server refuses what
`processor(...)` refuses (a truncated WAV, a decompression bomb, a file that is no image) with the same
message, and hands vLLM mono audio (and a video's soundtrack) at its own rate, which the plugin resamples to the
feature extractor's rate exactly as the processor does. Where the request went
through `request_media.NamedMediaMiddleware`, a refusal names the item as the user counts it (`message 1,
audio 2: ...`).

`mmmmodal serve` selects it (`VLLM_MEDIA_CONNECTOR=mmmmodal`); with `vllm serve`, set that variable too.
"""

from contextlib import contextmanager

import numpy as np
from vllm import envs
from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, MediaConnector, MediaWithBytes
from vllm.multimodal.media.audio import AudioMediaIO
from vllm.multimodal.media.base import MediaIO
from vllm.multimodal.media.image import ImageMediaIO

from ..media_mmmmodal import Video, describe_media, load_image, load_video, read_audio
from .request_media import MEDIA_NAMES, inline_bytes

CONNECTOR = "mmmmodal"


def video_item(video: Video) -> tuple[np.ndarray, dict]:
    """A decoded video (`media_mmmmodal.load_video`) as vLLM's `multi_modal_data["video"]` item: its frames, and
    metadata that keeps their times (taken again as they are: `do_sample_frames` off) and its soundtrack, mono at
    the rate the video carries."""
    count = len(video.frames)
    metadata = {"fps": count / video.duration, "duration": video.duration, "total_num_frames": count,
                "frames_indices": list(range(count)), "do_sample_frames": False}  # fmt: skip
    if video.soundtrack is not None:
        metadata.update(audio=video.soundtrack, sampling_rate=video.sampling_rate)
    return np.stack([np.asarray(frame) for frame in video.frames]), metadata


def load_video_item(source, **options) -> tuple[np.ndarray, dict]:
    """A video file (a path or its bytes) as a vLLM item, decoded once by the processor's loader (`options`: its
    `num_frames`, `fps`, `max_frames`), the soundtrack mono at the file's own rate: the model's processor resamples
    it to its feature extractor's rate, once, as it does for `generate` (a connector does not know the model)."""
    return video_item(load_video(source, **options, sampling_rate=None))


class MMMModalAudioIO(AudioMediaIO):
    def load_base64(self, media_type: str, data: str):
        return self.load_bytes(_decoded(data))

    def load_bytes(self, data: bytes):
        self._validate_encoded_size(len(data))
        return _loaded("audio", data, lambda: read_audio(data))

    def load_file(self, filepath):
        self._validate_encoded_size(filepath.stat().st_size)
        return _loaded("audio", filepath, lambda: read_audio(str(filepath)))


class MMMModalImageIO(ImageMediaIO):
    """Decoded once, by the processor's loader: the RGB image `generate` would see (EXIF-upright, alpha over white)."""

    def load_base64(self, media_type: str, data: str):
        return self.load_bytes(_decoded(data))

    def load_bytes(self, data: bytes, source=None):
        return MediaWithBytes(_loaded("image", source or data, lambda: load_image(data)), data)

    def load_file(self, filepath):
        return self.load_bytes(filepath.read_bytes(), source=filepath)


class MMMModalVideoIO(MediaIO):
    """Decoded once, by the processor's loader (PyAV, seeking to the sampled frames), with its soundtrack; `num_frames`
    or `fps` and `max_frames` from vLLM's `--media-io-kwargs '{"video": {...}}'` (default 8 frames, as `generate`)."""

    def __init__(self, num_frames: int | None = None, fps: float | None = None, max_frames: int | None = None, **_):
        self.options = {"num_frames": num_frames, "fps": fps, "max_frames": max_frames}

    def load_base64(self, media_type: str, data: str):
        return self.load_bytes(_decoded(data))

    def load_bytes(self, data: bytes, source=None):
        return MediaWithBytes(_loaded("video", source or data, lambda: load_video_item(data, **self.options)), data)

    def load_file(self, filepath):
        return self.load_bytes(filepath.read_bytes(), source=filepath)


def _decoded(data: str) -> bytes:
    """A data URL's base64 part decoded; vLLM's own decoding says only `Non-base64 digit found`."""
    return inline_bytes(f"data:;base64,{data}")


def _loaded(kind: str, source, load):
    try:
        return load()
    except ValueError as error:
        raise ValueError(f"the {kind} {describe_media(source)} could not be used: {error}") from None


@contextmanager
def _named(url: str):
    """A refusal of the item at `url` named as the request counts it (`message 1, image 2: ...`), where known."""
    try:
        yield
    except ValueError as error:
        name = (MEDIA_NAMES.get() or {}).get(url)
        message = str(error)
        raise ValueError(f"{name}: {message}" if name else message[:1].upper() + message[1:]) from None


@MEDIA_CONNECTOR_REGISTRY.register(CONNECTOR)
class MMMModalMediaConnector(MediaConnector):
    def fetch_audio(self, audio_url: str):
        return self.load_from_url(audio_url, self._audio_io(), fetch_timeout=envs.VLLM_AUDIO_FETCH_TIMEOUT)

    async def fetch_audio_async(self, audio_url: str):
        with _named(audio_url):
            return await self.load_from_url_async(
                audio_url, self._audio_io(), fetch_timeout=envs.VLLM_AUDIO_FETCH_TIMEOUT
            )

    def fetch_image(self, image_url: str, *, image_mode: str | None = "RGB"):
        return self.load_from_url(image_url, self._image_io(image_mode), fetch_timeout=envs.VLLM_IMAGE_FETCH_TIMEOUT)

    async def fetch_image_async(self, image_url: str, *, image_mode: str | None = "RGB"):
        with _named(image_url):
            return await self.load_from_url_async(
                image_url, self._image_io(image_mode), fetch_timeout=envs.VLLM_IMAGE_FETCH_TIMEOUT
            )

    def fetch_video(self, video_url: str, *, image_mode: str | None = "RGB", video_processor: str | None = None):
        return self.load_from_url(video_url, self._video_io(), fetch_timeout=envs.VLLM_VIDEO_FETCH_TIMEOUT)

    async def fetch_video_async(self, video_url: str, *, image_mode: str | None = "RGB", video_processor=None):
        with _named(video_url):
            return await self.load_from_url_async(
                video_url, self._video_io(), fetch_timeout=envs.VLLM_VIDEO_FETCH_TIMEOUT
            )

    def _load_file_url(self, url_spec, media_io):
        try:
            return super()._load_file_url(url_spec, media_io)
        except RuntimeError as error:  # vLLM refuses a file:// URL as a server fault: a 500, which clients retry
            raise ValueError(str(error)) from None

    def _video_io(self):
        return MMMModalVideoIO(**self.media_io_kwargs.get("video", {}))

    def _audio_io(self):
        return MMMModalAudioIO(**self.media_io_kwargs.get("audio", {}))

    def _image_io(self, image_mode):
        return MMMModalImageIO(**({"image_mode": image_mode} | self.media_io_kwargs.get("image", {})))
