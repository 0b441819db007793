"""MMMModal: SigLIP vision + Whisper audio encoders projected into a causal language model.

Follow one image from pixels to the language model: `get_image_features` (SigLIP, hidden state of
`vision_feature_layer`, image projector) -> `get_placeholder_mask` (where its slots are) ->
`forward` (one `masked_scatter` over the whole batch). Audio takes the same path through Whisper's
encoder and the Conv1d audio projector. The processor decides how many slots each medium gets;
this module only fills them, so there is no Python loop over items.
"""

import copy
import hashlib
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .configuration_mmmmodal import MMMModalConfig, encoder_layers_needed, num_real_audio_slots

logger = logging.getLogger(__name__)

# Any checkpoint key under a tower that the tower does not have: a layer after the feature layer,
# a final norm or SigLIP's pooling head. Such keys come from checkpoints saved before towers were trimmed.
_UNUSED_TOWER_KEY = re.compile(r"(^|\.)(vision_tower|audio_tower)\.")

# Left unquantized by bitsandbytes unless `llm_int8_skip_modules` says otherwise: the towers and projectors are
# under a tenth of a 7B model's weights, and every image and audio slot passes through them; the LM head as usual.
UNQUANTIZED_PARTS = (
    "model.vision_tower",
    "model.audio_tower",
    "model.image_projector",
    "model.audio_projector",
    "lm_head",
)

# transformers 5.24 renamed the KV cache argument and output field `past_key_values` to `cache` (the
# old name is accepted, with a warning, until 5.40). This module speaks the installed version's name
# to the language model and in its outputs, and its `forward` takes either, so one Hub checkout
# works on both sides of the rename.
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def _tower_parts(tower: nn.Module) -> tuple[nn.ModuleList, str]:
    """The layer list and the name of the final norm of a SigLIP vision model or a Whisper encoder."""
    if hasattr(tower, "encoder") and hasattr(tower, "post_layernorm"):
        return tower.encoder.layers, "post_layernorm"
    return tower.layers, "layer_norm"


def trim_tower(tower: nn.Module, layers_kept: int, keep_final_norm: bool = False) -> dict[str, int]:
    """Remove what never reaches the features: layers from `layers_kept` on, the final norm, a pooling head.

    After trimming, the tower's `last_hidden_state` is exactly `hidden_states[feature_layer]` of
    the full tower. That hidden state comes before the final norm, except Whisper's last one
    (transformers ties it to the normed output): `keep_final_norm` keeps the norm for that case.
    Works in place on a SigLIP vision model or a Whisper encoder (built here or loaded); returns
    the parameters removed, by part.
    """
    layers, norm_name = _tower_parts(tower)
    removed = {}
    extra = [layer for index, layer in enumerate(layers) if index >= layers_kept]
    if extra:
        last = len(layers) - 1
        name = f"layer {last}" if last == layers_kept else f"layers {layers_kept}-{last}"
        removed[name] = sum(p.numel() for layer in extra for p in layer.parameters())
        del layers[layers_kept:]
    norm = getattr(tower, norm_name)
    if not keep_final_norm and not isinstance(norm, nn.Identity):
        removed[norm_name] = sum(p.numel() for p in norm.parameters())
        setattr(tower, norm_name, nn.Identity())
    if getattr(tower, "use_head", False):
        removed["head"] = sum(p.numel() for p in tower.head.parameters())
        del tower.head
        tower.use_head = False
    return removed


def tower_cuts(config: MMMModalConfig) -> dict[str, tuple[int, bool]]:
    """Per tower ("vision", "audio"): the layers its feature layer needs, and whether its final norm stays.

    SigLIP's hidden states are read before `post_layernorm`; Whisper's last one is tied to the
    normed output, so its norm stays only when the feature layer is the last layer.
    """
    vision = encoder_layers_needed(config.vision_feature_layer, config.vision_config.num_hidden_layers)
    audio = encoder_layers_needed(config.audio_feature_layer, config.audio_config.encoder_layers)
    return {"vision": (vision, False), "audio": (audio, audio == config.audio_config.encoder_layers)}


def _checkpoint_part(key: str) -> str:
    """`...encoder.layers.11.mlp.fc1.weight` -> `...encoder.layers.11`; `...head.mlp.fc1.bias` -> `...head`."""
    match = re.match(r"(.*?\.layers\.\d+)\.", key) or re.match(r"(.*?\.head)\.", key)
    return match.group(1) if match else key.rsplit(".", 1)[0]


def _trimmed_config(sub_config, depth_attribute: str, layers_kept: int, **overrides):
    config = copy.deepcopy(sub_config)
    setattr(config, depth_attribute, layers_kept)
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def _one_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The KV cache a caller passed as `cache` (transformers >= 5.24) or `past_key_values` (before)."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("Pass the KV cache once, as `cache` or as `past_key_values`, not both.")
    return cache if cache is not None else past_key_values


