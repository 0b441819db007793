"""The demo's MMMModal: the published model plus two inputs its small LM, trained from scratch in minutes, needs.

- `media_index_embeddings` (N): each projector learns N ordinal embeddings and adds the k-th to every
  slot of the k-th image (or clip) of a conversation, so the slots themselves say which medium they
  are. Counting restarts wherever the positions do (packed conversations) and continues across the
  turns of a cached chat.
- `previous_token_mix` (N): each position's input gets a learned linear map (started at zero) of each
  of the N tokens before it, one map per distance, so a Malay word of several tokens is whole at its
  last token before the first layer. A token counts only within its conversation.

A published or converted model holds neither; this file travels only in the demo's saved folders,
whose `auto_map` names it. It is written as a sibling of the Hub modules (`from .modeling_mmmmodal
import ...`), so it runs from such a folder with `trust_remote_code`; the demo loads it the same way
(`remote_code.py`). What each addition measured: docs/demo-experiments.md.
"""

import torch
from huggingface_hub.dataclasses import strict
from torch import nn

from .configuration_mmmmodal import MMMModalConfig
from .modeling_mmmmodal import MMMModalForConditionalGeneration, MMMModalModel, MMMModalPreTrainedModel, _one_cache

DEMO_AUTO_MAP = {
    "AutoConfig": "modeling_mmmmodal_demo.MMMModalDemoConfig",
    **dict.fromkeys(
        ("AutoModel", "AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoModelForMultimodalLM"),
        "modeling_mmmmodal_demo.MMMModalDemoForConditionalGeneration",
    ),
}


