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

import math
import re

import numpy as np
from transformers import AddedToken, BatchFeature, ProcessorMixin

from .configuration_mmmmodal import (
    AUDIO_END_TOKEN,
    AUDIO_SLOT_TOKEN,
    AUDIO_START_TOKEN,
    IMAGE_END_TOKEN,
    IMAGE_SLOT_TOKEN,
    IMAGE_START_TOKEN,
    num_audio_slots,
    num_image_slots,
    num_real_audio_slots,
    whisper_encoder_frames,
)
from .media_mmmmodal import DEFAULT_MAX_IMAGE_PIXELS, describe_media, load_audio, load_image

# Mistral-Instruct, as the released models were trained: `<s>[INST] user [/INST]answer</s>[INST] ...`.
# A system message (which the original lacked) is put in front of the first user turn, as Mistral does.
# Media blocks render as the tags of the published data; the processor expands them.
DEFAULT_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set system_message = messages[0]['content'] -%}"
    "{%- else -%}{%- set system_message = messages[0]['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('\\n') -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set system_message = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{{- bos_token -}}"
    "{%- for message in loop_messages -%}"
    "{%- if message['content'] is string -%}{%- set content = message['content'] -%}"
    "{%- else -%}{%- set parts = namespace(items=[]) -%}"
    "{%- for block in message['content'] -%}"
    "{%- if block['type'] == 'text' -%}{%- set parts.items = parts.items + [block['text']] -%}"
    "{%- elif block['type'] == 'image' -%}{%- set parts.items = parts.items + ['<image> </image>'] -%}"
    "{%- elif block['type'] == 'audio' -%}{%- set parts.items = parts.items + ['<audio> </audio>'] -%}"
    "{%- else -%}{{- raise_exception('Unknown content block type: ' + block['type']) -}}{%- endif -%}"
    "{%- endfor -%}{%- set content = parts.items | join('\\n') -%}{%- endif -%}"
    "{%- set number = loop.index + (messages | length) - (loop_messages | length) -%}"
    "{%- if not content | trim and message['role'] != 'assistant' -%}"
    "{{- raise_exception('Message ' ~ number ~ ' (' ~ message['role'] ~ ') is empty') -}}{%- endif -%}"
    "{%- if message['role'] == 'assistant' and ('<image>' in content or '<audio>' in content) -%}"
    "{{- raise_exception('Message ' ~ number ~ ' (assistant) holds an image or audio; media belong in user "
    "turns') -}}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if loop.first and system_message -%}{%- set content = system_message + '\\n\\n' + content -%}{%- endif -%}"
    "{{- '[INST] ' + content + ' [/INST]' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- content + eos_token -}}{%- endgeneration -%}"
    "{%- else -%}{{- raise_exception('Unknown role \\'' + message['role'] + '\\': the chat template knows "
    "system (first message only), user and assistant') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

# `<image>`, `<image></image>` and `<image> </image>` each stand for one image (same for audio).
_PLACEHOLDER_RE = re.compile(
    r"(?P<image><image>(?:\s*</image>)?)|(?P<audio><audio>(?:\s*</audio>)?)|(?P<stray></image>|</audio>)"
)
_LONG_AUDIO_POLICIES = ("chunk", "truncate", "error")


def _is_container(value) -> bool:
    return isinstance(value, (list, tuple))