@dataclass
class MMMModalModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`).
    cache (`Cache`, *optional*): the language model's KV cache (`past_key_values` before transformers 5.24).
    image_hidden_states (`torch.FloatTensor` of shape `(num_images, num_image_slots, hidden_size)`, *optional*):
        projected image features, as scattered into the image slots.
    audio_hidden_states (`torch.FloatTensor` of shape `(num_audio_slot_positions, hidden_size)`, *optional*):
        projected audio features of every window, padding slots dropped, as scattered into the audio slots.
    """

    image_hidden_states: torch.FloatTensor | None = None
    audio_hidden_states: torch.FloatTensor | None = None


@dataclass
class MMMModalCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*): next-token loss, when `labels` are given.
    logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`): in training mode with
        `labels`, only the labelled positions' logits, `(num_labelled, vocab_size)` (the head runs nowhere else).
    cache (`Cache`, *optional*): the language model's KV cache (`past_key_values` before transformers 5.24).
    image_hidden_states (`torch.FloatTensor` of shape `(num_images, num_image_slots, hidden_size)`, *optional*).
    audio_hidden_states (`torch.FloatTensor` of shape `(num_audio_slot_positions, hidden_size)`, *optional*).
    """

    image_hidden_states: torch.FloatTensor | None = None
    audio_hidden_states: torch.FloatTensor | None = None


def _index_embedding(config: MMMModalConfig) -> nn.Embedding | None:
    """Ordinal embeddings a projector adds to its media's slots (`config.media_index_embeddings`), or None."""
    if config.media_index_embeddings <= 0:
        return None
    return nn.Embedding(config.media_index_embeddings, config.text_config.hidden_size)


def media_ordinals(slot_mask: torch.Tensor, position_ids: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
    """For each position, which medium of its conversation the slot belongs to (1, 2, ...), or 0 off slots.

    A medium is one unbroken run of slots (a long clip's windows are consecutive). Counting restarts
    wherever `position_ids` does, so conversations packed into one row count separately; `offset`
    is how many media of this kind the conversation held before these positions (a chat continuing
    from its KV cache).
    """
    previous = nn.functional.pad(slot_mask[:, :-1], (1, 0), value=False)
    starts = (slot_mask & ~previous).long()
    count = starts.cumsum(-1)
    if position_ids is not None and position_ids.dim() == 2 and position_ids.shape == slot_mask.shape:
        # Media counted before the start of the conversation each position belongs to.
        before = torch.where(position_ids == 0, count - starts, torch.zeros_like(count))
        count = count - torch.cummax(before, dim=-1).values
    return torch.where(slot_mask, count + offset, torch.zeros_like(count))


class MMMModalPreviousTokenMix(nn.Module):
    """Learned linear maps of the tokens just before each position, added to its input (`config.previous_token_mix`).

    The j-th map reads the token j positions back, for j = 1 .. `config.previous_token_mix`: a short
    causal mixing of token embeddings before the first layer, as short convolutions do in Mamba and
    Hyena, so a word of several tokens is whole at its last one. Started at zero, so a new model
    computes what it would without it. A token counts only within its conversation: j back needs
    position >= j (each packed conversation and each left-padded row starts at position 0). The
    tokens are ids, as the tokenizer wrote them: a medium's slots give the slot token's embedding,
    never a feature. The maps lie side by side in one hidden x (window x hidden) weight, the j-th
    in its j-th block of columns, so a one-token mix has the hidden x hidden weight it always had.
    """

    def __init__(self, config: MMMModalConfig):
        super().__init__()
        self.hidden_size = config.text_config.hidden_size
        self.window = int(config.previous_token_mix)
        self.weight = nn.Parameter(torch.zeros(self.hidden_size, self.window * self.hidden_size))

    def forward(
        self,
        token_embeds: torch.Tensor,
        embed_tokens: nn.Module,
        previous_token_ids: torch.LongTensor | None,
        position_ids: torch.LongTensor | None,
    ) -> torch.Tensor:
        """What to add to inputs whose token embeddings are `token_embeds`.

        `previous_token_ids`, shape (batch, up to window): the tokens just before the first input,
        when the inputs continue a KV cache (fewer only when the cache holds fewer); without them
        nothing comes before the first input.
        """
        batch, length = token_embeds.shape[:2]
        if previous_token_ids is None:
            context, known = token_embeds, 0
        elif (
            previous_token_ids.dim() != 2
            or previous_token_ids.shape[0] != batch
            or not (1 <= previous_token_ids.shape[1] <= self.window)
        ):
            raise ValueError(
                f"previous_token_ids has shape {tuple(previous_token_ids.shape)}; expected {(batch, self.window)}: "
                f"the {self.window} token(s) just before the first of input_ids in each row"
            )
        else:
            context = torch.cat([embed_tokens(previous_token_ids).to(token_embeds.dtype), token_embeds], dim=1)
            known = previous_token_ids.shape[1]
        # `window` positions before the first input, zeros where nothing was given.
        context = nn.functional.pad(context, (0, 0, self.window - known, 0))
        index = torch.arange(length, device=token_embeds.device)
        positions = None
        if position_ids is not None and position_ids.dim() == 2 and tuple(position_ids.shape) == (batch, length):
            positions = position_ids
        mixed = torch.zeros_like(token_embeds)
        for back in range(1, self.window + 1):
            has_token = (index >= back - known).expand(batch, length)
            if positions is not None:
                has_token = has_token & (positions >= back)
            tokens = context[:, self.window - back : self.window - back + length]
            weight = self.weight[:, (back - 1) * self.hidden_size : back * self.hidden_size]
            mapped = nn.functional.linear(tokens, weight.to(tokens.dtype))
            mixed = mixed + mapped * has_token.unsqueeze(-1).to(mapped.dtype)
        return mixed


class MMMModalImageProjector(nn.Module):
    """LLaVA-style projector, as published: Linear(d_vision -> H), GELU, Linear(H -> H)."""

    def __init__(self, config: MMMModalConfig):
        super().__init__()
        hidden_size = config.text_config.hidden_size
        self.linear_1 = nn.Linear(config.vision_config.hidden_size, hidden_size)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(hidden_size, hidden_size)
        self.index_embedding = _index_embedding(config)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(image_features)))


