"""MMMModal on vLLM's Transformers modeling backend: the Hub modules run as they are, vLLM batches them.

The backend already serves a remote-code multimodal model from its feature getters; what it cannot
guess about MMMModal is said here, and nothing else:
- the base model (no LM head) is what vLLM wraps, while the folder's `AutoModel` gives the generation model;
- a medium's placeholder is its opening tag, `<image>` / `<audio>`, replaced by the tag and its slots
  (the processor's `text_replacement_offsets`), so prompts hold the published layout;
- a clip longer than one Whisper window is several rows of `input_features`, one per window;
- audio at another sampling rate is resampled by the processor's own loader (soxr), so vLLM and
  `generate` see the same waveform;
- a video item is its sampled frames with its soundtrack in the item's metadata (`video_item`): the processor lays it
  out as `generate`'s, and its embeddings are its frames' slots and its soundtrack pieces' slots in prompt order.
"""

import dataclasses
from contextlib import contextmanager
from itertools import groupby

import numpy as np
import torch
from PIL import Image
from transformers import AutoModel
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from vllm.model_executor.models.transformers import TransformersMultiModalForCausalLM
from vllm.model_executor.models.transformers.multimodal import (
    MultiModalDummyInputsBuilder,
    MultiModalProcessingInfo,
    MultiModalProcessor,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import AudioProcessorItems, MultiModalDataParser
from vllm.multimodal.processing import BaseMultiModalProcessor, PromptUpdateDetails

from ..configuration_mmmmodal import MEDIA_INPUT_NAMES, num_image_slots
from ..media_mmmmodal import Video, load_audio
from ..modeling_mmmmodal import MMMModalModel
from ..processing_mmmmodal import MEDIA_PLACEHOLDERS
from .vllm_media import video_item

VIDEO_FIELDS = ("pixel_values_videos", "input_features_videos", "input_features_mask_videos", "video_layout")


def _processor_video(frames: np.ndarray, metadata: dict) -> dict:
    """A vLLM video item as the processor takes a video: its frames at their rate, and its soundtrack."""
    return {"frames": list(frames), "fps": metadata["fps"], "audio": metadata.get("audio"),
            "sampling_rate": metadata.get("sampling_rate")}  # fmt: skip


class MMMModalAudioParser(MultiModalDataParser):
    """Audio through the processor's loader: mono, at the extractor's rate, resampled with soxr."""

    def __init__(self, *, target_sr: float, **kwargs):
        super().__init__(target_sr=target_sr, **kwargs)
        self.target_rate = int(target_sr)

    def _get_audio_with_sr(self, audio):
        waveform, rate = super()._get_audio_with_sr(audio)
        return load_audio(waveform, self.target_rate, None if rate is None else int(rate)), None


class MMMModalProcessingInfo(MultiModalProcessingInfo):
    def get_data_parser(self) -> MultiModalDataParser:
        return MMMModalAudioParser(
            target_sr=self._get_audio_sampling_rate(),
            video_needs_metadata=True,  # an item's metadata carries its soundtrack
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )

    def get_max_audio_tokens(self) -> int:
        """A clip may fill the whole context: long clips are consecutive windows (vLLM's default is one)."""
        return self.ctx.model_config.max_model_len

    @property
    def _is_video_model(self) -> bool:
        """Videos, read by the processor itself (it has no `video_processor` for vLLM to find)."""
        return True

    @property
    def _video_needs_metadata(self) -> bool:
        """An item's metadata carries its soundtrack (`video_item`)."""
        return True

    def get_mm_max_tokens_per_item(self, seq_len, mm_counts):
        return {"image": self.get_max_image_tokens(), "audio": self.get_max_audio_tokens(), "video": seq_len}


class MMMModalDummyInputsBuilder(MultiModalDummyInputsBuilder):
    def get_dummy_text(self, mm_counts) -> str:
        kinds = ("audio", "image", "video")  # the processor's rows come in this order (`_split_video_rows`)
        return " ".join(MEDIA_PLACEHOLDERS[kind] for kind in kinds for _ in range(mm_counts.get(kind, 0)))

    def get_dummy_mm_data(self, seq_len, mm_counts, mm_options):
        """vLLM's dummy images and clips; a video for profiling is one frame at the image size with a second of
        soundtrack (its encoders' work is an image's and a clip's)."""
        videos = mm_counts.get("video", 0)
        data = super().get_dummy_mm_data(seq_len, {**mm_counts, "video": 0}, mm_options)
        if videos:
            size = self.info.get_image_size_with_most_features()
            frame = Image.new("RGB", (size.width, size.height))
            rate = self.info.get_hf_processor().feature_extractor.sampling_rate
            data["video"] = [video_item(Video([frame], [0.0], 1.0, np.zeros(rate, np.float32), rate))] * videos
        return data


class MMMModalMultiModalProcessor(MultiModalProcessor):
    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        """An image's or a clip's target is its opening tag (the slots follow it; the rest of the prompt stays); a
        video's is its `<video>`, and its embeddings are both kinds of slots."""
        processor = self.info.get_hf_processor(**hf_processor_mm_kwargs)
        tags = {"image": processor.image_start_token_id, "audio": processor.audio_start_token_id}
        slots = [processor.image_token_id, processor.audio_token_id]
        updates = []
        for update in super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
            if update.modality != "video":
                updates.append(dataclasses.replace(update, target=[tags[update.modality]]))
                continue
            # `<video>` is text: after a space its first token carries the space (`▁<`), which a replacement in token
            # space would drop. Its tokens as they follow a newline match only there, and where they do not, vLLM
            # replaces the text instead, the space kept, as the processor does (`_apply_prompt_updates_via_text`).
            tokenizer, items = self.info.get_tokenizer(), update.replacement
            newline = len(tokenizer.encode("\n", add_special_tokens=False))
            target = tokenizer.encode("\n" + MEDIA_PLACEHOLDERS["video"], add_special_tokens=False)[newline:]
            updates.append(dataclasses.replace(update, target=target, replacement=lambda index, items=items: (
                PromptUpdateDetails.select_token_ids(items(index).full, slots))))  # fmt: skip
        return updates

    def _get_hf_mm_inputs(self, mm_items, hf_kwargs):
        """The items as the processor takes them: a video as its frames and soundtrack (`_processor_video`)."""
        hf_inputs = BaseMultiModalProcessor._get_hf_mm_inputs(self, mm_items, hf_kwargs)
        if videos := hf_inputs.hf_data.get("videos"):
            hf_inputs.hf_data["videos"] = [_processor_video(*item) for item in videos]
            hf_inputs = hf_inputs._replace(hf_kwargs={**hf_inputs.hf_kwargs, "do_sample_frames": False})
        return hf_inputs

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):
        hf_inputs = super()._apply_hf_processor_main(mm_items, hf_kwargs)
        hf_inputs.pop("pooled_images", None)  # images are never pooled; a video's frames are, as its layout says
        processor = self.info.get_hf_processor(**hf_kwargs)
        counts = mm_items.get_all_counts()
        clips = mm_items.get_items("audio", AudioProcessorItems) if counts.get("audio") else None
        windows = [processor.num_audio_windows(len(clips.get(i))) for i in range(clips.get_count())] if clips else []
        if counts.get("video"):
            self._split_video_rows(hf_inputs, processor, counts.get("image", 0), sum(windows))
        if windows:
            hf_inputs["audio_num_windows"] = torch.tensor(windows)
        return hf_inputs

    def _split_video_rows(self, hf_inputs, processor, images: int, clip_windows: int) -> None:
        """The processor's rows come as the dummy text orders the media: clips then soundtracks in `input_features`,
        images then frames in `pixel_values`. The videos' rows move to their own fields, with each frame's slots and
        its soundtrack piece's (`video_layout`, read off the video's replacement), and its soundtrack's windows."""
        for key, first in (
            ("pixel_values", images),
            ("input_features", clip_windows),
            ("input_features_mask", clip_windows),
        ):
            if key in hf_inputs:
                rows = hf_inputs.pop(key)
                hf_inputs[f"{key}_videos"] = rows[first:]
                if first:
                    hf_inputs[key] = rows[:first]
        kinds = {processor.image_token_id: 0, processor.audio_token_id: 1}
        layouts, frames, windows = [], [], []
        for ids in hf_inputs["video_replacement_ids"].split(hf_inputs["video_replacement_sizes"].tolist()):
            runs = [(kinds[token], len(list(run))) for token, run in groupby(ids.tolist()) if token in kinds]
            layout = [[slots, runs[i + 1][1] if i + 1 < len(runs) and runs[i + 1][0] else 0]
                      for i, (kind, slots) in enumerate(runs) if kind == 0]  # fmt: skip
            layouts += layout
            frames.append(len(layout))
            # The soundtrack's windows, from its slots: every window but its last fills all of a window's slots.
            windows.append(-(-sum(piece for _, piece in layout) // processor.audio_slots_per_window))
        hf_inputs["video_layout"] = torch.tensor(layouts)
        hf_inputs["num_video_patches"] = torch.tensor(frames)
        hf_inputs["video_num_windows"] = torch.tensor(windows)

    def _unpad_audios(self, hf_inputs, mm_data, mm_kwargs) -> None:
        """Nothing to do: every window is padded to a whole window on its own, whatever is beside it."""

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        windows = hf_inputs.pop("audio_num_windows", None)
        video_windows = hf_inputs.pop("video_num_windows", None)
        videos = {key: hf_inputs.pop(key) for key in VIDEO_FIELDS if key in hf_inputs}  # attributed below
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        hf_inputs.update(videos)
        if windows is not None:  # a clip's rows are its windows
            fields.update(
                {key: MultiModalFieldConfig.flat_from_sizes("audio", windows) for key in MEDIA_INPUT_NAMES["audio"]}
            )
        if video_windows is not None:  # a video's rows: its frames, and its soundtrack's windows
            frames = hf_inputs["num_video_patches"]
            for key in ("pixel_values_videos", "video_layout"):
                fields[key] = MultiModalFieldConfig.flat_from_sizes("video", frames)
            for key in ("input_features_videos", "input_features_mask_videos"):
                fields[key] = MultiModalFieldConfig.flat_from_sizes("video", video_windows)
        return fields


@MULTIMODAL_REGISTRY.register_processor(
    MMMModalMultiModalProcessor, info=MMMModalProcessingInfo, dummy_inputs=MMMModalDummyInputsBuilder
)
class MMMModalForVLLM(TransformersMultiModalForCausalLM):
    """MMMModal served by vLLM: towers, projectors and LM are the Hub modules' (the installed package's, which
    registers the `mmmmodal` type: the files every saved folder carries); vLLM's attention, KV cache,
    scheduler and LM head take over from `generate`."""

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        return MEDIA_PLACEHOLDERS.get(modality)

    def __init__(self, *, vllm_config, prefix: str = ""):
        # vLLM builds `AutoModel.from_config(config)` and adds its own LM head; MMMModal's `AutoModel` is the
        # generation model (the package registers it so), so while vLLM builds, it is the base model.
        with _auto_model_builds(type(vllm_config.model_config.hf_config), MMMModalModel):
            super().__init__(vllm_config=vllm_config, prefix=prefix)

    def _process_video_input(self, **kwargs) -> list[torch.Tensor] | None:
        """Each video's embeddings in its prompt's order: each frame's slots, then its soundtrack piece's."""
        pixel_values = kwargs.pop("pixel_values_videos", None)
        if pixel_values is None:
            return None
        layout, frames = kwargs.pop("video_layout").tolist(), kwargs.pop("num_video_patches").flatten().tolist()
        # A frame with fewer slots than an image of its size was pooled (`pool_frames`, in `mm_processor_kwargs`).
        whole = num_image_slots(*pixel_values.shape[-2:], self.model.config.vision_config.patch_size)
        pooled = torch.tensor([slots < whole for slots, _ in layout])
        frame_features = self.model.get_image_features(pixel_values, pooled_images=pooled, return_dict=True)
        frame_features = frame_features.pooler_output.flatten(0, -2).split([slots for slots, _ in layout])
        features = kwargs.pop("input_features_videos", None)
        sound = frame_features[0].new_zeros(0, frame_features[0].shape[-1])
        if features is not None and len(features):
            mask = kwargs.pop("input_features_mask_videos", None)
            sound = self.model.get_audio_features(features, mask, return_dict=True).pooler_output
        pieces = iter(sound.split([piece for _, piece in layout]))
        per_frame = [torch.cat([frame, next(pieces)]) for frame in frame_features]
        bounds = np.cumsum([0, *frames]).tolist()
        return [torch.cat(per_frame[start:end]) for start, end in zip(bounds, bounds[1:])]


@contextmanager
def _auto_model_builds(config_class, model_class):
    """`AutoModel` gives `model_class` for `config_class` inside the block, and what it gave before after it, through
    transformers' public registration only."""
    try:
        before = MODEL_MAPPING[config_class]
    except KeyError:  # a config class nobody registered: it keeps `model_class`, in this process only
        before = None
    AutoModel.register(config_class, model_class, exist_ok=True)
    try:
        yield
    finally:
        if before is not None:
            AutoModel.register(config_class, before, exist_ok=True)
