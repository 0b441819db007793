"""MMMModal: SigLIP vision + Whisper audio encoders projected into a causal language model.

Follow one image from pixels to the language model: `get_image_features` (SigLIP, hidden state of
`vision_feature_layer`, image projector) -> `get_placeholder_mask` (where its slots are) ->
`forward` (one `masked_scatter` over the whole batch). Audio takes the same path through Whisper's
encoder and the Conv1d audio projector. The processor decides how many slots each medium gets;
this module only fills them, so there is no Python loop over items.
"""

import copy
import logging
import re
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.utils.generic import can_return_tuple

from .configuration_mmmmodal import (
    MEDIA_INPUT_NAMES,
    MMMModalConfig,
    encoder_layers_needed,
    num_audio_slots,
    num_image_slots,
    num_real_audio_slots,
    whisper_encoder_frames,
)

logger = logging.getLogger(__name__)

# Any checkpoint key under a tower that the tower does not have: a layer after the feature layer,
# a final norm or SigLIP's pooling head. Such keys come from checkpoints saved before towers were trimmed.
_UNUSED_TOWER_KEY = re.compile(r"(^|\.)(vision_tower|audio_tower)\.")

# Left unquantized by bitsandbytes unless `llm_int8_skip_modules` says otherwise: the towers and projectors are
# under a tenth of a 7B model's weights, and every image and audio slot passes through them; the LM head as usual.
UNQUANTIZED_PARTS = [f"model.{part}" for part in ("vision_tower", "audio_tower", "image_projector", "audio_projector")]
UNQUANTIZED_PARTS.append("lm_head")

# transformers 5.24 renamed the KV cache `past_key_values` to `cache` (the old name warns until 5.40): this module
# speaks the installed version's name and its `forward` takes either, so one checkout works on both sides.
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def tower_cuts(config: MMMModalConfig) -> dict[str, tuple[int, bool]]:
    """Per tower ("vision", "audio"): the layers its feature layer needs, and whether its final norm stays (SigLIP's
    hidden states come before `post_layernorm`; Whisper's last one is its normed output)."""
    vision = encoder_layers_needed(config.vision_feature_layer, config.vision_config.num_hidden_layers)
    audio = encoder_layers_needed(config.audio_feature_layer, config.audio_config.encoder_layers)
    return {"vision": (vision, False), "audio": (audio, audio == config.audio_config.encoder_layers)}


def _tower_outputs(kwargs: dict) -> dict:
    """The getters' keywords a tower answers (its hidden states, its attentions); others are not the tower's."""
    return {key: kwargs[key] for key in ("output_hidden_states", "output_attentions") if key in kwargs}


def _one_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The KV cache a caller passed as `cache` (transformers >= 5.24) or `past_key_values` (before)."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("Pass the KV cache once, as `cache` or as `past_key_values`, not both.")
    if past_key_values is not None and CACHE_NAME == "cache":  # as transformers' own models warn since 5.24
        warnings.warn("`past_key_values` is deprecated for `forward`. Use `cache` instead.", FutureWarning, 2)
    return cache if cache is not None else past_key_values


@dataclass
class _MediaOutputs:
    """The fields both outputs add. `image_outputs` / `audio_outputs` are the getters' whole outputs (the tower's
    hidden state, the projected features in `pooler_output`, the tower's hidden states and attentions when asked),
    as transformers >= 5.25 multimodal outputs hold them; as tuples they become tuples too."""

    image_hidden_states: torch.FloatTensor | None = None
    audio_hidden_states: torch.FloatTensor | None = None
    image_outputs: BaseModelOutputWithPooling | None = None
    audio_outputs: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple:
        return tuple(v.to_tuple() if isinstance(v, BaseModelOutputWithPooling) else v for v in super().to_tuple())


@dataclass
class MMMModalModelOutputWithPast(_MediaOutputs, BaseModelOutputWithPast):
    r"""
    The language model's outputs (`cache`: its KV cache, `past_key_values` before transformers 5.24), and the
    projected features as scattered into the slots:
    image_hidden_states (`(num_images, num_image_slots, hidden_size)`, *optional*).
    audio_hidden_states (`(num_audio_slot_positions, hidden_size)`, *optional*): every window's, padding slots dropped.
    image_outputs, audio_outputs (`BaseModelOutputWithPooling`, *optional*): the getters' outputs (`_MediaOutputs`).
    """