class MMMModalProcessor(ProcessorMixin):
    r"""
    Wraps a SigLIP image processor, a Whisper feature extractor and the language model's tokenizer.

    image_processor: a SigLIP image processor (any size; slots follow the resized grid).
    feature_extractor: a Whisper feature extractor; its `chunk_length` is one audio window.
    tokenizer: the language model's tokenizer. Missing tags and slot tokens are added to it, so
        `len(processor.tokenizer)` is the vocabulary the language model needs.
    chat_template: a Jinja template; defaults to the Mistral-Instruct format of the released models.
    patch_size, audio_conv_kernel, audio_conv_stride: fix the slots per image and per audio window;
        they must match the model's config.
    long_audio: what to do with a clip longer than one window: "chunk" (consecutive windows, the
        default), "truncate" (keep the first window, as the published code did) or "error".
    max_audio_seconds: the most audio one sample may hold, all its clips together (None: no limit);
        a longer sample is an error naming it, raised before anything is encoded.
    max_image_pixels: images with more pixels are refused before they are decoded (decompression
        bombs); None lifts the limit. Default 64 megapixels.
    trim_audio_padding: give each window only the slots whose projector window starts in real
        audio (see `num_real_audio_slots`); must match the model config's flag of the same name.
    """

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
        self.patch_size = patch_size
        self.audio_conv_kernel = audio_conv_kernel
        self.audio_conv_stride = audio_conv_stride
        self.long_audio = long_audio
        self.max_audio_seconds = max_audio_seconds
        self.max_image_pixels = max_image_pixels
        self.trim_audio_padding = trim_audio_padding
        _add_media_tokens(tokenizer)
        self.image_token, self.audio_token = IMAGE_SLOT_TOKEN, AUDIO_SLOT_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_SLOT_TOKEN)
        self.audio_token_id = tokenizer.convert_tokens_to_ids(AUDIO_SLOT_TOKEN)
        self.image_start_token_id = tokenizer.convert_tokens_to_ids(IMAGE_START_TOKEN)
        self.image_end_token_id = tokenizer.convert_tokens_to_ids(IMAGE_END_TOKEN)
        self.audio_start_token_id = tokenizer.convert_tokens_to_ids(AUDIO_START_TOKEN)
        self.audio_end_token_id = tokenizer.convert_tokens_to_ids(AUDIO_END_TOKEN)
        super().__init__(
            image_processor, feature_extractor, tokenizer, chat_template=chat_template or DEFAULT_CHAT_TEMPLATE
        )

    @property
    def special_token_ids(self) -> dict[str, int]:
        """The slot and tag ids, keyed as `MMMModalConfig` names them: `MMMModalConfig(..., **these)`."""
        return {
            "image_token_id": self.image_token_id,
            "audio_token_id": self.audio_token_id,
            "image_start_token_id": self.image_start_token_id,
            "image_end_token_id": self.image_end_token_id,
            "audio_start_token_id": self.audio_start_token_id,
            "audio_end_token_id": self.audio_end_token_id,
        }

    # -- slot arithmetic ------------------------------------------------------------------------

    @property
    def audio_slots_per_window(self) -> int:
        """Slots one Whisper window fills (487 for 30 s with the published projector)."""
        frames = whisper_encoder_frames(self.feature_extractor.nb_max_frames)
        return num_audio_slots(frames, self.audio_conv_kernel, self.audio_conv_stride)

    def num_image_slots(self, height: int, width: int) -> int:
        """Slots for one image of `height` x `width` pixels after the image processor (576 for 384 px)."""
        return num_image_slots(height, width, self.patch_size)

    def num_window_slots(self, num_real_mel_frames: int) -> int:
        """Slots one window gets: all of them, or with `trim_audio_padding` those that start in real audio."""
        if not self.trim_audio_padding:
            return self.audio_slots_per_window
        return num_real_audio_slots(num_real_mel_frames, self.audio_slots_per_window, self.audio_conv_stride)

    def num_audio_windows(self, num_samples: int) -> int:
        """Whisper windows a clip of `num_samples` (at the feature extractor's rate) is cut into."""
        if self.long_audio == "chunk":
            return max(1, math.ceil(num_samples / self.feature_extractor.n_samples))
        return 1

    # -- main entry -----------------------------------------------------------------------------

    def __call__(
        self,
        text=None,
        images=None,
        audio=None,
        audios=None,
        sampling_rate: int | None = None,
        return_tensors=None,
        padding=True,
        padding_side: str = "left",
        add_special_tokens: bool = True,
        images_kwargs: dict | None = None,
        return_text_replacement_offsets: bool = False,
        skip_bad_samples: bool = False,
        **text_kwargs,
    ) -> BatchFeature:
        """Prepare a batch for the model.

        text: a string (one sample) or a list of strings (a batch), with `<image>` / `<audio>`
            placeholders matched in order to that sample's media.
        images / audio (or `audios`): per sample (`[[a, b], [c]]`) or flat in placeholder order.
        sampling_rate: the rate of audio given as bare arrays (files carry their own).
        padding_side: "left" (default, for generation) or "right" (for training).
        skip_bad_samples: drop a sample whose text or media are unusable instead of raising; the
            result's `skipped_samples` lists `{"sample": index, "error": message}` and
            `kept_samples` the indices of its rows. Errors that misalign the whole batch (a flat
            media list not matching the placeholders) still raise.
        Returns `input_ids`, `attention_mask`, and where media are given `pixel_values`,
        `input_features` and `input_features_mask`.
        """
        if audios is not None:
            if audio is not None:
                raise ValueError("Pass audio as `audio=` or `audios=`, not both.")
            audio = audios
        if text is None:
            raise ValueError("MMMModalProcessor needs `text` with one <image>/<audio> placeholder per medium.")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("MMMModalProcessor got an empty batch (no text).")
        problems: dict[int, str] = {}
        placeholders = []
        for index, sample in enumerate(texts):
            matches, problem = self._read_text(index, sample)
            placeholders.append(matches)
            if problem:
                problems[index] = problem
        sample_images = _assign_media(
            images, [[m for m in p if m.lastgroup == "image"] for p in placeholders], "image", problems
        )
        sample_audio = _assign_media(
            audio, [[m for m in p if m.lastgroup == "audio"] for p in placeholders], "audio", problems
        )
        loaded_images, loaded_audio = [], []
        for index in range(len(texts)):
            sample_loaded_images, sample_loaded_audio = [], []
            try:
                if index in problems:
                    raise ValueError(problems[index])
                sample_loaded_images = self._load_images(index, sample_images[index])
                sample_loaded_audio = self._load_audio(index, sample_audio[index], sampling_rate)
            except ValueError as error:
                if not skip_bad_samples:
                    raise
                problems[index] = str(error)
                sample_loaded_images, sample_loaded_audio = [], []
            loaded_images.append(sample_loaded_images)
            loaded_audio.append(sample_loaded_audio)
        kept = [index for index in range(len(texts)) if index not in problems]
        if not kept:
            raise ValueError("Every sample of the batch is unusable:\n" + "\n".join(problems.values()))

        data, image_slots = self._encode_images([loaded_images[i] for i in kept], images_kwargs or {}, return_tensors)
        audio_data, audio_slots = self._encode_audio([loaded_audio[i] for i in kept])
        data.update(audio_data)
        expanded, offsets = self._expand_placeholders(
            [texts[i] for i in kept], [placeholders[i] for i in kept], image_slots, audio_slots
        )
        encoding = self._tokenize(expanded, add_special_tokens, padding, padding_side, text_kwargs)
        data = {**encoding, **data}
        if return_text_replacement_offsets:
            data["text_replacement_offsets"] = offsets
        batch = BatchFeature(data, tensor_type=return_tensors, skip_tensor_conversion=["text_replacement_offsets"])
        if skip_bad_samples:
            batch.kept_samples = kept
            batch.skipped_samples = [{"sample": index, "error": problems[index]} for index in sorted(problems)]
        return batch

    def _tokenize(self, texts: list[str], add_special_tokens: bool, padding, padding_side: str, text_kwargs: dict):
        """The tokenizer's encoding, its special tokens added only to texts that do not already start with BOS.

        A plain prompt gets what `tokenizer(prompt)` adds (`<s>`); one that starts with `<s>` (as the
        chat template renders it) gets no second. transformers' `apply_chat_template` decides this for
        a whole batch; here it is decided per text, so a batch may mix both kinds.
        """
        bos = self.tokenizer.bos_token
        has_bos = [bool(add_special_tokens and bos and text.startswith(bos)) for text in texts]
        if not any(has_bos) or all(has_bos):
            return self.tokenizer(
                texts,
                padding=padding,
                padding_side=padding_side,
                add_special_tokens=add_special_tokens and not all(has_bos),
                **text_kwargs,
            )
        # A mixed batch: each text alone, then padded together.
        rows = [
            self.tokenizer(text, add_special_tokens=not starts, **text_kwargs) for text, starts in zip(texts, has_bos)
        ]
        merged = {key: [row[key] for row in rows] for key in rows[0]}
        return self.tokenizer.pad(merged, padding=padding, padding_side=padding_side)

    def encode_media(self, images=(), audio=(), sampling_rate: int | None = None, return_tensors="pt"):
        """Load and preprocess media on their own: `(features, image_slots, audio_slots)`.

        For callers that tokenize text separately (a chat session keeping its KV cache): the slot
        counts say how `expand_media_placeholders` must expand each medium's placeholder.
        """
        data, image_slots = self._encode_images([self._load_images(0, list(images))], {}, return_tensors)
        audio_data, audio_slots = self._encode_audio([self._load_audio(0, list(audio), sampling_rate)])
        data.update(audio_data)
        return BatchFeature(data, tensor_type=return_tensors), image_slots, audio_slots

    def expand_media_placeholders(self, text: str, image_slots: list[int], audio_slots: list[int]) -> str:
        """`text` with each placeholder written out as tags around its slot tokens, as `__call__` does."""
        matches, problem = self._read_text(0, text)
        if problem:
            raise ValueError(problem)
        counts = (sum(m.lastgroup == "image" for m in matches), sum(m.lastgroup == "audio" for m in matches))
        if counts != (len(image_slots), len(audio_slots)):
            raise ValueError(
                f"The text holds {counts[0]} image and {counts[1]} audio placeholders but slot counts were given "
                f"for {len(image_slots)} images and {len(audio_slots)} clips."
            )
        return self._expand_placeholders([text], [matches], image_slots, audio_slots)[0][0]

    def _read_text(self, index: int, text) -> tuple[list[re.Match], str | None]:
        """The sample's placeholders, and what is wrong with its text (None when nothing is)."""
        if not isinstance(text, str):
            return [], f"Sample {index + 1}: text must be a string; got {type(text).__name__}."
        matches = list(_PLACEHOLDER_RE.finditer(text))
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
                loaded.append(load_image(item, max_pixels=self.max_image_pixels))
            except ValueError as error:
                raise ValueError(
                    f"Sample {index + 1}, image {position + 1} ({describe_media(item)}): {error}"
                ) from error
        return loaded

    def _load_audio(self, index: int, items: list, sampling_rate: int | None) -> list[np.ndarray]:
        """Each clip as a mono waveform at the extractor's rate, length limits checked."""
        extractor = self.feature_extractor
        waveforms, seconds = [], 0.0
        for position, item in enumerate(items):
            where = f"Sample {index + 1}, audio {position + 1} ({describe_media(item)})"
            try:
                waveform = load_audio(item, extractor.sampling_rate, sampling_rate)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from error
            duration = waveform.shape[0] / extractor.sampling_rate
            if self.long_audio == "error" and waveform.shape[0] > extractor.n_samples:
                raise ValueError(
                    f"{where}: the clip lasts {duration:.1f} s, longer than "
                    f"one {extractor.chunk_length} s window, and long_audio='error'."
                )
            seconds += duration
            if self.max_audio_seconds is not None and seconds > self.max_audio_seconds:
                raise ValueError(
                    f"Sample {index + 1}: its audio lasts {seconds:.1f} s up to and including audio {position + 1}, "
                    f"more than max_audio_seconds={self.max_audio_seconds:g}."
                )
            waveforms.append(waveform)
        return waveforms

    def _encode_images(self, sample_images, images_kwargs, return_tensors):
        """Every loaded image of the batch through the image processor in one call."""
        loaded = [image for images in sample_images for image in images]
        if not loaded:
            return {}, []
        tensor_type = "pt" if return_tensors == "pt" else "np"
        pixel_values = self.image_processor(loaded, return_tensors=tensor_type, **images_kwargs)["pixel_values"]
        height, width = pixel_values.shape[-2:]
        slots = [self.num_image_slots(int(height), int(width))] * len(loaded)
        return {"pixel_values": pixel_values}, slots

    def _encode_audio(self, sample_audio):
        """Cut every waveform into Whisper windows and extract all windows in one call."""
        extractor = self.feature_extractor
        windows, windows_per_clip = [], []
        for waveforms in sample_audio:
            for waveform in waveforms:
                count = self.num_audio_windows(waveform.shape[0])
                windows.extend(waveform[i * extractor.n_samples : (i + 1) * extractor.n_samples] for i in range(count))
                windows_per_clip.append(count)
        if not windows:
            return {}, []
        features = extractor(
            windows,
            sampling_rate=extractor.sampling_rate,
            padding="max_length",
            return_attention_mask=True,
            return_tensors="np",
        )
        # Whisper calls its frame mask `attention_mask`; renamed so it never collides with the text mask.
        frame_mask = features["attention_mask"].astype(np.int64)
        window_slots = [self.num_window_slots(int(real)) for real in frame_mask.sum(-1)]
        slots, start = [], 0
        for count in windows_per_clip:
            slots.append(sum(window_slots[start : start + count]))
            start += count
        data = {"input_features": features["input_features"].astype(np.float32), "input_features_mask": frame_mask}
        return data, slots

    def _expand_placeholders(self, texts, placeholders, image_slots, audio_slots):
        """Put each medium's N slot tokens right after its opening tag; the rest of the text stays as it is."""
        image_slots, audio_slots = iter(image_slots), iter(audio_slots)
        expanded_texts, all_offsets = [], []
        for text, matches in zip(texts, placeholders):
            pieces, offsets, last, shift = [], [], 0, 0
            for match in matches:
                if match.lastgroup == "image":
                    tag, replacement = IMAGE_START_TOKEN, IMAGE_START_TOKEN + IMAGE_SLOT_TOKEN * next(image_slots)
                else:
                    tag, replacement = AUDIO_START_TOKEN, AUDIO_START_TOKEN + AUDIO_SLOT_TOKEN * next(audio_slots)
                start = match.start()
                end = start + len(tag)
                pieces += [text[last:start], replacement]
                offsets.append(
                    {
                        "type": match.lastgroup,
                        "span": (start, end),
                        "new_span": (start + shift, start + shift + len(replacement)),
                    }
                )
                shift += len(replacement) - (end - start)
                last = end
            pieces.append(text[last:])
            expanded_texts.append("".join(pieces))
            all_offsets.append(offsets)
        return expanded_texts, all_offsets

    # -- chat template support --------------------------------------------------------------------

    def _multimodal_inputs_from_conversations(self, conversations, audio_loading_params, load_audio_from_video=False):
        """Collect each conversation's media in order, unloaded: `__call__` loads them with clear errors."""
        batch_images, batch_audio = [], []
        for conversation in conversations:
            images, clips = [], []
            for message in conversation:
                content = message.get("content")
                if isinstance(content, str) or not content:
                    continue
                for block in content:
                    kind = block.get("type")
                    if kind in ("image", "audio"):
                        value = next((block[key] for key in (kind, "path", "url", "base64") if key in block), None)
                        if value is None:
                            raise ValueError(f"A {kind} block needs one of '{kind}', 'path' or 'url'; got {block}.")
                        if "base64" in block and kind not in block and "path" not in block and "url" not in block:
                            value = _decode_base64(value)
                        (images if kind == "image" else clips).append(value)
            batch_images.append(images)
            batch_audio.append(clips)
        has_audio = any(batch_audio)
        return batch_images, [[] for _ in conversations], (batch_audio if has_audio else []), {}

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "input_features", "input_features_mask"]


