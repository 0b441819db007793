"""MMMModal on vLLM's Transformers modeling backend: the Hub modules run as they are, vLLM batches them.

The backend already serves a remote-code multimodal model from its feature getters; what it cannot
guess about MMMModal is said here, and nothing else:
- the base model (no LM head) is what vLLM wraps, while the folder's `AutoModel` gives the generation model;
- a medium's placeholder is its opening tag, `<image>` / `<audio>`, replaced by the tag and its slots
  (the processor's `text_replacement_offsets`), so prompts hold the published layout;
- a clip longer than one Whisper window is several rows of `input_features`, one per window;
- audio at another sampling rate is resampled by the processor's own loader (soxr), so vLLM and
  `generate` see the same waveform.
"""

import dataclasses
from contextlib import contextmanager

import torch
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

from ..configuration_mmmmodal import MEDIA_INPUT_NAMES
from ..media_mmmmodal import load_audio
from ..modeling_mmmmodal import MMMModalModel
from ..processing_mmmmodal import MEDIA_PLACEHOLDERS


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
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )

    def get_max_audio_tokens(self) -> int:
        """A clip may fill the whole context: long clips are consecutive windows (vLLM's default is one)."""
        return self.ctx.model_config.max_model_len


class MMMModalDummyInputsBuilder(MultiModalDummyInputsBuilder):
    def get_dummy_text(self, mm_counts) -> str:
        return " ".join(MEDIA_PLACEHOLDERS[kind] for kind in ("audio", "image") for _ in range(mm_counts.get(kind, 0)))


class MMMModalMultiModalProcessor(MultiModalProcessor):
    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        """Each medium's target is its opening tag (the slots follow it; the rest of the prompt stays)."""
        processor = self.info.get_hf_processor(**hf_processor_mm_kwargs)
        tags = {"image": processor.image_start_token_id, "audio": processor.audio_start_token_id}
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        return [dataclasses.replace(update, target=[tags[update.modality]]) for update in updates]

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):
        hf_inputs = super()._apply_hf_processor_main(mm_items, hf_kwargs)
        if "input_features" in hf_inputs:
            processor = self.info.get_hf_processor(**hf_kwargs)
            clips = mm_items.get_items("audio", AudioProcessorItems)
            windows = [processor.num_audio_windows(len(clips.get(i))) for i in range(clips.get_count())]
            hf_inputs["audio_num_windows"] = torch.tensor(windows)
        return hf_inputs

    def _unpad_audios(self, hf_inputs, mm_data, mm_kwargs) -> None:
        """Nothing to do: every window is padded to a whole window on its own, whatever is beside it."""

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        windows = hf_inputs.pop("audio_num_windows", None)
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        if windows is not None:  # a clip's rows are its windows
            fields.update(
                {key: MultiModalFieldConfig.flat_from_sizes("audio", windows) for key in MEDIA_INPUT_NAMES["audio"]}
            )
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