class MMMModalAudioProjector(nn.Module):
    """As published: Conv1d over time (d_audio -> H, kernel 40, stride 3), GELU, Linear(H -> H).

    The strided convolution shortens 1500 Whisper frames to 487 slots per 30 s window.
    """

    def __init__(self, config: MMMModalConfig):
        super().__init__()
        hidden_size = config.text_config.hidden_size
        self.conv = nn.Conv1d(
            config.audio_config.d_model,
            hidden_size,
            kernel_size=config.audio_conv_kernel,
            stride=config.audio_conv_stride,
        )
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear = nn.Linear(hidden_size, hidden_size)
        self.index_embedding = _index_embedding(config)

    def forward(self, audio_features: torch.Tensor) -> torch.Tensor:
        # (windows, frames, d_audio) -> (windows, d_audio, frames) for the conv, then back. Contiguous as
        # published: a linear layer on the transposed view rounds differently (1e-7), and moves every logit.
        hidden_states = self.conv(audio_features.transpose(1, 2).contiguous()).transpose(1, 2).contiguous()
        return self.linear(self.act(hidden_states))


class TowerOutputMemo:
    """A frozen tower's outputs for the media it has already seen, recognised by their input bytes.

    Training shows the same media again and again (each epoch, and in every conversation that
    reuses one), and a frozen tower gives the same features each time. The memo runs the tower only
    on inputs it has not seen and keeps at most `max_media` outputs, dropping the least recently
    used first. Each kept output is one medium's slots by the tower's width (SigLIP so400m at 384
    pixels: 729 x 1152 floats, 3.4 MB in float32), on the tower's device.
    """

    def __init__(self, name: str, tower: nn.Module, max_media: int):
        if max_media < 1:
            raise ValueError(f"max_media must be at least 1; got {max_media}")
        self.name, self.tower, self.max_media = name, tower, max_media
        self.outputs: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.check_frozen()

    def check_frozen(self) -> None:
        trainable = next((n for n, p in self.tower.named_parameters() if p.requires_grad), None)
        if trainable is not None:
            raise RuntimeError(
                f"the {self.name} tower has trainable parameters ({trainable}, ...): its outputs change as it "
                "trains and cannot be remembered. Freeze it or call `forget_tower_outputs()` first."
            )

    @staticmethod
    def key(row: torch.Tensor) -> bytes:
        data = row.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
        digest = hashlib.blake2b(data.tobytes(), digest_size=16)
        digest.update(f"{row.dtype}{row.device}{tuple(row.shape)}".encode())
        return digest.digest()

    def __call__(self, inputs: torch.Tensor, run) -> torch.Tensor:
        """`run(inputs)`'s result, with the tower run only on rows not seen before."""
        self.check_frozen()
        keys = [self.key(row) for row in inputs]
        first_row = {}
        for row, k in enumerate(keys):
            first_row.setdefault(k, row)
        missing = [k for k in first_row if k not in self.outputs]  # each new medium once, even if repeated
        if missing:
            with torch.no_grad():
                computed = run(inputs[[first_row[k] for k in missing]])
            for k, output in zip(missing, computed):
                self.outputs[k] = output
        for k in keys:
            self.outputs.move_to_end(k)
        result = torch.stack([self.outputs[k] for k in keys])
        while len(self.outputs) > self.max_media:
            self.outputs.popitem(last=False)
        return result