def _decode_base64(value: str) -> bytes:
    import base64

    return base64.b64decode(value.split(",", 1)[1] if value.startswith("data:") else value)


def _add_media_tokens(tokenizer) -> None:
    """Add whichever of the four tags and two slot tokens the tokenizer lacks, as special tokens."""
    if tokenizer.pad_token is None:
        # Llama/Mistral tokenizers ship without one; <unk> never appears in real text.
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    wanted = [
        IMAGE_START_TOKEN,
        IMAGE_END_TOKEN,
        AUDIO_START_TOKEN,
        AUDIO_END_TOKEN,
        IMAGE_SLOT_TOKEN,
        AUDIO_SLOT_TOKEN,
    ]
    vocabulary = tokenizer.get_vocab()
    missing = [token for token in wanted if token not in vocabulary]
    if missing:
        tokenizer.add_tokens(
            [AddedToken(token, special=True, normalized=False) for token in missing], special_tokens=True
        )


def _assign_media(media, placeholders_per_sample, kind: str, problems: dict[int, str]) -> list[list]:
    """Give each sample its media: per-sample lists are checked, a flat list is dealt out in placeholder order.

    A per-sample count mismatch is that sample's problem (recorded in `problems`); a flat list that
    does not match the batch's placeholders cannot be attributed to one sample and raises.
    """
    counts = [len(p) for p in placeholders_per_sample]
    if media is None:
        media = []
    if not _is_container(media):
        media = [media]
    nested = len(media) > 0 and all(_is_container(m) for m in media)
    if nested:
        if len(media) != len(counts):
            raise ValueError(
                f"{kind.capitalize()}s were given for {len(media)} samples, but the text holds {len(counts)} samples."
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
                f"{len(media)} {kind}(s) given are left for it."
            )
        assigned.append(list(media[cursor : cursor + count]))
        cursor += count
    if cursor != len(media):
        raise ValueError(
            f"{len(media)} {kind}(s) were given but the text holds only {cursor} <{kind}> placeholder(s); "
            f"{kind} {cursor + 1} and after have no place."
        )
    return assigned


MMMModalProcessor.register_for_auto_class()

__all__ = ["MMMModalProcessor", "DEFAULT_CHAT_TEMPLATE"]