@dataclass
class MMMModalCausalLMOutputWithPast(_MediaOutputs, CausalLMOutputWithPast):
    r"""
    loss (`(1,)`, *optional*): next-token loss, when `labels` are given; logits (`(batch, sequence, vocab)`);
    cache, image_hidden_states, audio_hidden_states, image_outputs, audio_outputs: as in `MMMModalModelOutputWithPast`.
    """


class MMMModalImageProjector(nn.Module):
    """LLaVA-style projector, as published: Linear(d_vision -> H), GELU, Linear(H -> H)."""

    def __init__(self, config: MMMModalConfig):
        super().__init__()
        hidden_size = config.text_config.hidden_size
        self.linear_1 = nn.Linear(config.vision_config.hidden_size, hidden_size)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(image_features)))


class MMMModalAudioProjector(nn.Module):
    """As published: Conv1d over time (d_audio -> H, kernel 40, stride 3), GELU, Linear(H -> H).

    The strided convolution shortens 1500 Whisper frames to 487 slots per 30 s window.
    """

    def __init__(self, config: MMMModalConfig):
        super().__init__()
        hidden_size = config.text_config.hidden_size
        kernel, stride = config.audio_conv_kernel, config.audio_conv_stride
        self.conv = nn.Conv1d(config.audio_config.d_model, hidden_size, kernel_size=kernel, stride=stride)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear = nn.Linear(hidden_size, hidden_size)

    def forward(self, audio_features: torch.Tensor) -> torch.Tensor:
        # (windows, frames, d_audio) -> (windows, d_audio, frames) for the conv, then back. Contiguous as
        # published: a linear layer on the transposed view rounds differently (1e-7), and moves every logit.
        hidden_states = self.conv(audio_features.transpose(1, 2).contiguous()).transpose(1, 2).contiguous()
        return self.linear(self.act(hidden_states))


