"""MMMModal processor: text with `<image>`/`<audio>` placeholders plus any number of media per sample.

It loads every medium (`media_mmmmodal`), runs SigLIP's image processor and Whisper's feature
extractor once per batch, and puts N slot tokens right after each opening tag, with N from the
shared slot arithmetic (`configuration_mmmmodal`); the text that follows stays as written. That
is the published layout: `<image> </image>` becomes `<image>`, N slots, `▁`, `</image>`, as the
released checkpoints were trained and run (the published code inserts the features after the
opening tag's token). The model only fills the slots. Audio longer than one Whisper window is cut
into consecutive windows whose slots follow each other after one `<audio>`, so no clip is
silently shortened.
"""

import base64
import math
import re
from pathlib import Path

import numpy as np
from transformers import AddedToken, BatchFeature, ProcessorMixin
from transformers.audio_utils import AudioInput, is_valid_audio
from transformers.image_utils import ImageInput
from transformers.processing_utils import MultiModalData, ProcessingKwargs, TextKwargs, Unpack, VideosKwargs
from transformers.tokenization_utils_base import TextInput
from transformers.video_utils import is_valid_video

from .configuration_mmmmodal import (
    AUDIO_END_TOKEN,
    AUDIO_SLOT_TOKEN,
    AUDIO_START_TOKEN,
    IMAGE_END_TOKEN,
    IMAGE_SLOT_TOKEN,
    IMAGE_START_TOKEN,
    MEDIA_INPUT_NAMES,
    num_audio_slots,
    num_image_slots,
    num_real_audio_slots,
    whisper_encoder_frames,
)
from .media_mmmmodal import (
    DEFAULT_MAX_IMAGE_PIXELS,
    MediaTooLargeError,
    describe_media,
    load_audio,
    load_image,
    load_video,
)

# The released models' chat format (Mistral-Instruct, media as the published data's tags), in the file
# transformers saves a processor's template to: a saved folder's processor reads that folder's copy.
_TEMPLATE_FILE = Path(__file__).with_name("chat_template.jinja")
DEFAULT_CHAT_TEMPLATE = _TEMPLATE_FILE.read_text(encoding="utf-8") if _TEMPLATE_FILE.is_file() else None

# `<image>`, `<image></image>` and `<image> </image>` each stand for one image (same for audio); the last is what
# the chat template writes for a media block and what the published data holds. `<video>` stands for a video, which
# the processor writes as its frames and soundtrack pieces with the published tags (it never reaches the tokenizer).
VIDEO_PLACEHOLDER = "<video>"
PLACEHOLDER_RE = re.compile(
    r"(?P<image><image>(?:\s*</image>)?)|(?P<audio><audio>(?:\s*</audio>)?)|(?P<video><video>)"
    r"|(?P<stray></image>|</audio>)"
)
MEDIA_PLACEHOLDERS = {
    "image": f"{IMAGE_START_TOKEN} {IMAGE_END_TOKEN}",
    "audio": f"{AUDIO_START_TOKEN} {AUDIO_END_TOKEN}",
    "video": VIDEO_PLACEHOLDER,
}


class EncodedMedium:
    """In place of an image or clip whose features the model already holds (a chat's KV cache) or that is only
    measured: the processor writes its `slots` into the text and returns no features for it. (Not a dataclass:
    transformers turns those in a conversation into dicts.)"""

    __slots__ = ("slots",)

    def __init__(self, slots: int):
        self.slots = slots

    def __repr__(self) -> str:
        return f"EncodedMedium(slots={self.slots})"


def placeholder_kinds(text: str) -> list[str]:
    """ "image", "audio" or "video" for each medium `text` holds, in order (a stray closing tag stands for none)."""
    return [match.lastgroup for match in PLACEHOLDER_RE.finditer(text) if match.lastgroup != "stray"]


_LONG_AUDIO_POLICIES = ("chunk", "truncate", "error")
# How videos are read: the keywords `__call__` takes for them (`MMMModalVideosKwargs`), also through the chat template.
VIDEO_OPTIONS = ("num_frames", "fps", "max_frames", "load_audio_from_video", "pool_frames", "do_sample_frames")
_SOURCE_KEYS = ("path", "url", "base64")  # where a media content block holds its medium, beside its type's own key
# The tag and slot tokens, under the names `MMMModalConfig` gives their ids.
_TOKENS = {
    "image_start_token_id": IMAGE_START_TOKEN,
    "image_end_token_id": IMAGE_END_TOKEN,
    "audio_start_token_id": AUDIO_START_TOKEN,
    "audio_end_token_id": AUDIO_END_TOKEN,
    "image_token_id": IMAGE_SLOT_TOKEN,
    "audio_token_id": AUDIO_SLOT_TOKEN,
}


_OWN_KEYWORDS = ("skip_bad_samples", "return_text_replacement_offsets", "return_mm_token_type_ids")


class MMMModalTextKwargs(TextKwargs, total=False):
    """The tokenizer's keywords and the processor's own three (with the text's: transformers 5.19 takes no flat
    processor keywords)."""

    skip_bad_samples: bool
    return_text_replacement_offsets: bool
    return_mm_token_type_ids: bool


