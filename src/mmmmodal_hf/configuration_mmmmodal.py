"""MMMModal configuration: a SigLIP vision tower and a Whisper encoder joined to a causal LM.

Also home of the slot arithmetic (positions one image or audio window fills): the processor, which
writes the slots, and the model, which fills them, both import it from here, so they never disagree.
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

# The published models: SigLIP-base-patch16-384, malaysian-whisper-small, TinyLlama 1.1B.
_SIGLIP_BASE_384 = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=384, patch_size=16,
)  # fmt: skip
_WHISPER_SMALL_ENCODER = dict(
    d_model=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_dim=3072, decoder_layers=12,
    decoder_attention_heads=12, decoder_ffn_dim=3072, num_mel_bins=80, max_source_positions=1500,
)  # fmt: skip
_TINYLLAMA = dict(
    hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
    max_position_embeddings=16384, vocab_size=32006, rms_norm_eps=1e-5,
)  # fmt: skip

# Token layout of the released checkpoints (32000-32003), plus the two slot tokens we add.
IMAGE_START_TOKEN, IMAGE_END_TOKEN = "<image>", "</image>"
AUDIO_START_TOKEN, AUDIO_END_TOKEN = "<audio>", "</audio>"
IMAGE_SLOT_TOKEN, AUDIO_SLOT_TOKEN = "<image_slot>", "<audio_slot>"
# The model inputs each kind of medium becomes (the processor writes them, the model and the collators read them).
MEDIA_INPUT_NAMES = {"image": ("pixel_values",), "audio": ("input_features", "input_features_mask")}


def encoder_layers_needed(feature_layer: int, depth: int) -> int:
    """Layers an encoder of `depth` layers must run for `hidden_states[feature_layer]` (0 is the embeddings)."""
    return depth + 1 + feature_layer if feature_layer < 0 else feature_layer


def num_image_slots(height: int, width: int, patch_size: int, pooled: bool = False) -> int:
    """Positions one image fills: one per SigLIP patch (no CLS token), or with `pooled` (video frames, on request)
    one per 2x2 group of patches, an odd row or column its own group: 576 -> 144 at 384 px."""
    rows, columns = height // patch_size, width // patch_size
    return -(-rows // 2) * -(-columns // 2) if pooled else rows * columns


def whisper_encoder_frames(num_mel_frames: int) -> int:
    """Frames the Whisper encoder emits for `num_mel_frames` log-mel frames (its stride-2 conv)."""
    return (num_mel_frames - 1) // 2 + 1


def num_audio_slots(encoder_frames: int, conv_kernel: int, conv_stride: int) -> int:
    """Positions one audio window fills, the projector's Conv1d output: floor((1500 - 40) / 3) + 1 = 487 as published."""
    if encoder_frames < conv_kernel:
        raise ValueError(
            f"The audio projector's kernel ({conv_kernel}) is longer than the {encoder_frames} frames "
            "the Whisper encoder emits per window; no audio feature could be produced."
        )
    return (encoder_frames - conv_kernel) // conv_stride + 1