@strict
class MMMModalDemoConfig(MMMModalConfig):
    r"""
    `MMMModalConfig` plus the demo's two additions (0 leaves each out, as published).

    media_index_embeddings (`int`, defaults to 0): ordinal embeddings per projector; at most that many
        images (or clips) per conversation.
    previous_token_mix (`int`, defaults to 0): tokens before each position mapped into its input.
    chat_notice (`str`): what `mmmmodal chat` and `mmmmodal web` say of the model before its first turn.
    """

    model_type = "mmmmodal_demo"
    media_index_embeddings: int = 0
    previous_token_mix: int = 0
    chat_notice: str = (
        "This is the demo's model: it knows only its synthetic world (shapes in six colours, clips of 1-4 beeps) "
        "asked the way its examples ask, e.g. 'What colour is the shape in image 2?', 'How many beeps are in "
        "audio 1?', 'Which is higher, audio 1 or audio 2?'; other questions get guesses."
    )

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name in ("media_index_embeddings", "previous_token_mix"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: expected 0 (none) or more.")
        self.auto_map = dict(DEMO_AUTO_MAP)


def media_ordinals(slot_mask: torch.Tensor, position_ids: torch.Tensor | None, offset) -> torch.Tensor:
    """For each position, which medium of its conversation the slot belongs to (1, 2, ...), or 0 off slots.

    A medium is one unbroken run of slots (a long clip's windows are consecutive). Counting restarts
    wherever `position_ids` does (conversations packed into one row); `offset` (an int, or one per
    row) is how many media of this kind came before these positions (a chat continuing its cache).
    """
    previous = nn.functional.pad(slot_mask[:, :-1], (1, 0), value=False)
    starts = (slot_mask & ~previous).long()
    count = starts.cumsum(-1)
    if position_ids is not None and position_ids.dim() == 2 and position_ids.shape == slot_mask.shape:
        before = torch.where(position_ids == 0, count - starts, torch.zeros_like(count))
        count = count - torch.cummax(before, dim=-1).values
    return torch.where(slot_mask, count + offset, torch.zeros_like(count))


def count_media(input_ids: torch.LongTensor, slot_token_id: int) -> torch.LongTensor:
    """Media of one kind in each row (runs of its slot token): `(batch, 1)`, for `media_ordinals`' offset."""
    slots = input_ids == slot_token_id
    previous = nn.functional.pad(slots[:, :-1], (1, 0), value=False)
    return (slots & ~previous).sum(-1, keepdim=True)


class MMMModalPreviousTokenMix(nn.Module):
    """Learned maps of the tokens just before each position, added to its input, one map per distance.

    The j-th map reads the token j positions back, for j = 1 .. N: a short causal mixing of token
    embeddings before the first layer, as short convolutions do in Mamba and Hyena. Started at zero,
    so a new model computes what it would without it. A token counts only within its conversation
    (position >= j). The tokens are ids: a medium's slots give the slot token's embedding, never a
    feature. The maps lie side by side in one hidden x (N x hidden) weight.
    """

    def __init__(self, config: MMMModalDemoConfig):
        super().__init__()
        self.hidden_size = config.text_config.hidden_size
        self.window = int(config.previous_token_mix)
        self.weight = nn.Parameter(torch.zeros(self.hidden_size, self.window * self.hidden_size))

    def forward(self, token_embeds, embed_tokens, previous_token_ids, position_ids) -> torch.Tensor:
        """What to add to inputs whose token embeddings are `token_embeds`; `previous_token_ids` (batch, <= N)
        are the tokens just before the first input when the inputs continue a KV cache."""
        batch, length = token_embeds.shape[:2]
        known = 0
        context = token_embeds
        if previous_token_ids is not None:
            if previous_token_ids.shape[0] != batch or not 1 <= previous_token_ids.shape[1] <= self.window:
                raise ValueError(
                    f"previous_token_ids has shape {tuple(previous_token_ids.shape)}; expected ({batch}, "
                    f"{self.window}): the tokens just before the first of input_ids in each row"
                )
            context = torch.cat([embed_tokens(previous_token_ids).to(token_embeds.dtype), token_embeds], dim=1)
            known = previous_token_ids.shape[1]
        context = nn.functional.pad(context, (0, 0, self.window - known, 0))  # zeros where nothing came before
        index = torch.arange(length, device=token_embeds.device)
        positions = position_ids if position_ids is not None and position_ids.shape == (batch, length) else None
        mixed = torch.zeros_like(token_embeds)
        for back in range(1, self.window + 1):
            has_token = (index >= back - known).expand(batch, length)
            if positions is not None:
                has_token = has_token & (positions >= back)
            tokens = context[:, self.window - back : self.window - back + length]
            weight = self.weight[:, (back - 1) * self.hidden_size : back * self.hidden_size]
            mixed = mixed + nn.functional.linear(tokens, weight.to(tokens.dtype)) * has_token.unsqueeze(-1)
        return mixed


class MMMModalDemoModel(MMMModalModel):
    """`MMMModalModel` whose inputs also carry the ordinal embeddings and the previous tokens' maps."""

    config_class = MMMModalDemoConfig

    def __init__(self, config: MMMModalDemoConfig):
        super().__init__(config)
        hidden = config.text_config.hidden_size
        for projector in (self.image_projector, self.audio_projector):
            # Inside each projector, so the align stage trains it with the projector.
            projector.index_embedding = (
                nn.Embedding(config.media_index_embeddings, hidden) if config.media_index_embeddings else None
            )
        self.previous_token_mix = MMMModalPreviousTokenMix(config) if config.previous_token_mix else None

    def _with_media_index(self, features, slot_mask, projector, position_ids, offset, modality):
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
        return features.reshape(-1, features.shape[-1]) + projector.index_embedding(ordinals[slot_mask] - 1)

    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        input_features=None,
        input_features_mask=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        use_cache=None,
        past_key_values=None,
        image_index_offset=0,
        audio_index_offset=0,
        previous_token_ids=None,
        **kwargs,
    ):
        r"""
        As `MMMModalModel.forward`, from `input_ids` only, plus:
        image_index_offset, audio_index_offset: media of the conversation before `input_ids` (an int, or
            `(batch, 1)`), when they continue a KV cache (`generate` passes them).
        previous_token_ids (`(batch, previous_token_mix)`): the tokens just before `input_ids`, needed
            when they continue a KV cache (`generate` passes them).
        """
        if input_ids is None:
            raise ValueError("The demo's model maps token ids (previous_token_mix, slot ordinals): pass input_ids.")
        cache = _one_cache(cache, past_key_values)
        past_length = cache.get_seq_length() if cache is not None else 0
        if self.previous_token_mix is not None and past_length and previous_token_ids is None:
            raise ValueError(
                f"config.previous_token_mix: input_ids continue a cache of {past_length} positions; pass "
                "previous_token_ids, the tokens just before them (generate does)"
            )
        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2 and past_length == 0:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        token_embeds = embeds = self.get_input_embeddings()(input_ids)
        media = (
            ("image", pixel_values, self.image_projector, image_index_offset),
            ("audio", input_features, self.audio_projector, audio_index_offset),
        )
        for modality, inputs, projector, offset in media:
            if inputs is None or inputs.shape[0] == 0:
                continue
            if modality == "image":
                features = self.get_image_features(inputs, kwargs.pop("image_tower_states", None)).pooler_output
            else:
                states = kwargs.pop("audio_tower_states", None)
                features = self.get_audio_features(inputs, input_features_mask, states).pooler_output
            mask = self.get_placeholder_mask(input_ids, embeds, features, modality)
            features = self._with_media_index(features, mask[..., 0], projector, position_ids, offset, modality)
            embeds = embeds.masked_scatter(mask, features.to(embeds.dtype))
        if self.previous_token_mix is not None:
            embeds = embeds + self.previous_token_mix(
                token_embeds, self.get_input_embeddings(), previous_token_ids, position_ids
            ).to(embeds.dtype)
        return super().forward(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )


class MMMModalDemoForConditionalGeneration(MMMModalForConditionalGeneration):
    """`MMMModalForConditionalGeneration` over `MMMModalDemoModel`; `generate` passes what continues a cache."""

    config_class = MMMModalDemoConfig

    def __init__(self, config: MMMModalDemoConfig):
        MMMModalPreTrainedModel.__init__(self, config)  # as the parent's, with the demo's inner model
        self.model = MMMModalDemoModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        self.suppress_slot_tokens()

    def prepare_inputs_for_generation(self, input_ids, *args, **kwargs):
        """As `GenerationMixin`'s, plus, when the new ids continue a cache, the tokens and media before them."""
        model_inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        new_ids = model_inputs.get("input_ids")
        if new_ids is not None and new_ids.shape[1] < input_ids.shape[1]:
            before = input_ids[:, : -new_ids.shape[1]]
            if self.model.previous_token_mix is not None:
                model_inputs["previous_token_ids"] = before[:, -self.model.previous_token_mix.window :]
            if self.config.media_index_embeddings:
                model_inputs["image_index_offset"] = count_media(before, self.config.image_token_id)
                model_inputs["audio_index_offset"] = count_media(before, self.config.audio_token_id)
        return model_inputs


__all__ = ["MMMModalDemoConfig", "MMMModalDemoModel", "MMMModalDemoForConditionalGeneration", "DEMO_AUTO_MAP"]