class MMMModalPreTrainedModel(PreTrainedModel):
    config: MMMModalConfig  # transformers reads config_class from this annotation
    base_model_prefix = "model"
    input_modalities = ("image", "audio", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = [CACHE_NAME]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @classmethod
    def is_custom_code(cls) -> bool:
        """False: every module here initialises through `transformers.initialization`, as the library's own models do.
        Taken for custom code, weights missing from a checkpoint skipped the towers' own schemes (Whisper's sinusoidal
        positions came out as N(0, 0.02) noise, SigLIP's MLPs without their Xavier init)."""
        return False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """As `PreTrainedModel.from_pretrained`, but from safetensors only (a pickled `pytorch_model.bin` can run
        code when read: a folder holding only that is refused, saying how to convert it), and a bitsandbytes
        `quantization_config` quantizes the language model alone (`UNQUANTIZED_PARTS`)."""
        if kwargs.get("use_safetensors") is False or kwargs.get("gguf_file") is not None:
            raise ValueError("MMMModal loads safetensors weights only (no use_safetensors=False, no gguf_file).")
        kwargs["use_safetensors"] = True
        bnb = kwargs.get("quantization_config")
        if getattr(bnb, "quant_method", None) == "bitsandbytes" and bnb.llm_int8_skip_modules is None:
            kwargs["quantization_config"] = bnb = copy.deepcopy(bnb)
            bnb.llm_int8_skip_modules = list(UNQUANTIZED_PARTS)
        try:
            model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except OSError as error:
            if "safetensors" not in str(error) and ".bin" not in str(error):
                raise
            raise OSError(
                f"No safetensors weights in {pretrained_model_name_or_path}: MMMModal never loads pickled "
                "weights (pytorch_model.bin can execute code when read). Convert them once, in a process you "
                "trust, with `mmmmodal convert` or `model.save_pretrained(folder)`, which writes safetensors."
            ) from error
        if hasattr(model, "suppress_slot_tokens"):  # a folder saved before the slots were suppressed
            model.suppress_slot_tokens()
        return model

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        """Checkpoints from before the towers were trimmed hold weights that never reach the features:
        they are dropped with one notice instead of transformers' unexpected-keys report."""
        super()._adjust_missing_and_unexpected_keys(loading_info)
        unused = {key for key in loading_info.unexpected_keys if _UNUSED_TOWER_KEY.search(key)}
        if unused:
            loading_info.unexpected_keys = set(loading_info.unexpected_keys) - unused
            # `...encoder.layers.11.mlp.fc1.weight` -> `...encoder.layers.11`; `...head.mlp.fc1.bias` -> `...head`.
            parts = sorted(
                {(re.match(r"(.*?\.(layers\.\d+|head))\.", k) or re.match(r"(.*)\.", k))[1] for k in unused}
            )
            logger.warning("Dropped %d tensors that never reach the features (encoder layers after the feature layer, "
                           "final norms, SigLIP's pooling head): %s. Save the model again to store it without them.",
                           len(unused), ", ".join(parts))  # fmt: skip


class MMMModalModel(MMMModalPreTrainedModel):
    """Encoders, projectors and the language model without its head.

    Only the SigLIP vision tower and the Whisper encoder are built, and each only up to its feature
    layer: the SigLIP text tower, the Whisper decoder, the encoder layers after the feature layer,
    the final norms and SigLIP's pooling head never contribute, so they are neither computed nor
    stored (its `last_hidden_state` is the feature). The configs still describe the full towers
    (`vision_feature_layer=-2` of 12 layers builds 11).
    """

    def __init__(self, config: MMMModalConfig):
        super().__init__(config)
        cuts = tower_cuts(config)
        (vision_layers, _), (audio_layers, keep_audio_norm) = cuts["vision"], cuts["audio"]
        vision_config, audio_config = copy.deepcopy(config.vision_config), copy.deepcopy(config.audio_config)
        vision_config.update({"num_hidden_layers": vision_layers, "vision_use_head": False})
        audio_config.encoder_layers = audio_layers
        self.vision_tower = AutoModel.from_config(vision_config)
        self.vision_tower.post_layernorm = nn.Identity()  # SigLIP's hidden states are read before it
        self.audio_tower = WhisperEncoder(audio_config)
        if not keep_audio_norm:
            self.audio_tower.layer_norm = nn.Identity()
        self.image_projector = MMMModalImageProjector(config)
        self.audio_projector = MMMModalAudioProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, tower_states=None, pooled_images=None, **kwargs
    ) -> BaseModelOutputWithPooling:
        """SigLIP hidden state at `vision_feature_layer` (no pooling) in `last_hidden_state`, projected in
        `pooler_output` (`(num_images, num_image_slots, hidden_size)`): all images of a batch in one tower call.
        `output_hidden_states` / `output_attentions` return the tower's, as transformers' getters do.
        `tower_states`: that hidden state when already computed (a frozen tower's, remembered): the tower does not run.
        `pooled_images` (bool per image): those images' projected slots are averaged in 2x2 groups (video frames, on
        request, as LLaVA-OneVision pools them); `pooler_output` is then every image's slots, flat: `(slots, hidden)`."""
        if tower_states is not None:
            tower = BaseModelOutputWithPooling(last_hidden_state=tower_states)
        else:
            tower_dtype = self.vision_tower.get_input_embeddings().weight.dtype
            tower = self.vision_tower(pixel_values.to(tower_dtype), **_tower_outputs(kwargs))
        hidden, features = tower.last_hidden_state, self.image_projector(tower.last_hidden_state)
        if pooled_images is not None and bool(pooled_images.any()):
            grid = [side // self.config.vision_config.patch_size for side in pixel_values.shape[-2:]]
            pooled = nn.functional.avg_pool2d(features.unflatten(1, grid).permute(0, 3, 1, 2), 2, ceil_mode=True)
            pooled, chosen = pooled.flatten(2).transpose(1, 2), pooled_images.tolist()
            features = torch.cat([pooled[i] if chosen[i] else features[i] for i in range(len(chosen))])
        return BaseModelOutputWithPooling(hidden, features, tower.hidden_states, tower.attentions)

    @can_return_tuple
    def get_audio_features(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor | None = None, tower_states=None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:  # fmt: skip
        """Whisper encoder hidden state at `audio_feature_layer` (`last_hidden_state`), projected (`pooler_output`).

        `input_features` holds one log-mel window per row (a long clip spans consecutive rows), and
        `input_features_mask` its real frames. With `config.trim_audio_padding` each window keeps
        `num_real_audio_slots` slots (all without a mask): `pooler_output` is `(num_slots, hidden_size)`.
        `tower_states`: as `get_image_features`'.
        """
        if tower_states is not None:
            tower = BaseModelOutputWithPooling(last_hidden_state=tower_states)
        else:
            tower = self.audio_tower(input_features.to(self.audio_tower.conv1.weight.dtype), **_tower_outputs(kwargs))
        hidden, features = tower.last_hidden_state, self.audio_projector(tower.last_hidden_state)
        kept = torch.tensor(self.audio_slots_per_window(input_features, input_features_mask), device=features.device)
        if len(kept) != len(features):  # transformers' pipelines collate each batched conversation's first window only
            raise ValueError(f"input_features holds {len(features)} windows, input_features_mask {len(kept)} rows")
        keep = torch.arange(features.shape[1], device=features.device) < kept[:, None]
        return BaseModelOutputWithPooling(hidden, features[keep], tower.hidden_states, tower.attentions)

    def audio_slots_per_window(self, input_features: torch.Tensor, input_features_mask=None) -> list[int]:
        """Slots each window fills: all of a window's, or with `trim_audio_padding` those starting in real audio."""
        frames = whisper_encoder_frames(input_features.shape[-1])
        window = num_audio_slots(frames, self.config.audio_conv_kernel, self.config.audio_conv_stride)
        if not self.config.trim_audio_padding or input_features_mask is None:
            return [window] * input_features.shape[0]
        stride = self.config.audio_conv_stride
        return [num_real_audio_slots(n, window, stride) for n in input_features_mask.sum(-1).tolist()]

    def _check_context(self, position_ids: torch.Tensor | None, total_positions: int) -> None:
        """Raise, naming the samples and the excess, when a prefill needs more positions than the LM has."""
        limit = getattr(self.config.text_config, "max_position_embeddings", None)
        rope = getattr(self.config.text_config, "rope_parameters", None) or {}
        if limit is not None and rope.get("rope_type", "default") != "default":  # scaled RoPE reaches further
            limit = max(limit, int((rope.get("original_max_position_embeddings") or limit) * rope.get("factor", 1)))
        if limit is None or total_positions <= limit:
            return  # no row can be longer than the whole input
        lengths = [total_positions]
        if position_ids is not None:  # padded and packed rows: the highest position counts
            lengths = (position_ids.reshape(-1, position_ids.shape[-1]).amax(-1) + 1).tolist()
        too_long = [
            f"sample {row + 1}: {n} positions, {n - limit} too many" for row, n in enumerate(lengths) if n > limit
        ]
        if too_long:
            raise ValueError(
                f"The input does not fit the language model's context of {limit} positions ({'; '.join(too_long)}). "
                "Drop turns or media, take fewer video frames (`num_frames`) or less audio (`max_audio_seconds`)."
            )

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, features: torch.Tensor, modality: str
    ) -> torch.Tensor:
        """Where the `modality` ("image" or "audio") slots are, broadcast to the embedding width; one per feature."""
        token_id = getattr(self.config, f"{modality}_token_id")
        if input_ids is None:
            slot_embedding = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
            slot_mask = (inputs_embeds == slot_embedding).all(-1)
        else:
            slot_mask = input_ids == token_id
        num_slots, num_features = int(slot_mask.sum()), features.numel() // features.shape[-1]
        if num_slots != num_features:
            raise ValueError(
                f"The input holds {num_slots} {modality} slot tokens (id {token_id}) but the {modality} encoder "
                f"produced {num_features} features (shape {tuple(features.shape[:-1])}). Prepare inputs with "
                "MMMModalProcessor (same `trim_audio_padding` as the model) and build a config with its token ids "
                "(`MMMModalConfig(..., **processor.special_token_ids)`) so each medium gets the slots the model fills."
            )
        return slot_mask.unsqueeze(-1).expand_as(inputs_embeds)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        image_tower_states: torch.FloatTensor | None = None,
        audio_tower_states: torch.FloatTensor | None = None,
        pooled_images: torch.BoolTensor | None = None,
        graph_anchor: torch.Tensor | None = None,
        trainable_token_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> MMMModalModelOutputWithPast:
        r"""
        pixel_values (`(num_images, 3, height, width)`): every image of the batch, in slot order.
        input_features (`(num_audio_windows, num_mel_bins, num_mel_frames)`): every audio window, in slot order.
        input_features_mask (`(num_audio_windows, num_mel_frames)`): which mel frames hold real audio.
        pooled_images (`(num_images,)`, *optional*): which images fill a quarter of the slots (`get_image_features`).
        image_tower_states, audio_tower_states (*optional*): the towers' hidden states at their feature layers for
            those media, when already computed (training with frozen towers remembers them): the towers do not run.
        graph_anchor (*optional*): a zero added to the output, in training: one that depends on the branches a batch
            does not use, so that DDP and ZeRO see every trainable parameter take part (`training.py`).
        trainable_token_ids (*optional*): in training, the tokens whose embedding rows learn from `input_ids`' lookups;
            every other token's lookup is detached (`align` trains the tags' rows alone).
        cache, past_key_values (`Cache`, *optional*): the KV cache, under either name (see `CACHE_NAME`).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        cache = _one_cache(cache, past_key_values)
        past_length = cache.get_seq_length() if cache is not None else 0
        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2 and past_length == 0:
            # Left-padded rows start counting at their first real token, as `generate` does.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        new_positions = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        if new_positions > 1:  # a prefill: refuse what does not fit before any encoder runs
            self._check_context(position_ids, past_length + new_positions)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
            if trainable_token_ids is not None:
                learns = torch.isin(input_ids, trainable_token_ids.to(input_ids.device)).unsqueeze(-1)
                inputs_embeds = torch.where(learns, inputs_embeds, inputs_embeds.detach())

        image = audio = image_features = audio_features = None
        if pixel_values is not None and pixel_values.shape[0] > 0:
            image = self.get_image_features(
                pixel_values, image_tower_states, pooled_images, return_dict=True, **kwargs
            )
            image_features = image.pooler_output.to(inputs_embeds.dtype)
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_features, "image")
            inputs_embeds = inputs_embeds.masked_scatter(mask, image_features)
        if input_features is not None and input_features.shape[0] > 0:
            audio = self.get_audio_features(
                input_features, input_features_mask, audio_tower_states, return_dict=True, **kwargs
            )
            audio_features = audio.pooler_output.to(inputs_embeds.dtype)
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, audio_features, "audio")
            inputs_embeds = inputs_embeds.masked_scatter(mask, audio_features)

        outputs = self.language_model(
            attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds, use_cache=use_cache,
            **{CACHE_NAME: cache}, **kwargs,
        )  # fmt: skip
        hidden = outputs.last_hidden_state
        return MMMModalModelOutputWithPast(
            last_hidden_state=hidden if graph_anchor is None else hidden + graph_anchor.to(hidden.dtype),
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
            audio_hidden_states=audio_features,
            image_outputs=image,
            audio_outputs=audio,
        )


class MMMModalForConditionalGeneration(MMMModalPreTrainedModel, GenerationMixin):
    """MMMModal with a language-modelling head: `forward` with `labels` gives the loss, `generate` chats.

    The encoders run once, at prefill: `generate` drops `pixel_values`, `input_features` and
    `input_features_mask` after the first step, and the KV cache carries the media from there.
    """

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}  # as Llama's: the head beside the sharded embedding

    def __init__(self, config: MMMModalConfig):
        super().__init__(config)
        self.model = MMMModalModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        self.suppress_slot_tokens()

    def suppress_slot_tokens(self) -> None:
        """Add the two slot tokens to `generation_config.suppress_tokens`: they are inputs only, never a reply."""
        config = self.generation_config
        slots = {self.config.image_token_id, self.config.audio_token_id}
        config.suppress_tokens = sorted(slots | set(config.suppress_tokens or ()))

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        return self.model.get_image_features(pixel_values, **kwargs)

    def get_audio_features(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        return self.model.get_audio_features(input_features, input_features_mask, **kwargs)

    def _media_groups(self, input_ids: torch.Tensor, model_kwargs: dict):
        """Per modality given: its input keys, slot token, the slots each media row fills, and how many rows each
        prompt takes (rows are taken in order until a prompt's slots are filled). Skipped where slots and media
        disagree: `forward` names the mismatch."""
        patch = self.config.vision_config.patch_size
        image_slots = lambda rows, pooled=None: [  # noqa: E731
            num_image_slots(*rows.shape[-2:], patch, p) for p in (pooled.tolist() if pooled is not None else [0] * len(rows))
        ]  # fmt: skip
        for keys, token, slots_per_row in (
            ((*MEDIA_INPUT_NAMES["image"], "pooled_images"), self.config.image_token_id, image_slots),
            (MEDIA_INPUT_NAMES["audio"], self.config.audio_token_id, self.model.audio_slots_per_window),
        ):
            if input_ids is None or model_kwargs.get(keys[0]) is None:
                continue
            per_row = slots_per_row(*(model_kwargs.get(key) for key in keys))
            rows, counts = iter(per_row), []
            for wanted in (input_ids == token).sum(-1).tolist():
                counts.append(0)
                while wanted > 0:
                    wanted, counts[-1] = wanted - next(rows, wanted), counts[-1] + 1
            if sum(counts) == len(per_row):
                yield [key for key in keys if model_kwargs.get(key) is not None], token, per_row, counts

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        """As `GenerationMixin`'s, but each prompt's media rows (its images, its clips' windows) repeat as a group,
        [A, B] -> [A, B, A, B]: repeated row by row ([A, A, B, B]), copies would see other prompts' media."""
        media = {}
        for keys, _, _, counts in list(self._media_groups(input_ids, model_kwargs)) if expand_size > 1 else []:
            for key in keys:
                groups = model_kwargs.pop(key).split(counts)
                media[key] = torch.cat([group.repeat(expand_size, *[1] * (group.ndim - 1)) for group in groups])
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **model_kwargs
        )
        return input_ids, {**model_kwargs, **media}

    def prepare_inputs_for_generation(self, input_ids, *args, inputs_embeds=None, **kwargs):
        """As `GenerationMixin`'s. Continuing a KV cache with the prompt's media given again (as transformers' own
        continuation does), only the media whose slots the cache does not hold yet are encoded."""
        model_inputs = super().prepare_inputs_for_generation(input_ids, *args, inputs_embeds=inputs_embeds, **kwargs)
        cache = model_inputs.get(CACHE_NAME)
        past = cache.get_seq_length() if cache is not None and input_ids is not None else 0
        for keys, token, per_row, counts in list(self._media_groups(input_ids, model_inputs)) if past else []:
            keep, rows = [], iter(per_row)
            for prompt_rows, cached_slots in zip(counts, (input_ids[:, :past] == token).sum(-1).tolist()):
                seen = 0
                for _ in range(prompt_rows):  # a row whose slots start in the cache is the cache's
                    keep.append(seen >= cached_slots)
                    seen += next(rows)
            for key in keys:
                model_inputs[key] = model_inputs[key][torch.tensor(keep, dtype=torch.bool)]
        return model_inputs

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        pooled_images: torch.BoolTensor | None = None,
        **kwargs,
    ) -> MMMModalCausalLMOutputWithPast:
        r"""
        labels (`(batch_size, sequence_length)`, *optional*): targets for the next-token loss; -100 is ignored.
        cache, past_key_values (`Cache`, *optional*): the KV cache, under either name (see `CACHE_NAME`).
        pooled_images: as in `MMMModalModel.forward`.
        logits_to_keep: compute logits only for the last N positions (an int), at these indices (a tensor), or where a
            boolean `(batch_size, sequence_length)` mask is true: `(num_kept, vocab)` logits, as training's loss at its
            labelled positions asks (no `labels` with a mask: the loss is the caller's).
        """
        if labels is not None and torch.is_tensor(logits_to_keep) and logits_to_keep.dtype == torch.bool:
            raise ValueError("`labels` need logits at every position; with a `logits_to_keep` mask, compute the loss")
        outputs = self.model(
            input_ids, pixel_values, input_features, input_features_mask, attention_mask, position_ids,
            cache=_one_cache(cache, past_key_values), inputs_embeds=inputs_embeds, use_cache=use_cache,
            pooled_images=pooled_images, return_dict=True, **kwargs,
        )  # fmt: skip
        hidden_states = outputs.last_hidden_state
        if torch.is_tensor(logits_to_keep) and logits_to_keep.dtype == torch.bool:
            logits = self.lm_head(hidden_states[logits_to_keep.to(hidden_states.device)])
        else:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.lm_head(hidden_states[:, keep, :])
        loss, vocab_size = None, self.config.text_config.vocab_size
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=vocab_size, **kwargs)
        return MMMModalCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
            audio_hidden_states=outputs.audio_hidden_states,
            image_outputs=outputs.image_outputs,
            audio_outputs=outputs.audio_outputs,
        )


MMMModalForConditionalGeneration.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "tower_cuts", "MMMModalPreTrainedModel", "MMMModalModel", "MMMModalForConditionalGeneration",
    "MMMModalImageProjector", "MMMModalAudioProjector",
]  # fmt: skip