def num_real_audio_slots(num_real_mel_frames: int, window_slots: int, conv_stride: int) -> int:
    """Slots kept from one window when padding is trimmed: those whose projector window starts in real audio.

    Whisper always encodes a full, zero-padded window (its position table is fixed); slot j of the
    projector's Conv1d reads encoder frames [j * stride, j * stride + kernel) and is kept when j * stride
    falls before the last real one: a 5 s clip in a 30 s window keeps ceil(250 / 3) = 84 of 487 slots.
    """
    real_frames = whisper_encoder_frames(max(1, int(num_real_mel_frames)))
    return min(window_slots, -(-real_frames // conv_stride))


# Each sub-config's model type when its dict names none, and its fields when it is None: the published sizes.
# Resolved by hand, as LLaVA does in transformers 5.19 (which has no `SubConfigSpec`), so one config runs on both.
_SUB_CONFIG_DEFAULTS = {
    "vision_config": ("siglip_vision_model", _SIGLIP_BASE_384),
    "audio_config": ("whisper", _WHISPER_SMALL_ENCODER),
    "text_config": ("llama", _TINYLLAMA),
}


@strict
class MMMModalConfig(PreTrainedConfig):
    r"""
    Configuration of an MMMModal model (arXiv 2402.11297).

    vision_config (`dict` or `SiglipVisionConfig`): the SigLIP vision tower.
    audio_config (`dict` or `WhisperConfig`): the Whisper model whose encoder hears the audio.
    text_config (`dict` or `PreTrainedConfig`): any causal LM transformers can build (llama, mistral, qwen2, ...).
    vision_feature_layer (`int`, defaults to -2): SigLIP hidden state fed to the image projector.
    audio_feature_layer (`int`, defaults to -2): Whisper encoder hidden state fed to the audio projector.
    audio_conv_kernel, audio_conv_stride (`int`, defaults to 40 and 3): the audio projector's Conv1d.
    trim_audio_padding (`bool`, defaults to True): keep only the audio slots whose projector window starts
        in real audio (`num_real_audio_slots`); False keeps all slots of every window, as the released
        checkpoints were trained (a short clip then fills 487 slots, mostly of padding).
    projector_hidden_act (`str`, defaults to "gelu"): activation inside both projectors.
    image_token_id, audio_token_id: the slot tokens that projected features replace.
    image_start_token_id, image_end_token_id, audio_start_token_id, audio_end_token_id: the four tags.

    Example: `MMMModalForConditionalGeneration(MMMModalConfig(text_config={"model_type": "mistral"}))`.
    """

    model_type = "mmmmodal"
    sub_configs = dict.fromkeys(_SUB_CONFIG_DEFAULTS, AutoConfig)

    vision_config: dict | PreTrainedConfig | None = None
    audio_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    vision_feature_layer: int = -2
    audio_feature_layer: int = -2
    audio_conv_kernel: int = 40
    audio_conv_stride: int = 3
    trim_audio_padding: bool = True
    projector_hidden_act: str = "gelu"
    image_start_token_id: int = 32000
    image_end_token_id: int = 32001
    audio_start_token_id: int = 32002
    audio_end_token_id: int = 32003
    image_token_id: int = 32004
    audio_token_id: int = 32005
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        for key, (model_type, defaults) in _SUB_CONFIG_DEFAULTS.items():
            value = getattr(self, key)  # None, a dict or a PreTrainedConfig (the dataclass checked the type)
            if value is None or isinstance(value, dict):
                value = {"model_type": model_type, **defaults} if value is None else value
                setattr(self, key, CONFIG_MAPPING[value.get("model_type", model_type)](**value))
        super().__post_init__(**kwargs)
        # Older checkpoints keep `tie_word_embeddings` in the text config only (as LLaVA does).
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        self._check_layers()
        # Every auto class gives the generation-capable model, so `AutoModel(...).generate()` works, and so do
        # transformers' pipelines: "any-to-any" loads AutoModelForMultimodalLM, "image-text-to-text"
        # AutoModelForImageTextToText.
        generation_model = "modeling_mmmmodal.MMMModalForConditionalGeneration"
        self.auto_map = {
            "AutoConfig": "configuration_mmmmodal.MMMModalConfig",
            **dict.fromkeys(
                ("AutoModel", "AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoModelForMultimodalLM"),
                generation_model,
            ),
            **(getattr(self, "auto_map", None) or {}),
        }

    def _check_layers(self):
        for name, layer, depth in (
            ("vision_feature_layer", self.vision_feature_layer, self.vision_config.num_hidden_layers),
            ("audio_feature_layer", self.audio_feature_layer, self.audio_config.encoder_layers),
        ):
            # hidden_states holds the embeddings plus one entry per layer: valid indices are -(depth+1)..depth.
            if not -(depth + 1) <= layer <= depth:
                raise ValueError(f"{name}={layer} does not exist in an encoder of {depth} layers.")
        num_audio_slots(self.audio_config.max_source_positions, self.audio_conv_kernel, self.audio_conv_stride)


MMMModalConfig.register_for_auto_class()

__all__ = [
    "MMMModalConfig",
    "MEDIA_INPUT_NAMES",
    "encoder_layers_needed",
    "num_image_slots",
    "num_audio_slots",
    "num_real_audio_slots",
    "whisper_encoder_frames",
]