class MMMModalPreTrainedModel(PreTrainedModel):
    config: MMMModalConfig
    config_class = MMMModalConfig
    base_model_prefix = "model"
    input_modalities = ("image", "audio", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = [CACHE_NAME]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """As `PreTrainedModel.from_pretrained`, but weights load from safetensors only, and a bitsandbytes
        `quantization_config` quantizes the language model alone (see `UNQUANTIZED_PARTS`).

        A pickled checkpoint (`pytorch_model.bin`) can run code when unpickled; a folder or repo
        holding only that is refused with a message saying how to convert it.
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError("MMMModal loads safetensors weights only; use_safetensors=False is not supported.")
        if kwargs.get("gguf_file") is not None:
            raise ValueError("MMMModal loads safetensors weights only; gguf_file is not supported.")
        kwargs["use_safetensors"] = True
        quantization = kwargs.get("quantization_config")
        if (
            getattr(quantization, "quant_method", None) == "bitsandbytes"
            and quantization.llm_int8_skip_modules is None
        ):
            kwargs["quantization_config"] = quantization = copy.deepcopy(quantization)
            quantization.llm_int8_skip_modules = list(UNQUANTIZED_PARTS)
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

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MMMModalPreviousTokenMix):
            init.zeros_(module.weight)  # a new model computes what it would without the mix

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        """Checkpoints from before the towers were trimmed hold weights that never reach the features:
        they are dropped with one notice instead of transformers' unexpected-keys report."""
        super()._adjust_missing_and_unexpected_keys(loading_info)
        unused = {key for key in loading_info.unexpected_keys if _UNUSED_TOWER_KEY.search(key)}
        if unused:
            loading_info.unexpected_keys = set(loading_info.unexpected_keys) - unused
            parts = sorted({_checkpoint_part(key) for key in unused})
            logger.warning(
                "Dropped %d tensors that never reach the features (encoder layers after the feature layer, final "
                "norms, SigLIP's pooling head): %s. Save the model again to store it without them.",
                len(unused),
                ", ".join(parts),
            )


class MMMModalModel(MMMModalPreTrainedModel):
    """Encoders, projectors and the language model without its head.

    Only the SigLIP vision tower and the Whisper encoder are built, and each only up to its feature
    layer: the SigLIP text tower, the Whisper decoder, the encoder layers after the feature layer,
    the final norms and SigLIP's pooling head never contribute, so they are neither computed nor
    stored. The configs still describe the full towers (`vision_feature_layer=-2` of 12 layers
    builds 11).
    """

    def __init__(self, config: MMMModalConfig):
        super().__init__(config)
        cuts = tower_cuts(config)
        (vision_layers, _), (audio_layers, keep_audio_norm) = cuts["vision"], cuts["audio"]
        vision_config = _trimmed_config(
            config.vision_config, "num_hidden_layers", vision_layers, vision_use_head=False
        )
        self.vision_tower = AutoModel.from_config(vision_config)
        self.audio_tower = WhisperEncoder(_trimmed_config(config.audio_config, "encoder_layers", audio_layers))
        trim_tower(self.vision_tower, vision_layers)
        trim_tower(self.audio_tower, audio_layers, keep_final_norm=keep_audio_norm)
        self.image_projector = MMMModalImageProjector(config)
        self.audio_projector = MMMModalAudioProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.previous_token_mix = MMMModalPreviousTokenMix(config) if config.previous_token_mix else None
        self.tower_memos: dict[str, TowerOutputMemo] = {}
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    def remember_tower_outputs(self, max_media: int) -> None:
        """Run each frozen tower once per distinct medium and reuse its output (see `TowerOutputMemo`).

        For training with frozen towers, as both published stages are: the projectors and the LM still
        see every medium each time. Refused for a tower that trains or has dropout, whose outputs vary.
        """
        dropout = {
            "vision": [self.config.vision_config.attention_dropout],
            "audio": [
                getattr(self.config.audio_config, name)
                for name in ("dropout", "attention_dropout", "activation_dropout")
            ],
        }
        for name, rates in dropout.items():
            if any(rates):
                raise ValueError(f"the {name} tower has dropout {max(rates)}: its outputs vary between calls")
        self.tower_memos = {
            "vision": TowerOutputMemo("vision", self.vision_tower, max_media),
            "audio": TowerOutputMemo("audio", self.audio_tower, max_media),
        }

    def forget_tower_outputs(self) -> None:
        """Drop the remembered tower outputs and run the towers on every call again."""
        self.tower_memos = {}

    def _tower_output(self, name: str, tower: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        def run(rows):
            return tower(rows).last_hidden_state

        memo = self.tower_memos.get(name)
        return run(inputs) if memo is None else memo(inputs, run)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """SigLIP hidden state at `vision_feature_layer` (no pooling), projected.

        Returns `(num_images, num_image_slots, hidden_size)`: all images of a batch in one tower call.
        """
        tower_dtype = self.vision_tower.get_input_embeddings().weight.dtype
        # The tower ends at the feature layer with no final norm: its last hidden state is the feature.
        return self.image_projector(self._tower_output("vision", self.vision_tower, pixel_values.to(tower_dtype)))

    def get_audio_features(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Whisper encoder hidden state at `audio_feature_layer`, projected, padding slots dropped.

        `input_features` holds one log-mel window per row (a long clip spans several consecutive
        rows); `input_features_mask` marks its real frames. With `config.trim_audio_padding`, each
        window keeps `num_real_audio_slots` slots (all of them when no mask is given). Returns
        `(num_audio_slot_positions, hidden_size)`, windows in order.
        """
        tower_dtype = self.audio_tower.conv1.weight.dtype
        features = self.audio_projector(self._tower_output("audio", self.audio_tower, input_features.to(tower_dtype)))
        if not self.config.trim_audio_padding or input_features_mask is None:
            return features.reshape(-1, features.shape[-1])
        window_slots = features.shape[1]
        kept = [
            num_real_audio_slots(n, window_slots, self.config.audio_conv_stride)
            for n in input_features_mask.sum(-1).tolist()
        ]
        keep = (
            torch.arange(window_slots, device=features.device)[None, :]
            < torch.tensor(kept, device=features.device)[:, None]
        )
        return features[keep]

    def _unused_branch_anchor(self, image_missing: bool, audio_missing: bool) -> torch.Tensor:
        """A zero that depends on every trainable parameter of the branches this batch does not use.

        Under DDP or ZeRO, a rank whose batch holds no image (or no audio) would otherwise leave
        that projector out of the graph and stall or fail the gradient reduction. The published
        fix prepended a blank image and 30 s of silence to every sample (1065 dead positions and
        two encoder passes); this costs one empty projector call and adds exact zeros.
        """
        anchor = torch.zeros((), device=self.image_projector.linear_1.weight.device)
        branches = []
        if image_missing:
            empty = self.image_projector.linear_1.weight.new_zeros(0, self.config.vision_config.hidden_size)
            anchor = anchor + self.image_projector(empty).sum() * 0.0
            branches += [self.vision_tower, self.image_projector.index_embedding]
        if audio_missing:
            empty = self.audio_projector.conv.weight.new_zeros(
                0, self.config.audio_conv_kernel, self.config.audio_config.d_model
            )
            anchor = anchor + self.audio_projector(empty).sum() * 0.0
            branches += [self.audio_tower, self.audio_projector.index_embedding]
        # Encoders (frozen in the published recipe) and ordinal embeddings join the same way when they train.
        for branch in filter(None, branches):
            for parameter in branch.parameters():
                if parameter.requires_grad:
                    anchor = anchor + parameter.sum() * 0.0
        return anchor.to(self.get_input_embeddings().weight.dtype)

    def _check_context(self, position_ids: torch.Tensor | None, total_positions: int) -> None:
        """Raise, naming the samples and the excess, when a prefill needs more positions than the LM has."""
        limit = getattr(self.config.text_config, "max_position_embeddings", None)
        if limit is None or total_positions <= limit:
            return  # no row can be longer than the whole input
        if position_ids is not None:  # padded and packed rows: the highest position counts
            lengths = (position_ids.reshape(-1, position_ids.shape[-1]).amax(-1) + 1).tolist()
        else:
            lengths = [total_positions]
        too_long = [(row, int(length)) for row, length in enumerate(lengths) if length > limit]
        if too_long:
            details = "; ".join(
                f"sample {row + 1}: {length} positions, {length - limit} too many" for row, length in too_long
            )
            raise ValueError(
                f"The input does not fit the language model's context of {limit} positions ({details}). "
                "Drop earlier turns or media, or use shorter audio (processor `max_audio_seconds`)."
            )

    def get_placeholder_mask(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor,
        features: torch.Tensor,
        token_id: int,
        modality: str,
    ) -> torch.Tensor:
        """Where the `modality` slots are, broadcast to the embedding width; checks one slot per feature."""
        if input_ids is None:
            slot_embedding = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
            slot_mask = (inputs_embeds == slot_embedding).all(-1)
        else:
            slot_mask = input_ids == token_id
        num_slots, num_features = int(slot_mask.sum()), features.numel() // features.shape[-1]
        if num_slots != num_features:
            raise ValueError(
                f"The input holds {num_slots} {modality} slot tokens (id {token_id}) but the {modality} encoder "
                f"produced {num_features} features (shape {tuple(features.shape[:-1])}). Prepare inputs "
                "with MMMModalProcessor (and the same `trim_audio_padding` as the model) so each medium gets "
                "exactly the slots the model fills."
            )
        return slot_mask.unsqueeze(-1).expand_as(inputs_embeds)

    def _with_media_index(
        self,
        features: torch.Tensor,
        slot_mask: torch.Tensor,
        projector: nn.Module,
        position_ids: torch.Tensor | None,
        offset: int,
        modality: str,
    ) -> torch.Tensor:
        """`features` (one row per slot, in slot order) plus each slot's ordinal embedding, if the model has them."""
        if projector.index_embedding is None:
            return features
        ordinals = media_ordinals(slot_mask, position_ids, offset)
        limit = projector.index_embedding.num_embeddings
        most = ordinals.amax(-1)
        if bool((most > limit).any()):
            rows = ", ".join(f"sample {row + 1}: {int(n)}" for row, n in enumerate(most.tolist()) if n > limit)
            raise ValueError(
                f"This model tells apart at most {limit} {modality}s per conversation "
                f"(config.media_index_embeddings); the input holds more ({rows}). Split the conversation."
            )
        index = projector.index_embedding(ordinals[slot_mask] - 1)
        return features.reshape(-1, features.shape[-1]) + index.to(features.dtype)

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
        image_index_offset: int = 0,
        audio_index_offset: int = 0,
        previous_token_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> MMMModalModelOutputWithPast:
        r"""
        pixel_values (`(num_images, 3, height, width)`): every image of the batch, in slot order.
        input_features (`(num_audio_windows, num_mel_bins, num_mel_frames)`): every audio window, in slot order.
        input_features_mask (`(num_audio_windows, num_mel_frames)`): which mel frames hold real audio.
        cache, past_key_values (`Cache`, *optional*): the KV cache, under either name (see `CACHE_NAME`).
        image_index_offset, audio_index_offset: images and clips the conversation held before `input_ids`
            (a chat continuing from its KV cache); used only with `config.media_index_embeddings`.
        previous_token_ids (`(batch_size, config.previous_token_mix)`, *optional*): the tokens just before
            `input_ids`, needed with `config.previous_token_mix` when they continue a KV cache (`generate`
            passes them).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        cache = _one_cache(cache, past_key_values)
        past_length = cache.get_seq_length() if cache is not None else 0
        if self.previous_token_mix is not None:
            if input_ids is None:
                raise ValueError(
                    "config.previous_token_mix maps the previous tokens' ids: pass input_ids, not inputs_embeds"
                )
            if past_length and previous_token_ids is None:
                raise ValueError(
                    f"config.previous_token_mix: input_ids continue a cache of {past_length} positions; pass "
                    "previous_token_ids, the tokens just before them (generate does)"
                )
        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2 and past_length == 0:
            # Left-padded rows start counting at their first real token, as `generate` does.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        new_positions = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        if new_positions > 1:  # a prefill: refuse what does not fit before any encoder runs
            self._check_context(position_ids, past_length + new_positions)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        token_embeds = inputs_embeds  # before the media's features replace their slots

        image_features = audio_features = None
        if pixel_values is not None and pixel_values.shape[0] > 0:
            image_features = self.get_image_features(pixel_values).to(inputs_embeds.dtype)
            mask = self.get_placeholder_mask(
                input_ids, inputs_embeds, image_features, self.config.image_token_id, "image"
            )
            slot_features = self._with_media_index(
                image_features, mask[..., 0], self.image_projector, position_ids, image_index_offset, "image"
            )
            inputs_embeds = inputs_embeds.masked_scatter(mask, slot_features)
        if input_features is not None and input_features.shape[0] > 0:
            audio_features = self.get_audio_features(input_features, input_features_mask).to(inputs_embeds.dtype)
            mask = self.get_placeholder_mask(
                input_ids, inputs_embeds, audio_features, self.config.audio_token_id, "audio"
            )
            slot_features = self._with_media_index(
                audio_features, mask[..., 0], self.audio_projector, position_ids, audio_index_offset, "audio"
            )
            inputs_embeds = inputs_embeds.masked_scatter(mask, slot_features)

        if self.previous_token_mix is not None:
            inputs_embeds = inputs_embeds + self.previous_token_mix(
                token_embeds, self.get_input_embeddings(), previous_token_ids, position_ids
            ).to(inputs_embeds.dtype)
        if self.training and torch.is_grad_enabled():
            inputs_embeds = inputs_embeds + self._unused_branch_anchor(image_features is None, audio_features is None)
            if use_cache is None:
                use_cache = False  # training never reads a cache; packed batches need none to keep their mask

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **{CACHE_NAME: cache},
            **kwargs,
        )
        return MMMModalModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
            audio_hidden_states=audio_features,
        )


class MMMModalForConditionalGeneration(MMMModalPreTrainedModel, GenerationMixin):
    """MMMModal with a language-modelling head: `forward` with `labels` gives the loss, `generate` chats.

    The encoders run once, at prefill: `generate` drops `pixel_values`, `input_features` and
    `input_features_mask` after the first step, and the KV cache carries the media from there.
    """

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: MMMModalConfig):
        super().__init__(config)
        self.model = MMMModalModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        # Set by `grow_head_from_targets`: which head rows a training target has reached (bool, one per
        # token), and each token's group of rows that stay equal until then.
        self.head_rows_in_use: torch.Tensor | None = None
        self.head_row_groups: torch.Tensor | None = None
        self.post_init()
        self.suppress_slot_tokens()

    def suppress_slot_tokens(self) -> None:
        """Add the two slot tokens to `generation_config.suppress_tokens`: they are inputs only, never a reply."""
        config = self.generation_config
        slots = {self.config.image_token_id, self.config.audio_token_id}
        config.suppress_tokens = sorted(slots | set(config.suppress_tokens or ()))

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module):
        self.lm_head = new_embeddings

    def grow_head_from_targets(self, rows_in_use=None, groups: int | None = None) -> None:
        """Compute the LM head, in training, on the rows of tokens its targets have held, and one row per group.

        For a language model trained from scratch with a large vocabulary of which little is used (the
        demo's: the 32k Mistral tokenizer, a few hundred tokens in its answers), where the head over the
        whole vocabulary costs more than the layers. The vocabulary is cut into `groups` runs of
        consecutive tokens, and the rows of a run that no target has reached are made equal (to its
        first row). Equal rows have equal logits, so the softmax gives them equal gradients and they
        stay equal: one column, their row's logit plus log(how many), stands for them all. The loss and
        every row's gradient are those of the head over the whole vocabulary; only the start differs
        (`groups` distinct rows outside `rows_in_use` instead of one per token), and `generate` needs
        nothing special. A pretrained head would lose what it knew: not for fine-tuning one. Training
        then returns the loss without logits.

        `rows_in_use`: tokens the targets are known to hold (`data.answer_token_ids`); their rows keep
        their own start. `groups` (default: 1024, or the vocabulary size if smaller): in the demo's
        finetune, 1024 random rows learned as fast per step as 32k, one zero row far slower.
        """
        vocab_size = self.config.text_config.vocab_size
        device = self.lm_head.weight.device
        groups = min(1024, vocab_size) if groups is None else groups
        if not 1 <= groups <= vocab_size:
            raise ValueError(f"groups must be between 1 and the vocabulary size {vocab_size}; got {groups}")
        in_use = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        if rows_in_use is not None:
            in_use[torch.as_tensor(rows_in_use, dtype=torch.long, device=device)] = True
        self.head_row_groups = torch.arange(vocab_size, device=device) * groups // vocab_size
        first_of_group = torch.searchsorted(self.head_row_groups, torch.arange(groups, device=device))
        with torch.no_grad():
            weight = self.lm_head.weight
            weight[~in_use] = weight[first_of_group[self.head_row_groups[~in_use]]]
        self.head_rows_in_use = in_use

    def _grown_head_loss(self, hidden_states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of `targets` over the whole vocabulary, computed on the rows in use and the groups."""
        in_use = self.head_rows_in_use.to(targets.device)
        in_use[targets] = True
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank must agree on the rows in use: a row one rank trains no longer equals its group's.
            shared = in_use.to(torch.int32)
            torch.distributed.all_reduce(shared, op=torch.distributed.ReduceOp.MAX)
            in_use = shared.bool()
        self.head_rows_in_use = in_use
        rows = in_use.nonzero().squeeze(1)
        weight = self.lm_head.weight
        group = self.head_row_groups = self.head_row_groups.to(targets.device)
        groups = int(group[-1]) + 1
        unused = (~in_use).nonzero().squeeze(1)
        members = torch.bincount(group[unused], minlength=groups)
        # Each group's rows not in use are equal: the first of them is the group's row, exactly in any
        # dtype. Their mean's gradient, spread evenly over them, is what each would get on its own:
        # the group's row takes its value from the first and its gradient from the mean.
        first = torch.zeros(groups, dtype=torch.long, device=unused.device)
        first = first.scatter_reduce(0, group[unused], unused, reduce="amin", include_self=False)
        sums = weight.new_zeros(groups, weight.shape[1]).index_add(0, group, weight)
        sums = sums - weight.new_zeros(groups, weight.shape[1]).index_add(0, group[rows], weight[rows])
        mean = sums / members.clamp(min=1).unsqueeze(1).to(sums.dtype)
        shared_rows = weight[first].detach() + (mean - mean.detach())
        logits = nn.functional.linear(hidden_states, torch.cat([weight[rows], shared_rows])).float()
        # log(0) = -inf: a group whose every row is in use adds nothing.
        logits[:, rows.numel() :] += members.float().log()
        return nn.functional.cross_entropy(logits, torch.searchsorted(rows, targets), reduction="sum")

    def _labelled_positions_loss(self, hidden_states, labels, num_items_in_batch=None):
        """Training loss with the LM head applied only where a next token is to be predicted.

        With answer-only labels and a 32k vocabulary, the head over every position costs more
        than the transformer layers of a small model; here it runs on the labelled positions
        alone. Returns those positions' logits, `(num_labelled, vocab_size)` (None with
        `grow_head_from_targets`), and the same loss the full computation gives.
        """
        targets = labels[:, 1:].to(hidden_states.device)
        labelled = targets != -100
        if self.head_rows_in_use is None:
            logits = self.lm_head(hidden_states[:, :-1][labelled])
            total = nn.functional.cross_entropy(logits.float(), targets[labelled], reduction="sum")
        else:
            logits, total = None, self._grown_head_loss(hidden_states[:, :-1][labelled], targets[labelled])
        if num_items_in_batch is None:
            num_items_in_batch = labelled.sum().clamp(min=1)
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return logits, total / num_items_in_batch

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values)

    def prepare_inputs_for_generation(self, input_ids, *args, **kwargs):
        """As `GenerationMixin`'s, plus the tokens before the new ones when they continue a cache (`config.previous_token_mix`)."""
        model_inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        new_ids = model_inputs.get("input_ids")
        mix = self.model.previous_token_mix
        if mix is not None and new_ids is not None and new_ids.shape[1] < input_ids.shape[1]:
            model_inputs["previous_token_ids"] = input_ids[:, : -new_ids.shape[1]][:, -mix.window :]
        return model_inputs

    def get_audio_features(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.model.get_audio_features(input_features, input_features_mask)

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
        image_index_offset: int = 0,
        audio_index_offset: int = 0,
        previous_token_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> MMMModalCausalLMOutputWithPast:
        r"""
        labels (`(batch_size, sequence_length)`, *optional*): targets for the next-token loss; -100 is ignored.
        cache, past_key_values (`Cache`, *optional*): the KV cache, under either name (see `CACHE_NAME`).
        image_index_offset, audio_index_offset: media the conversation held before `input_ids` (a chat
            continuing from its KV cache); used only with `config.media_index_embeddings`.
        previous_token_ids: the tokens just before `input_ids` (`config.previous_token_mix`, with a cache).

        Example:

        ```python
        >>> from transformers import AutoModel, AutoProcessor
        >>> model = AutoModel.from_pretrained("mesolitica/malaysian-tinyllama-1.1b-mmmmodal", trust_remote_code=True)
        >>> processor = AutoProcessor.from_pretrained("mesolitica/malaysian-tinyllama-1.1b-mmmmodal", trust_remote_code=True)
        >>> chat = [{"role": "user", "content": [{"type": "image", "path": "cat.png"}, {"type": "text", "text": "Apa ini?"}]}]
        >>> inputs = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
        >>> processor.batch_decode(model.generate(**inputs, max_new_tokens=32), skip_special_tokens=True)
        ```
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            input_features=input_features,
            input_features_mask=input_features_mask,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=_one_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            image_index_offset=image_index_offset,
            audio_index_offset=audio_index_offset,
            previous_token_ids=previous_token_ids,
            **kwargs,
        )
        if labels is not None and self.training:
            logits, loss = self._labelled_positions_loss(
                outputs.last_hidden_state, labels, kwargs.get("num_items_in_batch")
            )
        else:
            hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
            logits = self.lm_head(hidden_states)
            loss = None
            if labels is not None:
                loss = self.loss_function(
                    logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
                )
        return MMMModalCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
            audio_hidden_states=outputs.audio_hidden_states,
        )


MMMModalForConditionalGeneration.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "trim_tower",
    "tower_cuts",
    "MMMModalPreTrainedModel",
    "MMMModalModel",
    "MMMModalForConditionalGeneration",
    "MMMModalImageProjector",
    "MMMModalAudioProjector",
]