class MMMModalVideosKwargs(VideosKwargs, total=False):
    """How videos are read: transformers' `num_frames` or `fps`, and the processor's `max_frames`,
    `load_audio_from_video` (default True: a video's soundtrack, where it has one, follows its frames) and
    `pool_frames` (default False: each frame fills a quarter of an image's slots, `pooled_images`; not what the
    released checkpoints saw)."""

    max_frames: int
    load_audio_from_video: bool
    pool_frames: bool


class MMMModalProcessorKwargs(ProcessingKwargs, total=False):
    """The call's keywords: the sub-processors' (nested as `text_kwargs` / `images_kwargs` / `audio_kwargs`, or
    flat), merged with their saved defaults as every transformers processor merges them."""

    text_kwargs: MMMModalTextKwargs
    videos_kwargs: MMMModalVideosKwargs
    _defaults = {"text_kwargs": {"padding": True, "padding_side": "left"}}  # left: ready for batched generation


class MMMModalProcessor(ProcessorMixin):
    r"""
    Wraps a SigLIP image processor (any size: slots follow the resized grid), a Whisper feature extractor
    (its `chunk_length` is one audio window) and the language model's tokenizer, to which missing tags and
    slot tokens are added (`len(processor.tokenizer)` is the vocabulary the model needs).

    chat_template: defaults to the Mistral-Instruct format of the released models (`chat_template.jinja`).
    patch_size, audio_conv_kernel, audio_conv_stride: slots per image and audio window; as in the model's config.
    long_audio: a clip longer than one window is cut into consecutive windows ("chunk", the default), keeps
        its first ("truncate", as the published code did), or is refused ("error").
    max_audio_seconds: the most audio of one sample, all its clips together (None: no limit), checked
        before anything is encoded. max_image_pixels: larger images are refused from their header, before
        decoding (decompression bombs; None lifts the limit).
    trim_audio_padding: each window gets only the slots whose projector window starts in real audio
        (`num_real_audio_slots`); as the model config's flag of the same name.

    `image_token` / `audio_token` are the placeholders text holds (`<image>`, `<audio>`); `image_token_id` /
    `audio_token_id` the slot tokens each is expanded into, which the model fills.
    """

    valid_processor_kwargs = MMMModalProcessorKwargs

    def __init__(
        self,
        image_processor=None,
        feature_extractor=None,
        tokenizer=None,
        chat_template=None,
        patch_size: int = 16,
        audio_conv_kernel: int = 40,
        audio_conv_stride: int = 3,
        long_audio: str = "chunk",
        max_audio_seconds: float | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        trim_audio_padding: bool = True,
        **kwargs,
    ):
        if long_audio not in _LONG_AUDIO_POLICIES:
            raise ValueError(f"long_audio must be one of {_LONG_AUDIO_POLICIES}; got {long_audio!r}")
        self.patch_size, self.long_audio, self.max_audio_seconds = patch_size, long_audio, max_audio_seconds
        self.audio_conv_kernel, self.audio_conv_stride = audio_conv_kernel, audio_conv_stride
        self.max_image_pixels, self.trim_audio_padding = max_image_pixels, trim_audio_padding
        _add_media_tokens(tokenizer)
        self.image_token, self.audio_token, self.video_token = IMAGE_START_TOKEN, AUDIO_START_TOKEN, VIDEO_PLACEHOLDER
        for name, token in _TOKENS.items():
            setattr(self, name, tokenizer.convert_tokens_to_ids(token))
        super().__init__(
            image_processor, feature_extractor, tokenizer, chat_template=chat_template or DEFAULT_CHAT_TEMPLATE
        )

    @property
    def special_token_ids(self) -> dict[str, int]:
        """The slot and tag ids, keyed as `MMMModalConfig` names them: `MMMModalConfig(..., **these)`."""
        return {name: getattr(self, name) for name in _TOKENS}

    @property
    def audio_slots_per_window(self) -> int:
        """Slots one Whisper window fills (487 for 30 s with the published projector)."""
        frames = whisper_encoder_frames(self.feature_extractor.nb_max_frames)
        return num_audio_slots(frames, self.audio_conv_kernel, self.audio_conv_stride)

    def num_image_slots(self, height: int, width: int, pooled: bool = False) -> int:
        """Slots for one image of `height` x `width` pixels after the image processor (576 for 384 px; 144 pooled)."""
        return num_image_slots(int(height), int(width), self.patch_size, pooled)

    def num_window_slots(self, num_real_mel_frames: int) -> int:
        """Slots one window gets: all of them, or with `trim_audio_padding` those that start in real audio."""
        slots, stride = self.audio_slots_per_window, self.audio_conv_stride
        return num_real_audio_slots(num_real_mel_frames, slots, stride) if self.trim_audio_padding else slots

    def num_audio_windows(self, num_samples: int) -> int:
        """Whisper windows a clip of `num_samples` (at the feature extractor's rate) is cut into."""
        return max(1, math.ceil(num_samples / self.feature_extractor.n_samples)) if self.long_audio == "chunk" else 1

    def num_clip_slots(self, num_samples: int, real_only: bool = False) -> int:
        """Slots a clip of `num_samples` fills: each window's, from its real mel frames (one per hop begun).
        `real_only`: only the slots that start in real audio, as `trim_audio_padding` keeps."""
        window, hop = self.feature_extractor.n_samples, self.feature_extractor.hop_length
        slots, stride = self.audio_slots_per_window, self.audio_conv_stride
        per_window = (lambda real: num_real_audio_slots(real, slots, stride)) if real_only else self.num_window_slots
        windows = range(self.num_audio_windows(num_samples))
        return sum(per_window(-(-min(window, num_samples - i * window) // hop)) for i in windows)

    def __call__(
        self,
        text: TextInput | list[TextInput] | None = None,
        images: ImageInput | None = None,
        audio: AudioInput | None = None,
        audios: AudioInput | None = None,
        videos=None,
        **kwargs: Unpack[MMMModalProcessorKwargs],
    ) -> BatchFeature:
        """`input_ids`, `attention_mask`, and where media are given `pixel_values`, `input_features`, `input_features_mask`.

        text: a string or a list of them, with `<image>` / `<audio>` placeholders matched in order to the
            sample's media: images / audio (or `audios`), per sample (`[[a, b], [c]]`) or flat in placeholder
            order; an `EncodedMedium` in place of a medium gets its slots and no features. sampling_rate: of audio
            given as bare arrays (files carry their own).
        videos: for `<video>` placeholders, as media are given: files, URLs, bytes, frames (`media_mmmmodal.load_video`).
            Each becomes its frames in time order, each frame an image and, with its soundtrack, followed by the sound
            up to the next frame (`num_frames` or `fps`, `max_frames`, `load_audio_from_video`, `pool_frames`).
        Keywords go to the tokenizer (`padding=True`, `padding_side="left"` for generation, "right" for training;
            the tokenizer's saved side is not taken), the image processor (`rescale_factor`, `size`, ...) and the
            feature extractor (not `padding`/`max_length`/`truncation`: each window is one Whisper window).
        `video_layouts` (an attribute): each video's (frame slots, soundtrack piece slots) per frame, in order.
        skip_bad_samples: drop an unusable sample instead of raising; `kept_samples` are the indices of the
            rows, `skipped_samples` lists `{"sample": index, "error": message}`. A flat media list that does
            not match the batch's placeholders still raises.
        """
        own = {key: kwargs.pop(key, False) for key in _OWN_KEYWORDS}
        saved = {key: value for key, value in self.tokenizer.init_kwargs.items() if key != "padding_side"}
        merged = self._merge_kwargs(MMMModalProcessorKwargs, tokenizer_init_kwargs=saved, **kwargs)
        text_kwargs, images_kwargs, audio_kwargs, videos_kwargs = (
            merged[f"{kind}_kwargs"] for kind in ("text", "images", "audio", "videos")
        )
        skip_bad_samples, return_text_replacement_offsets, return_mm_token_type_ids = (
            text_kwargs.pop(key, own[key]) for key in own
        )
        return_tensors = text_kwargs.pop("return_tensors", None)
        pool_frames = bool(videos_kwargs.pop("pool_frames", False))
        sampling_rate = audio_kwargs.pop("sampling_rate", None)
        if audios is not None and audio is not None:
            raise ValueError("Pass audio as `audio=` or `audios=`, not both.")
        audio = audios if audios is not None else audio
        if not isinstance(text, (str, list, tuple)):
            raise ValueError("MMMModalProcessor needs `text` (a string or a list of them) with one <image>/<audio> "
                             f"placeholder per medium; got {type(text).__name__}.")  # fmt: skip
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("MMMModalProcessor got an empty batch (no text).")
        read = [self._read_text(index, sample) for index, sample in enumerate(texts)]
        placeholders = [matches for matches, _ in read]
        problems = {index: problem for index, (_, problem) in enumerate(read) if problem}
        if problems and not skip_bad_samples:  # said before the media are matched to placeholders it has none of
            raise ValueError(problems[min(problems)])
        per_kind = {
            kind: _assign_media(media, [[m for m in p if m.lastgroup == kind] for p in placeholders], kind, problems)
            for kind, media in (("image", images), ("audio", audio), ("video", videos))
        }
        loaded = {}
        for index in range(len(texts)):
            try:
                if index in problems:
                    raise ValueError(problems[index])
                loaded[index] = self._load_sample(
                    index, placeholders[index], *(per_kind[kind][index] for kind in ("image", "audio", "video")),
                    sampling_rate, videos_kwargs,
                )  # fmt: skip
            except ValueError as error:
                if not skip_bad_samples:
                    raise
                problems[index] = str(error)
        kept = [index for index in range(len(texts)) if index not in problems]
        if not kept:
            raise ValueError("Every sample of the batch is unusable:\n" + "\n".join(problems.values()))

        data, image_slots = self._encode_images([loaded[i][0] for i in kept], images_kwargs, return_tensors)
        audio_data, audio_slots = self._encode_audio([loaded[i][1] for i in kept], audio_kwargs)
        image_slots, audio_slots, named = iter(image_slots), iter(audio_slots), {"image": [], "audio": [], "video": []}
        pool_frames = pool_frames and "pixel_values" in data
        pooled = self.num_image_slots(*data["pixel_values"].shape[-2:], pooled=True) if pool_frames else None
        videos_of, pooled_rows = {index: [] for index in kept}, []  # each sample's videos with their layouts; rows
        for sample, (kind, medium) in ((index, medium) for index in kept for medium in loaded[index][2]):
            if kind == "video":  # in placeholder order
                named["video"].append(self._video_layout(medium, image_slots, audio_slots, pooled))
                videos_of[sample].append((medium, named["video"][-1]))
                pooled_rows += [pool_frames for frame in medium.frames if not isinstance(frame, EncodedMedium)]
            else:
                named[kind].append(next(image_slots if kind == "image" else audio_slots))
                pooled_rows += [False] * (kind == "image" and not isinstance(medium, EncodedMedium))
        expanded, offsets = self.get_text_with_replacements(  # transformers' expansion, through the hooks below
            [texts[i] for i in kept],
            [self.replace_image_token({"slots": named["image"]}, index) for index in range(len(named["image"]))],
            [self.replace_video_token({"layouts": named["video"]}, index) for index in range(len(named["video"]))],
            [self.replace_audio_token({"slots": named["audio"]}, index) for index in range(len(named["audio"]))],
        )
        mask_asked = text_kwargs.pop("return_attention_mask", None) is not False  # the fit check below counts by it
        data = {**self._tokenize(expanded, text_kwargs), **data, **audio_data}
        for row, index in enumerate(kept):
            self._check_videos_fit(index, videos_of[index], sum(data["attention_mask"][row]), pool_frames)
            self._check_media_whole(index, expanded[row], data["input_ids"][row])
        data = data if mask_asked else {key: value for key, value in data.items() if key != "attention_mask"}
        if pool_frames:
            data["pooled_images"] = np.array(pooled_rows)
        if return_text_replacement_offsets:
            data["text_replacement_offsets"] = offsets
        if return_mm_token_type_ids:  # transformers' modality per position: 1 an image's (or frame's) slot, 3 audio's
            kinds = {self.image_token_id: 1, self.audio_token_id: 3}
            data["mm_token_type_ids"] = [[kinds.get(int(i), 0) for i in row] for row in data["input_ids"]]
        batch = BatchFeature(data, tensor_type=return_tensors, skip_tensor_conversion=["text_replacement_offsets"])
        batch.video_layouts = named["video"]  # per video kept, per frame: (its slots, its soundtrack piece's slots)
        if skip_bad_samples:
            batch.kept_samples = kept
            batch.skipped_samples = [{"sample": index, "error": problems[index]} for index in sorted(problems)]
        return batch

    def _tokenize(self, texts: list[str], text_kwargs: dict):
        """The tokenizer's encoding, its special tokens added only to texts that do not already start with BOS.

        A plain prompt gets what `tokenizer(prompt)` adds (`<s>`); one that starts with `<s>` (as the
        chat template renders it) gets no second. transformers' `apply_chat_template` decides this for
        a whole batch; here it is decided per text, so a batch may mix both kinds.
        """
        add_special_tokens, padding = text_kwargs.pop("add_special_tokens", True), text_kwargs.pop("padding", True)
        padding_side = text_kwargs.pop("padding_side", "left")
        bos = self.tokenizer.bos_token
        has_bos = [bool(add_special_tokens and bos and text.startswith(bos)) for text in texts]
        if not any(has_bos) or all(has_bos):
            special = add_special_tokens and not all(has_bos)
            return self.tokenizer(
                texts, padding=padding, padding_side=padding_side, add_special_tokens=special, **text_kwargs
            )
        # A mixed batch: each text alone, then padded together.
        rows = [self.tokenizer(t, add_special_tokens=not starts, **text_kwargs) for t, starts in zip(texts, has_bos)]
        merged = {key: [row[key] for row in rows] for key in rows[0]}
        pad_kwargs = {key: text_kwargs[key] for key in ("max_length", "pad_to_multiple_of") if key in text_kwargs}
        return self.tokenizer.pad(merged, padding=padding, padding_side=padding_side, **pad_kwargs)

    def _load_sample(self, index, matches, images, clips, videos, sampling_rate, videos_kwargs) -> tuple:
        """A sample's media decoded: what the image processor sees (images and video frames) and the feature
        extractor (clips and soundtracks), each in placeholder order, and each placeholder's (kind, medium)."""
        media = {
            "image": iter(self._load_images(index, images)),
            "audio": iter(self._load_audio(index, clips, sampling_rate)),
            "video": iter(self._load_videos(index, videos, videos_kwargs)),
        }
        visual, sound, named = [], [], []
        for kind in (match.lastgroup for match in matches):
            named.append((kind, next(media[kind])))
            medium = named[-1][1]
            visual += [medium] if kind == "image" else medium.frames if kind == "video" else []
            sound += [medium] if kind == "audio" else [medium.soundtrack] if kind == "video" else []
        sound = [clip for clip in sound if clip is not None]
        seconds = (
            sum(len(clip) for clip in sound if not isinstance(clip, EncodedMedium))
            / self.feature_extractor.sampling_rate
        )
        if self.max_audio_seconds is not None and videos and seconds > self.max_audio_seconds:
            raise MediaTooLargeError(f"Sample {index + 1}: its audio and its videos' soundtracks last {seconds:.1f} s, "
                                     f"more than max_audio_seconds={self.max_audio_seconds:g}.")  # fmt: skip
        return visual, sound, named

    def _load_videos(self, index: int, items: list, videos_kwargs: dict) -> list:
        options = {
            "num_frames": videos_kwargs.get("num_frames"), "fps": videos_kwargs.get("fps"),
            "max_frames": videos_kwargs.get("max_frames"),
            "load_audio_from_video": videos_kwargs.get("load_audio_from_video", True),
            "sampling_rate": self.feature_extractor.sampling_rate, "max_pixels": self.max_image_pixels,
            "sample_frames": videos_kwargs.get("do_sample_frames") is not False,
        }  # fmt: skip
        loaded = []
        for position, item in enumerate(items):
            try:
                loaded.append(load_video(item, **options))
            except ValueError as error:  # a MediaError of the problem's type, kept as the item is named
                raise type(error)(
                    f"Sample {index + 1}, video {position + 1} ({describe_media(item)}): {error}"
                ) from error
        return loaded

    def _video_layout(self, video, image_slots, audio_slots, pooled: int | None) -> list[tuple[int, int]]:
        """(frame slots, soundtrack piece slots) per frame: piece k holds the soundtrack's slots that start between
        frame k and frame k + 1 (the first from the start, the last to the end); the soundtrack is one clip. A frame
        fills `pooled` slots where frames are pooled."""
        frames = [pooled or slots for slots in (next(image_slots) for _ in video.frames)]
        if video.soundtrack is None:
            return [(slots, 0) for slots in frames]
        rate, total = self.feature_extractor.sampling_rate, next(audio_slots)
        cuts = [self.num_clip_slots(min(len(video.soundtrack), round(time * rate)), True) for time in video.times[1:]]
        bounds = [0, *(min(cut, total) for cut in cuts), total]
        return [(slots, end - start) for slots, start, end in zip(frames, bounds, bounds[1:])]

    def _check_media_whole(self, index: int, text: str, ids) -> None:
        """A sample whose media the tokenizer's `truncation` cut into is refused here, naming it (the model would find
        fewer slots than features), as transformers' processors refuse it."""
        for kind, token in (("image", IMAGE_SLOT_TOKEN), ("audio", AUDIO_SLOT_TOKEN)):
            kept, written = list(ids).count(getattr(self, f"{kind}_token_id")), text.count(token)
            if kept != written:
                raise ValueError(f"Sample {index + 1}: truncation cut into its media ({kept} of its {written} {kind} "
                                 "slots are left); give a larger `max_length`, or leave `truncation` off.")  # fmt: skip

    def _check_videos_fit(self, index: int, videos: list, positions: int, pooled: bool) -> None:
        """A sample with videos longer than the context (the tokenizer's `model_max_length`, where it is set) is
        refused before any encoder runs, naming its videos and the frame count that would fit. A frame costs its
        slots and 4 positions of tags and line, a soundtrack piece the same; the soundtrack's slots stay whole."""
        context = self.tokenizer.model_max_length
        if not videos or positions <= context or context >= 10**9:
            return
        spans = [sum(slots + 4 for pair in layout for slots in pair if slots) for _, layout in videos]
        pieces = sum(piece for _, layout in videos for _, piece in layout)
        per_frame = sum(layout[0][0] + 4 + 4 * (video.soundtrack is not None) for video, layout in videos)
        fits = max(0, (context - (positions - sum(spans)) - pieces) // per_frame)
        sound = {True: " + soundtrack", False: ""}
        named = [f"video {n + 1} ({video.duration:.1f} s, {len(video.frames)} frames{sound[video.soundtrack is not None]}"
                 f": {span} positions)" for n, ((video, _), span) in enumerate(zip(videos, spans))]  # fmt: skip
        advice = f"num_frames={fits} (or max_frames={fits} with fps) would fit" if fits else "no frame count fits"
        pool = "" if pooled else ", pool_frames=True a quarter of each frame's slots (unlike released training)"
        raise ValueError(f"Sample {index + 1} needs {positions} positions, more than the context of {context}: "
                         f"{', '.join(named)}. {advice}; load_audio_from_video=False takes fewer{pool}.")  # fmt: skip

    def load_videos(self, videos=(), **videos_kwargs) -> list:
        """Decode videos once, checked and named as `__call__` does (`media_mmmmodal.Video`s, which it takes again)."""
        return self._load_videos(0, media_list(videos, "video"), videos_kwargs)

    def load_media(self, images=(), audio=(), sampling_rate: int | None = None) -> tuple[list, list]:
        """Decode media once, checked as `__call__` checks them: PIL images and waveforms at the feature extractor's
        rate, which `__call__` takes again without decoding (clips with `sampling_rate` of the feature extractor)."""
        images, audio = media_list(images, "image"), media_list(audio, "audio")
        return self._load_images(0, images), self._load_audio(0, audio, sampling_rate)

    def _read_text(self, index: int, text) -> tuple[list[re.Match], str | None]:
        """The sample's placeholders, and what is wrong with its text (None when nothing is)."""
        if not isinstance(text, str):
            return [], f"Sample {index + 1}: text must be a string; got {type(text).__name__}."
        matches = list(PLACEHOLDER_RE.finditer(text))
        if not text.strip():
            return matches, f"Sample {index + 1}: the text is empty."
        for slot_token in (IMAGE_SLOT_TOKEN, AUDIO_SLOT_TOKEN):
            if slot_token in text:
                return matches, (
                    f"Sample {index + 1}: the text already holds {slot_token} tokens; write one <image> or "
                    "<audio> placeholder per medium and let the processor expand it."
                )
        for match in matches:
            if match.lastgroup == "stray":
                return matches, (
                    f"Sample {index + 1}: '{match.group()}' at character {match.start()} closes a medium that was "
                    "never opened; write `<image> </image>` or `<audio> </audio>` (or just `<image>`/`<audio>`)."
                )
        return [m for m in matches if m.lastgroup != "stray"], None

    def _load_images(self, index: int, items: list) -> list:
        loaded = []
        for position, item in enumerate(items):
            try:
                encoded = isinstance(item, EncodedMedium)  # kept: its slots are all the text needs
                loaded.append(item if encoded else load_image(item, max_pixels=self.max_image_pixels))
            except ValueError as error:  # a MediaError of the problem's type, kept as the item is named
                where = f"Sample {index + 1}, image {position + 1} ({describe_media(item)})"
                raise type(error)(f"{where}: {error}") from error
        return loaded

    def _load_audio(self, index: int, items: list, sampling_rate: int | None) -> list[np.ndarray]:
        """Each clip as a mono waveform at the extractor's rate, length limits checked."""
        extractor = self.feature_extractor
        waveforms, seconds = [], 0.0
        for position, item in enumerate(items):
            if isinstance(item, EncodedMedium):
                waveforms.append(item)
                continue
            where = f"Sample {index + 1}, audio {position + 1} ({describe_media(item)})"
            try:
                waveform = load_audio(item, extractor.sampling_rate, sampling_rate)
            except ValueError as error:
                raise type(error)(f"{where}: {error}") from error
            duration = waveform.shape[0] / extractor.sampling_rate
            if self.long_audio == "error" and waveform.shape[0] > extractor.n_samples:
                raise MediaTooLargeError(
                    f"{where}: the clip lasts {duration:.1f} s, longer than "
                    f"one {extractor.chunk_length} s window, and long_audio='error'."
                )
            seconds += duration
            if self.max_audio_seconds is not None and seconds > self.max_audio_seconds:
                raise MediaTooLargeError(
                    f"Sample {index + 1}: its audio lasts {seconds:.1f} s up to and including audio {position + 1}, "
                    f"more than max_audio_seconds={self.max_audio_seconds:g}."
                )
            waveforms.append(waveform)
        return waveforms

    def _encode_images(self, sample_images, images_kwargs, return_tensors):
        """Every loaded image of the batch through the image processor in one call; an `EncodedMedium` keeps its slots."""
        items = [image for images in sample_images for image in images]
        loaded = [image for image in items if not isinstance(image, EncodedMedium)]
        if not loaded:
            return {}, [image.slots for image in items]
        tensor_type = "pt" if return_tensors == "pt" else "np"
        images_kwargs = {key: value for key, value in images_kwargs.items() if key != "return_tensors"}
        pixel_values = self.image_processor(loaded, return_tensors=tensor_type, **images_kwargs)["pixel_values"]
        slots = self.num_image_slots(*(int(side) for side in pixel_values.shape[-2:]))
        return {"pixel_values": pixel_values}, [getattr(image, "slots", slots) for image in items]

    def _encode_audio(self, sample_audio, audio_kwargs: dict):
        """Cut every waveform into Whisper windows and extract all windows in one call (each padded to a window:
        `padding`, `max_length`, `truncation` are the windows', not the call's)."""
        extractor, size = self.feature_extractor, self.feature_extractor.n_samples
        items = [waveform for waveforms in sample_audio for waveform in waveforms]
        slots = [clip.slots if isinstance(clip, EncodedMedium) else self.num_clip_slots(len(clip)) for clip in items]
        clips = [clip for clip in items if not isinstance(clip, EncodedMedium)]
        windows = [clip[i * size : (i + 1) * size] for clip in clips for i in range(self.num_audio_windows(len(clip)))]
        if not windows:
            return {}, slots
        settings = {k: v for k, v in audio_kwargs.items() if k not in ("padding", "max_length", "truncation")}
        settings.update(padding="max_length", return_attention_mask=True, return_tensors="np")
        features = extractor(windows, sampling_rate=extractor.sampling_rate, **settings)
        # Whisper calls its frame mask `attention_mask`; renamed so it never collides with the text mask.
        frame_mask = np.asarray(features["attention_mask"], dtype=np.int64)
        features = np.asarray(features["input_features"], dtype=np.float32)
        return {"input_features": features, "input_features_mask": frame_mask}, slots

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        """What an image's `<image>` becomes: the tag, then its slots (`image_inputs["slots"]`, one count per image);
        the rest of `<image> </image>` stays as written."""
        return IMAGE_START_TOKEN + IMAGE_SLOT_TOKEN * image_inputs["slots"][image_idx]

    def replace_audio_token(self, audio_inputs: dict, audio_idx: int, **kwargs) -> str:
        """What a clip's `<audio>` becomes: the tag, then the slots of all its windows."""
        return AUDIO_START_TOKEN + AUDIO_SLOT_TOKEN * audio_inputs["slots"][audio_idx]

    def replace_video_token(self, video_inputs: dict, video_idx: int, **kwargs) -> str:
        """What a video's `<video>` becomes: each frame as a published image, each followed by its soundtrack piece
        as a published clip (`video_inputs["layouts"]`: (frame slots, piece slots) per frame), one per line."""
        image, audio = f"{IMAGE_START_TOKEN}{{}} {IMAGE_END_TOKEN}", f"{AUDIO_START_TOKEN}{{}} {AUDIO_END_TOKEN}"
        parts = [(image.format(IMAGE_SLOT_TOKEN * frame), audio.format(AUDIO_SLOT_TOKEN * piece) if piece else None)
                 for frame, piece in video_inputs["layouts"][video_idx]]  # fmt: skip
        return "\n".join(part for pair in parts for part in pair if part)

    def _get_num_multimodal_tokens(self, image_sizes=None, audio_lengths=None, **kwargs) -> MultiModalData:
        """Slots per medium before any is processed, as serving engines (vLLM) ask: every image is resized
        to the processor's size or the call's (`image_sizes` do not matter); `audio_lengths` are samples per clip."""
        size = (kwargs.get("images_kwargs") or {}).get("size") or kwargs.get("size") or self.image_processor.size
        counts = {}
        if image_sizes is not None:
            counts["num_image_tokens"] = [self.num_image_slots(size["height"], size["width"])] * len(image_sizes)
            counts["num_image_patches"] = [1] * len(image_sizes)
        if audio_lengths is not None:
            counts["num_audio_tokens"] = [self.num_clip_slots(length) for length in audio_lengths]
        return MultiModalData(**counts)

    def apply_chat_template(self, conversation, *args, **kwargs):
        """transformers' `apply_chat_template`; with `tokenize=True` every medium reaches `__call__` as the user gave
        it (base64 decoded), to be loaded with its errors: transformers would load audio itself (with librosa), and
        a video's soundtrack (`load_audio_from_video`, which `__call__` takes, as `num_frames`, `fps`, `max_frames`)."""
        first = conversation[0] if isinstance(conversation, (list, tuple)) and conversation else None
        is_batched = isinstance(first, (list, tuple))
        if not hasattr(first, "messages"):  # conversation objects: transformers reads their `messages`
            for number, messages in enumerate(conversation if is_batched else [conversation], start=1):
                _check_messages(messages, number if is_batched else None)
        if not kwargs.get("tokenize"):
            return super().apply_chat_template(conversation, *args, **kwargs)
        conversations, audio = [], []
        for messages in conversation if is_batched else [conversation]:
            audio.append([])
            conversations.append([_with_media_sources_taken(message, audio[-1]) for message in messages])
        processor_kwargs = {**(kwargs.pop("processor_kwargs", None) or {}), "audios": audio if any(audio) else None}
        for key in VIDEO_OPTIONS:  # read by `__call__`
            if kwargs.get(key) is not None:
                processor_kwargs[key] = kwargs.pop(key)
        conversation = conversations if is_batched else conversations[0]
        return super().apply_chat_template(conversation, *args, processor_kwargs=processor_kwargs, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", *MEDIA_INPUT_NAMES["image"], *MEDIA_INPUT_NAMES["audio"]]


def _check_messages(messages, batch_number: int | None = None) -> None:
    """A conversation's shape, named where it is wrong (transformers would stop with a bare KeyError or IndexError).
    Messages and blocks may be dicts or objects with the same fields, as transformers takes them."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"A conversation must be a non-empty list of messages; got {str(messages)[:80]}.")
    for number, message in enumerate(messages, start=1):
        name = f"Conversation {batch_number}, message {number}" if batch_number else f"Message {number}"
        content = _field(message, "content")
        if not isinstance(_field(message, "role"), str):
            problem = f"must be a dict with a 'role' and a 'content'; got {str(message)[:80]}"
        elif content is not None and not isinstance(content, (str, list)):
            problem = f"'content' must be a string or a list of content blocks; got {type(content).__name__}"
        elif isinstance(content, list) and (untyped := [b for b in content if not isinstance(_field(b, "type"), str)]):
            position = content.index(untyped[0]) + 1
            problem = f"block {position} needs a 'type' (text, image, audio or video); got {str(untyped[0])[:60]}"
        else:
            continue
        raise ValueError(f"{name}: {problem}.")


def _field(item, key: str):
    return item.get(key) if isinstance(item, dict) else getattr(item, key, None)


def _with_media_sources_taken(message: dict, clips: list) -> dict:
    """A copy of `message` whose image and video blocks hold their source under "image" / "video" (base64 decoded)
    and whose audio blocks hold none: each clip's source goes to `clips`, for `__call__`. transformers (5.19 to
    5.25) passes an "image" and a "video" on unread."""
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return message
    content = []
    for block in message["content"]:
        kind = block.get("type")
        if kind in MEDIA_PLACEHOLDERS:
            source, block = block_source(block), {k: v for k, v in block.items() if k not in (kind, *_SOURCE_KEYS)}
            if kind == "audio":
                clips.append(source)
            else:
                block[kind] = source
        content.append(block)
    return {**message, "content": content}


def block_source(block: dict):
    """The medium an image, audio or video content block holds: under its type, "path", "url" or "base64" (decoded,
    a data URL's too), as the chat template and training rows take them."""
    kind = block["type"]
    key = next((key for key in (kind, *_SOURCE_KEYS) if block.get(key) is not None), None)
    if key is None:
        article = "A" if kind == "video" else "An"
        raise ValueError(f"{article} {kind} block needs one of '{kind}', 'path', 'url' or 'base64'; got {block}.")
    return base64.b64decode(block[key].split(",")[-1]) if key == "base64" else block[key]


def _add_media_tokens(tokenizer) -> None:
    """Add whichever of the four tags and two slot tokens the tokenizer lacks, as special tokens."""
    if tokenizer.pad_token is None:
        # Llama/Mistral tokenizers ship without one; <unk> never appears in real text.
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    vocabulary = tokenizer.get_vocab()
    missing = [token for token in _TOKENS.values() if token not in vocabulary]
    if missing:
        tokens = [AddedToken(token, special=True, normalized=False) for token in missing]
        tokenizer.add_tokens(tokens, special_tokens=True)


def _same_number(kind: str) -> str:
    """The rule a count mismatch breaks, in the words of transformers' processors."""
    return f" (the number of <{kind}> tokens in the prompts should be the same as the number of {kind} inputs passed)."


def is_media_list(item, kind: str) -> bool:
    """Whether `item` is a list of `kind` media as transformers reads them: a 4-D array is a list of images and a 5-D
    one of videos, while a list of frames (PIL images or 3-D arrays) is one video and a list of floats one clip."""
    if getattr(item, "ndim", None) == {"image": 4, "video": 5}.get(kind, -1):
        return True
    one_medium = {"video": is_valid_video, "audio": is_valid_audio}.get(kind)
    return isinstance(item, (list, tuple)) and not (one_medium and item and one_medium(item))


def media_list(media, kind: str) -> list:
    """`media` given for `kind` (None, one medium or a list of them) as a list of media."""
    return [] if media is None else list(media) if is_media_list(media, kind) else [media]


def _assign_media(media, placeholders_per_sample, kind: str, problems: dict[int, str]) -> list[list]:
    """Give each sample its media: per-sample lists are checked, a flat list is dealt out in placeholder order.

    A per-sample count mismatch is that sample's problem (recorded in `problems`); a flat list that
    does not match the batch's placeholders cannot be attributed to one sample and raises.
    """
    counts = [len(p) for p in placeholders_per_sample]
    media = media_list(media, kind)
    if media and all(is_media_list(m, kind) for m in media):
        if len(media) != len(counts):
            raise ValueError(
                f"{kind.capitalize()}s were given for {len(media)} samples, but the text holds {len(counts)} samples"
                + _same_number(kind)
            )
        for index, (count, items) in enumerate(zip(counts, media)):
            if count != len(items) and index not in problems:
                problems[index] = (
                    f"Sample {index + 1} has {count} <{kind}> placeholder(s) but {len(items)} {kind}(s) were given for it."
                )
        return [list(items) for items in media]
    assigned, cursor = [], 0
    for index, count in enumerate(counts):
        if cursor + count > len(media):
            raise ValueError(
                f"Sample {index + 1} has {count} <{kind}> placeholder(s) but only {len(media) - cursor} of the "
                f"{len(media)} {kind}(s) given are left for it" + _same_number(kind)
            )
        assigned.append(media[cursor : cursor + count])
        cursor += count
    if cursor != len(media):
        raise ValueError(
            f"{len(media)} {kind}(s) were given but the text holds only {cursor} <{kind}> placeholder(s); "
            f"{kind} {cursor + 1} and after have no place" + _same_number(kind)
        )
    return assigned


MMMModalProcessor.register_for_auto_class()

__all__ = [
    "MMMModalProcessor",
    "DEFAULT_CHAT_TEMPLATE",
    "EncodedMedium",
    "MEDIA_PLACEHOLDERS",
    "PLACEHOLDER_RE",
    "VIDEO_OPTIONS",
    "VIDEO_PLACEHOLDER",
    "block_source",
    "media_list",
    "placeholder_kinds",
]
